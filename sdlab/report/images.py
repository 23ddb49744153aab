"""Image figures: sampler x steps grids from the same seeds, and per-step trajectory strips.

Inputs are files in each point's job directory:
- `grid.png`: the runner's sample grid (torchvision `save_image`, images in seed order,
  `ceil(sqrt(n))` per row, 2-pixel padding, n = min(n_images, 64)).
- `trajectory.pt` (optional): `torch.save` of a dict with `i` (int64 [K], step indices),
  `sigma` (float64 [K], the noise level of each step) and `denoised` (float [K, C, H, W],
  C = 1 or 3, values in [0, 1]): the denoised prediction of the point's first image (seed
  `seed`) at each recorded step. `sdlab.tracking.TrajectoryRecorder` writes it from a
  sampler callback.
Points without these files are left out of the image figures; no file, no figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdlab.report import style as st
from sdlab.report.data import Point, Sweep, fmt, level_text
from sdlab.report.plots import Entry

SEEDS_SHOWN = 4  # images per grid cell, the first seeds of the sweep, as a 2 x 2 tile
STEPS_SHOWN = 6  # denoised predictions per trajectory strip


def grid_images(path: Path, n_images: int, count: int) -> list[np.ndarray]:
    """The first `count` images of a runner grid.png, as HxWxC uint8 arrays."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    n = min(n_images, 64)
    per_row = int(n**0.5 + 0.999)
    rows = math.ceil(n / per_row)
    h, w = (grid.shape[0] - 2) // rows - 2, (grid.shape[1] - 2) // per_row - 2
    found = []
    for k in range(min(count, n)):
        r, c = divmod(k, per_row)
        y, x = 2 + r * (h + 2), 2 + c * (w + 2)
        found.append(grid[y : y + h, x : x + w])
    return found


def tile(images: list[np.ndarray]) -> np.ndarray:
    """Up to four images as one 2 x 2 tile with a 1-pixel white gap."""
    h, w, c = images[0].shape
    out = np.full((2 * h + 1, 2 * w + 1, c), 255, dtype=np.uint8)
    for k, img in enumerate(images[:4]):
        r, col = divmod(k, 2)
        out[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = img
    return out


def _cell_axes(fig, rows: int, cols: int):
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    return axes


def grid_figures(sweep: Sweep, out: Path) -> list[Entry]:
    """One figure per guidance scale: rows are series, columns step counts (or nfe budgets)."""
    entries = []
    for scale in sweep.scales():
        have = [p for p in sweep.ok if p.scale == scale and (p.job_dir / "grid.png").is_file()]
        if not have:
            continue
        groups = sweep.series(have)
        levels = sorted({p.level for p in have})
        cell = min(0.75, (st.COLUMN_WIDTH - 0.9) / len(levels))
        fig = st.figure(0.35 + cell * 1.1 * len(groups), width=0.9 + cell * len(levels))
        axes = _cell_axes(fig, len(groups), len(levels))
        for r, points in enumerate(groups.values()):
            axes[r][0].set_ylabel(sweep.label(points[0]), rotation=0, ha="right", va="center",
                                  fontsize=6)
            by_level = {p.level: p for p in points}
            for c, level in enumerate(levels):
                ax = axes[r][c]
                if r == 0:
                    ax.set_title(level_text(level), fontsize=6)
                p = by_level.get(level)
                if p is None:
                    continue
                ax.imshow(tile(grid_images(p.job_dir / "grid.png", p.result["n_images"],
                                           SEEDS_SHOWN)), interpolation="nearest")
                ax.set_xlabel(f"{p.steps} steps, nfe {p.nfe:g}", fontsize=5, labelpad=1)
        stem = "grid" + ("" if scale is None else f"_g{fmt(scale, 3)}")
        st.save(fig, out, stem)
        entries.append(Entry(stem, f"first {SEEDS_SHOWN} seeds (same in every cell) per "
                                   "series and step count or nfe budget" + (
                                       "" if scale is None else
                                       f", guidance scale {fmt(scale, 3)}")
                                   + "; steps and nfe under each."))
    return entries


def load_trajectory(point: Point) -> dict[str, torch.Tensor] | None:
    path = point.job_dir / "trajectory.pt"
    if not path.is_file():
        return None
    traj = torch.load(path, map_location="cpu", weights_only=True)
    if traj["denoised"].ndim != 4 or traj["denoised"].shape[1] not in (1, 3):
        return None
    return traj


def trajectory_figures(sweep: Sweep, out: Path) -> list[Entry]:
    """One strip per series at each step count (or nfe budget): up to 6 denoised predictions."""
    entries = []
    found = [(p, t) for p in sweep.ok if (t := load_trajectory(p)) is not None]
    for level in sorted({p.level for p, _ in found}):
        for scale in sorted({p.scale for p, _ in found if p.level == level},
                            key=lambda s: -1.0 if s is None else s):
            rows = [(p, t) for p, t in found if p.level == level and p.scale == scale]
            rows.sort(key=lambda pt: sweep.series_key(pt[0]))
            cols = max(min(STEPS_SHOWN, len(t["i"])) for _, t in rows)
            cell = (st.COLUMN_WIDTH - 0.9) / cols
            fig = st.figure(0.3 + cell * 1.25 * len(rows))
            axes = _cell_axes(fig, len(rows), cols)
            for r, (p, t) in enumerate(rows):
                axes[r][0].set_ylabel(sweep.label(p), rotation=0, ha="right", va="center",
                                      fontsize=6)
                pick = np.unique(np.linspace(0, len(t["i"]) - 1, cols).round().astype(int))
                for c, k in enumerate(pick):
                    img = t["denoised"][k].permute(1, 2, 0).numpy()
                    axes[r][c].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img,
                                      cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                    sigma = fmt(float(t["sigma"][k]), 2)
                    axes[r][c].set_xlabel(f"i={int(t['i'][k])}, \u03c3={sigma}", fontsize=5,
                                          labelpad=1)
            tag = "" if scale is None else f"_g{fmt(scale, 3)}"
            stem = f"trajectory_{''.join(map(str, level))}{tag}"
            st.save(fig, out, stem)
            entries.append(Entry(stem, "denoised prediction of the first seed along the "
                                       f"sampler's steps ({level_text(level)}; step index i "
                                       "and noise level sigma under each)."))
    return entries
