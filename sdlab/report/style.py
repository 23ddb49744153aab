"""One print-ready figure style, a fixed colour and marker per sampler, byte-stable saving.

Style `i` is colour `i mod 16`, marker `i mod 7` (coprime) and line style `i div 16`, so
the first 16 styles have colours of their own, the first 64 a (colour, line style) of their
own and the first 112 a (colour, marker) of their own. A sampler's `i` is its place in
`SAMPLERS`, a fixed table (the samplers of the committed studies first, so each has its own
colour; a new sampler goes at the end, so no existing figure changes); a schedule's is its
place in the schedule registry. When both sampler and schedule vary, the line style shows
the schedule instead. The first six colours are Paul Tol's colour-blind-safe "vibrant" set;
beyond six, marker and line style keep series apart for every reader.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

PALETTE = ("#0077BB", "#EE7733", "#009988", "#CC3311", "#33BBEE", "#EE3377",  # Tol vibrant
           "#332288", "#999933", "#AA4499", "#117733", "#DDCC77", "#882255",  # Tol muted
           "#CC6677", "#BBCC33", "#777777", "#8C564B")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")
FRONT = "#000000"  # the Pareto front, drawn over the series colours

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
DPI = 300
RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs everywhere
    "font.size": 7, "axes.labelsize": 7, "axes.titlesize": 7, "legend.fontsize": 6,
    "xtick.labelsize": 6, "ytick.labelsize": 6,
    "axes.linewidth": 0.6, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.linewidth": 0.4, "grid.alpha": 0.35, "grid.color": "#999999",
    "lines.linewidth": 1.1, "lines.markersize": 3.5, "legend.frameon": False,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # embedded TrueType: vector, selectable text
    "svg.hashsalt": "sdlab-report", "svg.fonttype": "path",
    "path.simplify": False, "figure.dpi": 100, "savefig.dpi": DPI,
}
PDF_METADATA = {"Creator": "sdlab-report", "Producer": None, "CreationDate": None,
                "ModDate": None}
PNG_METADATA = {"Software": "sdlab-report"}


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: str = "-"


# Every native sampler, then every diffusers scheduler the bridge drives: the order in which
# styles are handed out. Append new names; never reorder (committed figures would change).
SAMPLERS = (
    # the committed studies (reports/*/results)
    "euler", "dpmpp_2m", "dpmpp_2m_sde", "heun", "unipc", "euler_ancestral", "ddim", "deis",
    "dpm_2", "dpmpp_3m", "heunpp2", "ipndm", "ipndm_v", "lms", "res_multistep",
    # the other native samplers
    "ddpm", "dpm_2_ancestral", "dpm_adaptive", "dpmpp_2m_cfg_pp", "dpmpp_2s_ancestral",
    "dpmpp_3m_sde", "dpmpp_sde", "euler_cfg_pp", "lcm", "restart",
    # diffusers schedulers through the bridge (`sampler=diffusers`)
    "DDIMParallelScheduler", "DDIMScheduler", "DDPMParallelScheduler", "DDPMScheduler",
    "DEISMultistepScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LCMScheduler",
    "LMSDiscreteScheduler", "PNDMScheduler", "SASolverScheduler", "TCDScheduler",
    "UniPCMultistepScheduler",
)


@cache
def _order(kind: str) -> tuple[str, ...]:
    if kind == "schedule":
        from sdlab import schedules

        return tuple(schedules.names())
    return SAMPLERS


def index(kind: str, name: str) -> int:
    """The table position of `name` (names not in the table after all those in it)."""
    order = _order(kind)
    if name in order:
        return order.index(name)
    return len(order) + zlib.crc32(name.encode()) % 64  # stable for a user's own sampler


def style(kind: str, name: str, dash: int | None = None) -> Style:
    """The fixed style of a registered name; `dash` overrides its line style."""
    i = index(kind, name)
    dash = i // len(PALETTE) if dash is None else dash
    return Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)],
                 LINESTYLES[dash % len(LINESTYLES)])


@contextmanager
def rc() -> Iterator[None]:
    with matplotlib.rc_context(RC):
        yield


def figure(height: float, width: float = COLUMN_WIDTH) -> Figure:
    """A pyplot-free figure (no global state) with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem.pdf` and `stem.png`, free of dates and version strings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pdf, png = out_dir / f"{stem}.pdf", out_dir / f"{stem}.png"
    fig.savefig(pdf, metadata=PDF_METADATA)
    fig.savefig(png, metadata=PNG_METADATA, dpi=DPI)
    return [pdf, png]
