"""Reference images and their feature statistics, computed once and cached on disk.

A source yields real images [B, 3, H, W] in [0, 1] and a `key()` that says exactly which
images and which preprocessing. `reference_stats(source, extractor, cache_dir)` returns their
Gaussian statistics and features, computed on the first call and read back from
`cache_dir/<space>-<hash>.pt` afterwards: the hash covers the source key (which images, how
many, resize policy) and the extractor settings (network, weights hash, resize, dtype), so a
cached file is reused by every point, sweep and run that asks for the same thing, and by no
other. Within one process the statistics are also kept in memory.

Resize policy (folders and COCO): `crop="center"` takes the central square, `crop="none"`
keeps the whole image; then, if `resolution` is set, PIL bicubic resize (antialiased) to
`resolution x resolution`. Match it to the generated images' resolution.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from sdlab.metrics.stats import GaussianStats

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ReferenceSource(Protocol):
    def key(self) -> dict[str, Any]: ...

    def batches(self, batch_size: int) -> Iterator[Tensor]: ...


class Extractor(Protocol):
    name: str

    def __call__(self, images: Tensor) -> Tensor: ...

    def settings(self) -> dict[str, Any]: ...


def load_image(path: Path, resolution: int | None, crop: str) -> Tensor:
    """An image file as [3, H, W] float32 in [0, 1], after the resize policy."""
    from PIL import Image

    if crop not in ("center", "none"):
        raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if crop == "center":
            s = min(im.size)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            im = im.crop((left, top, left + s, top + s))
        if resolution is not None:
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def _file_batches(files: list[Path], batch_size: int, resolution: int | None, crop: str
                  ) -> Iterator[Tensor]:
    for s in range(0, len(files), batch_size):
        yield torch.stack([load_image(f, resolution, crop) for f in files[s : s + batch_size]])


@dataclass(frozen=True)
class ImageFolder:
    """The first `n` images (all when None) of a folder, recursively, in sorted path order."""

    path: str
    n: int | None = None
    resolution: int | None = None
    crop: str = "center"

    def files(self) -> list[Path]:
        root = Path(self.path).expanduser()
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if self.n is not None and len(files) < self.n:
            raise ValueError(f"{root} holds {len(files)} images, fewer than n={self.n}")
        return files[: self.n]

    def key(self) -> dict[str, Any]:
        root = Path(self.path).expanduser().resolve()
        listing = "\n".join(f"{f.relative_to(root)}:{f.stat().st_size}" for f in self.files())
        return {"source": "folder", "path": str(root), "n": len(self.files()),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest(),
                "resolution": self.resolution, "crop": self.crop, "resample": "PIL bicubic"}

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        return _file_batches(self.files(), batch_size, self.resolution, self.crop)


@dataclass(frozen=True)
class ShapesImages:
    """The first `n` items of a split of the procedural shapes dataset (`sdlab.shapes`)."""

    n: int = 10_000
    split: str = "heldout"
    seed: int = 0

    def key(self) -> dict[str, Any]:
        from sdlab.shapes import dataset

        # the renderer's source is part of the key: a changed renderer is a new reference
        code = hashlib.sha256(inspect.getsource(dataset).encode()).hexdigest()
        return {"source": "sdlab.shapes", **asdict(self), "dataset_code_sha256": code}

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        from sdlab.shapes.dataset import get_batch

        for s in range(0, self.n, batch_size):
            yield get_batch(range(s, min(s + batch_size, self.n)), self.split, self.seed)[0]


@dataclass(frozen=True)
class COCO:
    """`n` COCO images with one caption each (captions JSON of 2014 or 2017 + image folder).

    Images are sorted by id, shuffled with `seed`, and the first `n` taken; each image's
    caption is its lowest-id annotation. `prompts()` gives the captions in the same order,
    for text-to-image sweeps that evaluate on COCO.
    """

    captions: str
    images: str
    year: int = 2014
    n: int = 30_000
    resolution: int | None = 512
    crop: str = "center"
    seed: int = 0

    def _selection(self) -> list[tuple[Path, str]]:
        if self.year not in (2014, 2017):
            raise ValueError(f"COCO year must be 2014 or 2017, got {self.year}")
        data = json.loads(Path(self.captions).expanduser().read_text())
        caption = {}
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            caption.setdefault(ann["image_id"], ann["caption"].strip())
        images = sorted((im for im in data["images"] if im["id"] in caption),
                        key=lambda im: im["id"])
        if len(images) < self.n:
            raise ValueError(f"{self.captions} has {len(images)} captioned images, n={self.n}")
        order = np.random.default_rng(self.seed).permutation(len(images))[: self.n]
        root = Path(self.images).expanduser()
        return [(root / images[i]["file_name"], caption[images[i]["id"]]) for i in order]

    def prompts(self) -> list[str]:
        return [c for _, c in self._selection()]

    def key(self) -> dict[str, Any]:
        return {"source": "coco", "year": self.year, "n": self.n, "seed": self.seed,
                "captions_sha256": hashlib.sha256(
                    Path(self.captions).expanduser().read_bytes()).hexdigest(),
                "resolution": self.resolution, "crop": self.crop, "resample": "PIL bicubic"}

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        files = [f for f, _ in self._selection()]
        return _file_batches(files, batch_size, self.resolution, self.crop)


@dataclass
class ReferenceStats:
    """Features of the reference images and their Gaussian statistics."""

    key: str
    spec: dict[str, Any]
    mean: Tensor  # [d] float64
    cov: Tensor  # [d, d] float64
    features: Tensor  # [n, d] in the extractor's dtype
    sha256: str  # of mean, covariance and features
    path: Path  # the cache file
    derived: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.features)

    def cached(self, name: str, compute: Callable[[], float]) -> float:
        """A number computed from the reference alone (e.g. KID's reference-reference kernel
        mean, O(n^2 d)), kept in memory and in a file beside the statistics."""
        if name not in self.derived:
            file = self.path.with_name(f"{self.path.stem}.{name}.json")
            if file.is_file():
                self.derived[name] = json.loads(file.read_text())["value"]
            else:
                self.derived[name] = float(compute())
                tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"value": self.derived[name], "stats": self.sha256}))
                os.replace(tmp, file)
        return self.derived[name]


_IN_MEMORY: dict[str, ReferenceStats] = {}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SDLAB_CACHE", "~/.cache/sdlab")).expanduser() / "reference"


def reference_stats(source: ReferenceSource, extractor: Extractor,
                    cache_dir: str | Path | None = None, batch_size: int = 64) -> ReferenceStats:
    """Reference statistics for (source, extractor): from memory, the disk cache, or computed."""
    spec = {"source": source.key(), "extractor": extractor.settings()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    if key in _IN_MEMORY:
        return _IN_MEMORY[key]
    path = Path(cache_dir or default_cache_dir()).expanduser() / f"{extractor.name}-{key[:24]}.pt"
    if path.is_file():
        data = torch.load(path, map_location="cpu")
    else:
        data = _compute(source, extractor, batch_size)
        data["spec"] = spec
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(data, tmp)
        os.replace(tmp, path)  # atomic: concurrent jobs never read a partial file
    stats = ReferenceStats(key, data["spec"], data["mean"], data["cov"], data["features"],
                           data["sha256"], path)
    _IN_MEMORY[key] = stats
    return stats


def _compute(source: ReferenceSource, extractor: Extractor, batch_size: int) -> dict[str, Any]:
    feats = [extractor(images) for images in source.batches(batch_size)]
    features = torch.cat(feats).cpu()
    stats = GaussianStats.empty(features.shape[1])
    for f in feats:
        stats.update(f)
    h = hashlib.sha256()
    for t in (stats.mean, stats.cov, features):
        h.update(t.contiguous().numpy().tobytes())
    return {"mean": stats.mean, "cov": stats.cov, "features": features, "sha256": h.hexdigest()}
