"""One print-ready figure style, a fixed colour and marker per sampler, byte-stable saving.

Colours are Paul Tol's colour-blind-safe "muted" set (9); the line style changes every 9
names and markers cycle with a coprime period (7), so each of the first 36 names of a
registry has its own (colour, line style) and its own (colour, marker). A sampler's style
is fixed by its position in the sampler registry (then the diffusers schedulers), so it is
the same in every figure of every report; a schedule's by the schedule registry. When both
sampler and schedule vary, the line style shows the schedule instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

PALETTE = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677",
           "#882255", "#AA4499")
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


@cache
def _order(kind: str) -> tuple[str, ...]:
    if kind == "schedule":
        from sdlab import schedules

        return tuple(schedules.names())
    from sdlab import samplers

    names = list(samplers.names())
    try:
        from sdlab.samplers.diffusers_bridge import scheduler_names

        names += [n for n in scheduler_names() if n not in names]
    except ImportError:  # diffusers missing: native samplers keep their places
        pass
    return tuple(names)


def index(kind: str, name: str) -> int:
    """The registry position of `name` (unregistered names after all registered ones)."""
    order = _order(kind)
    if name in order:
        return order.index(name)
    return len(order) + sum(ord(c) for c in name)  # stable for a user's own sampler


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
