"""Shapes accuracy, in the spirit of GenEval: does an image show exactly what its caption asks for?

A deterministic checker. On the mid-grey background every shape colour is saturated, so
1. chroma (max - min over RGB) over the palette colour's chroma estimates each pixel's
   coverage, and a pixel's hue (which blending with grey leaves unchanged) names its colour;
2. each colour's pixels over half covered form connected components; fragments under
   `MIN_AREA` pixels are ignored (noise of generated images);
3. each dataset shape is fitted to a component's coverage by area and centroid, sharp and
   Gaussian-blurred (generated images are soft); the best overlapping one (soft IoU) is its
   shape; the fitted side gives small/large and the nearest dataset anchor to the fitted
   bounding-box centre its position.
An image is correct when it has as many components as the caption has objects and they can
be paired so that every object's shape, colour, size and position match."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from itertools import permutations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import rgb_to_hsv
from scipy import ndimage

from sdlab.shapes.dataset import (
    COLORS,
    POSITIONS,
    RESOLUTION,
    SHAPES,
    SIZES,
    ShapeObject,
    coverage,
    parse_caption,
)

__all__ = ["ATTRIBUTES", "Blob", "detect", "parse_caption", "shapes_accuracy", "shapes_report"]

ATTRIBUTES = ("shape", "color", "size", "position")
ALPHA_THRESHOLD = 0.5  # a pixel belongs to a shape when over half of it is covered
MIN_AREA = 8  # pixels; the smallest real shape (a small triangle) covers about 28
LARGE_SIDE = (SIZES["small"][1] + SIZES["large"][0]) / 2
_HUES = np.array([colorsys.rgb_to_hsv(*rgb)[0] for rgb in COLORS.values()])
_CHROMA = np.array([max(rgb) - min(rgb) for rgb in COLORS.values()])
BLURS = (0.0, 0.5, 0.8, 1.1)  # Gaussian sigmas, pixels, tried on each template
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding-box area


@dataclass(frozen=True)
class Blob:
    """One detected shape, described in the caption's attributes."""

    shape: str
    color: str
    size: str
    position: str
    area: float  # pixels, counting partly covered ones by their coverage
    iou: float  # soft overlap with the fitted template of `shape`


def _describe(alpha: np.ndarray, color: str) -> Blob:
    """Fit each shape to a component's coverage map (zero outside it) by area and centroid."""
    area = alpha.sum()
    y, x = np.mgrid[:RESOLUTION, :RESOLUTION] + 0.5
    cx, cy = (alpha * x).sum() / area, (alpha * y).sum() / area
    fits = {}
    for shape in SHAPES:
        side = np.sqrt(area / FILL[shape])
        # a triangle's centroid sits side/6 below its bounding-box centre
        box_cy = cy - side / 6 if shape == "triangle" else cy
        sharp = coverage(shape, cx, box_cy, side)
        # generated images are blurred: compare with the template blurred as much as fits best
        iou = max(
            np.minimum(alpha, t).sum() / np.maximum(alpha, t).sum()
            for t in (ndimage.gaussian_filter(sharp, blur) for blur in BLURS)
        )
        fits[shape] = (iou, side, box_cy)
    shape = max(fits, key=lambda k: fits[k][0])
    iou, side, box_cy = fits[shape]
    anchors = np.array(list(POSITIONS.values()))
    position = list(POSITIONS)[int(np.argmin(((anchors - (cx, box_cy)) ** 2).sum(1)))]
    size = "large" if side > LARGE_SIDE else "small"
    return Blob(shape, color, size, position, float(area), float(iou))


def detect(image: torch.Tensor) -> list[Blob]:
    """The shapes in one image [3, H, W] in [0, 1] (resized to 32x32 by area averaging)."""
    if image.shape[-2:] != (RESOLUTION, RESOLUTION):
        image = F.interpolate(image[None].float(), (RESOLUTION, RESOLUTION), mode="area")[0]
    rgb = image.detach().float().clamp(0, 1).cpu().numpy()
    chroma = rgb.max(0) - rgb.min(0)
    hue = rgb_to_hsv(rgb.transpose(1, 2, 0))[..., 0]
    distance = np.abs(hue[..., None] - _HUES)
    label = np.minimum(distance, 1 - distance).argmin(-1)
    alpha = np.clip(chroma / _CHROMA[label], 0, 1)
    blobs = []
    for k, color in enumerate(COLORS):
        components, n = ndimage.label((alpha > ALPHA_THRESHOLD) & (label == k))
        for i in range(1, n + 1):
            core = components == i
            if core.sum() >= MIN_AREA:
                # the core plus its soft edge: neighbouring pixels of the same colour
                region = ndimage.binary_dilation(core, iterations=2) & (label == k)
                blobs.append(_describe(np.where(region, alpha, 0.0), color))
    return blobs


def _agreement(objects: tuple[ShapeObject, ...], blobs: list[Blob]) -> dict[str, bool]:
    """Per-attribute agreement under the pairing of objects with blobs that agrees most."""
    best, best_score = None, -1
    slots = list(range(len(blobs))) + [None] * max(0, len(objects) - len(blobs))
    for pairing in permutations(slots, len(objects)):
        matched = {
            a: [
                j is not None and getattr(o, a) == getattr(blobs[j], a)
                for o, j in zip(objects, pairing, strict=True)
            ]
            for a in ATTRIBUTES
        }
        score = sum(map(sum, matched.values()))
        if score > best_score:
            best, best_score = matched, score
    report = {a: all(v) for a, v in best.items()}
    report["count"] = len(blobs) == len(objects)
    report["correct"] = all(report.values())
    return report


def shapes_report(images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """Per image 0/1 for `correct` and for each of count, shape, color, size, position."""
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    pairs = zip(images, captions, strict=True)
    rows = [_agreement(parse_caption(c), detect(im)) for im, c in pairs]
    return {k: torch.tensor([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}


def shapes_accuracy(images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """1.0 where image [B, 3, H, W] in [0, 1] shows exactly what its caption asks for, else 0.0."""
    return shapes_report(images, captions)["correct"]
