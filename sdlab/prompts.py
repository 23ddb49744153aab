"""Prompt sources for the `prompts` config group: each returns a list of strings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def from_list(prompts: Sequence[str]) -> list[str]:
    """Prompts given inline in the config."""
    return [str(p) for p in prompts]


def from_file(path: str) -> list[str]:
    """One prompt per non-empty line of a text file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {file} does not exist: pass prompts.path=FILE")
    prompts = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {file} has no prompts: write one prompt per line")
    return prompts


def shapes_captions(n: int, split: str = "heldout", seed: int = 0) -> list[str]:
    """Captions of the first `n` items of a split of the bundled model's shapes dataset."""
    from sdlab.shapes.dataset import get_item

    return [get_item(i, split, seed).caption for i in range(n)]


def coco_captions(captions: str, n: int = 5000, year: int = 2014, seed: int = 0) -> list[str]:
    """One caption for each of `n` COCO images, chosen as the COCO reference source chooses."""
    from sdlab.metrics.reference import COCO

    if not Path(captions).expanduser().is_file():
        raise FileNotFoundError(
            f"COCO captions file {captions} not found: place annotations/captions_val{year}.json "
            "under $COCO_ROOT (or set prompts.captions=PATH)")
    return COCO(captions=captions, images="", year=year, n=n, seed=seed).prompts()
