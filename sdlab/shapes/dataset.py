"""Procedural "shapes" dataset: 32x32 images of one or two coloured shapes with captions.

Item ``i`` of a split is a pure function of ``(seed, split, i)``: its random generator is seeded
from ``numpy.random.SeedSequence([seed, SPLITS[split], i])``, so an item never depends on the
batch it is drawn in. The held-out split is the separate seed stream ``SPLITS["heldout"]``;
captions come from a small finite grammar, so held-out captions also occur in training, but
held-out images (sizes, jitter, colour shades) do not.

Grammar: ``a <size> <color> <shape> <position>`` for one object, two such phrases joined by
``and`` for two objects; two objects sit on opposite sides (left/right or top/bottom).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

RESOLUTION = 32
SUPERSAMPLE = 4
BACKGROUND = (0.5, 0.5, 0.5)
SHAPES = ("circle", "square", "triangle")
# Hues 60 degrees apart on a mid-grey background: blending with the background keeps the hue.
COLORS = {
    "red": (0.90, 0.12, 0.12),
    "yellow": (0.92, 0.85, 0.10),
    "green": (0.12, 0.75, 0.15),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.12, 0.22, 0.92),
    "magenta": (0.85, 0.12, 0.85),
}
SIZES = {"small": (7.5, 8.5), "large": (11.5, 12.5)}  # bounding-box side in pixels
POSITIONS = {  # bounding-box centre (x, y) in pixels, y grows downwards
    "left": (8.5, 16.0),
    "right": (23.5, 16.0),
    "top": (16.0, 8.5),
    "bottom": (16.0, 23.5),
    "center": (16.0, 16.0),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))
JITTER = 0.5  # max offset of a shape's centre from its anchor, pixels
COLOR_JITTER = 0.03
P_TWO_OBJECTS = 0.6
SPLITS = {"train": 0, "heldout": 1}


@dataclass(frozen=True)
class ShapeObject:
    """One shape as a caption names it."""

    shape: str
    color: str
    size: str
    position: str


@dataclass(frozen=True)
class ShapesItem:
    image: torch.Tensor  # [3, 32, 32] float32 in [0, 1]
    caption: str
    objects: tuple[ShapeObject, ...]


def caption_of(objects: tuple[ShapeObject, ...]) -> str:
    """The grammar's caption for a list of objects."""
    phrases = [f"a {o.size} {o.color} {o.shape} {POSITION_PHRASES[o.position]}" for o in objects]
    return " and ".join(phrases)


_PHRASE = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) "
    rf"({'|'.join(POSITION_PHRASES.values())})"
)
_POSITION_OF_PHRASE = {phrase: name for name, phrase in POSITION_PHRASES.items()}


def parse_caption(caption: str) -> tuple[ShapeObject, ...]:
    """Inverse of `caption_of`; raises ValueError on text outside the grammar."""
    objects = []
    for part in caption.strip().lower().split(" and "):
        m = _PHRASE.fullmatch(part.strip())
        if m is None:
            raise ValueError(f"not a shapes caption: {caption!r} (bad phrase {part!r})")
        size, color, shape, phrase = m.groups()
        objects.append(ShapeObject(shape, color, size, _POSITION_OF_PHRASE[phrase]))
    return tuple(objects)


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order."""
    words = ["a", "and", *SIZES, *COLORS, *SHAPES]
    for phrase in POSITION_PHRASES.values():
        words += [w for w in phrase.split() if w not in words]
    return words


def sample_objects(rng: np.random.Generator) -> tuple[ShapeObject, ...]:
    positions = (
        PAIRS[rng.integers(len(PAIRS))]
        if rng.random() < P_TWO_OBJECTS
        else (list(POSITIONS)[rng.integers(len(POSITIONS))],)
    )
    return tuple(
        ShapeObject(
            SHAPES[rng.integers(len(SHAPES))],
            list(COLORS)[rng.integers(len(COLORS))],
            list(SIZES)[rng.integers(len(SIZES))],
            position,
        )
        for position in positions
    )


def coverage(shape: str, cx: float, cy: float, side: float) -> np.ndarray:
    """Fraction [32, 32] of each pixel covered by `shape` with bounding-box centre and side."""
    n = RESOLUTION * SUPERSAMPLE
    x, y = np.meshgrid(*[(np.arange(n) + 0.5) / SUPERSAMPLE] * 2)
    dx, dy, half = x - cx, y - cy, side / 2
    if shape == "circle":
        mask = dx**2 + dy**2 <= half**2
    elif shape == "square":
        mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # upright triangle filling its bounding box: apex at the top, base at the bottom
        mask = (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
    return mask.reshape(RESOLUTION, SUPERSAMPLE, RESOLUTION, SUPERSAMPLE).mean((1, 3))


def render(objects: tuple[ShapeObject, ...], rng: np.random.Generator) -> np.ndarray:
    """Antialiased [3, 32, 32] float32 image of `objects`, with jittered size/position/shade."""
    image = np.broadcast_to(np.array(BACKGROUND)[:, None, None], (3, RESOLUTION, RESOLUTION))
    for o in objects:
        side = rng.uniform(*SIZES[o.size])
        cx, cy = np.array(POSITIONS[o.position]) + rng.uniform(-JITTER, JITTER, 2)
        color = np.clip(np.array(COLORS[o.color]) + rng.uniform(-1, 1, 3) * COLOR_JITTER, 0, 1)
        alpha = coverage(o.shape, cx, cy, side)
        image = image * (1 - alpha) + color[:, None, None] * alpha
    return image.astype(np.float32)


def get_item(index: int, split: str = "train", seed: int = 0) -> ShapesItem:
    """Item `index` of `split`; the same for any batching or order of access."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))
    objects = sample_objects(rng)
    return ShapesItem(torch.from_numpy(render(objects, rng)), caption_of(objects), objects)


def get_batch(
    indices, split: str = "train", seed: int = 0
) -> tuple[torch.Tensor, list[str], list[tuple[ShapeObject, ...]]]:
    """Images [B, 3, 32, 32] in [0, 1], captions and objects of the given item indices."""
    items = [get_item(int(i), split, seed) for i in indices]
    return (
        torch.stack([it.image for it in items]),
        [it.caption for it in items],
        [it.objects for it in items],
    )


class ShapesDataset(torch.utils.data.Dataset):
    """The first `length` items of a split as a torch Dataset of (image, caption) pairs."""

    def __init__(self, length: int, split: str = "train", seed: int = 0):
        self.length, self.split, self.seed = length, split, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        item = get_item(index, self.split, self.seed)
        return item.image, item.caption
