"""Line figures: metric vs nfe, metric vs guidance, quality-alignment trade-off, and
error-vs-nfe convergence with fitted slopes. Each builder draws only what the data supports.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from sdlab.report import style as st
from sdlab.report.data import Point, Sweep, fmt, level_text, lower_is_better

NFE_LABEL = "nfe (network evaluations per image)"


@dataclass(frozen=True)
class Entry:
    """A written figure: file stem (without .pdf/.png) and a one-line caption."""

    stem: str
    caption: str


def series_style(sweep: Sweep, point: Point) -> st.Style:
    """Colour and marker by sampler (by schedule when only the schedule varies)."""
    varying = sweep.varying()
    if "sampler" not in varying and "schedule" in varying:
        return st.style("schedule", point.field("schedule"))
    dash = None
    if "schedule" in varying:
        dash = sorted({p.field("schedule") for p in sweep.ok}).index(point.field("schedule"))
    return st.style("sampler", point.field("sampler"), dash)


def metric_label(metric: str) -> str:
    lower = lower_is_better(metric)
    return metric if lower is None else f"{metric} ({'lower' if lower else 'higher'} is better)"


def _scale_tag(scale: float | None) -> str:
    return "" if scale is None else f"_g{fmt(scale, 3)}"


def _log_nfe_axis(ax: Axes, nfes: Sequence[float]) -> None:
    """Log-2 nfe axis, ticked at the measured nfe values when there are few of them."""
    ax.set_xscale("log", base=2)
    ticks: list[float] = []
    for v in sorted(set(nfes)):  # skip a value too close to the last tick to be read apart
        if not ticks or v / ticks[-1] >= 1.3:
            ticks.append(v)
    ax.xaxis.set_major_locator(FixedLocator(ticks) if len(ticks) <= 6 else LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(nfes) / 1.15, max(nfes) * 1.15)
    ax.set_xlabel(NFE_LABEL)


def _maybe_log_y(ax: Axes, values: Sequence[float]) -> None:
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")


PLOT_HEIGHT = 2.0  # inches: axes, labels and title; a legend below adds its own height
MAX_COLUMNS = 4


def _legend(fig: Figure, ax: Axes, n: int) -> None:
    """For n > 1, a legend below the axes in as many columns (up to 4) as fit the figure's
    width, long labels wrapped when even one column is too wide; the figure grows by the
    legend's height, so the axes keep theirs."""
    if n <= 1:
        return
    handles, labels = ax.get_legend_handles_labels()
    width = max(len(label) for label in labels)
    ncol = min(len(labels), MAX_COLUMNS)
    while True:
        legend = fig.legend(handles, [textwrap.fill(t, width) for t in labels],
                            loc="outside lower center", ncol=ncol, handlelength=2.2,
                            columnspacing=1.2)
        box = legend.get_window_extent()
        if box.width <= 0.98 * fig.bbox.width or (ncol == 1 and width <= 12):
            break
        legend.remove()
        if ncol > 1:
            ncol -= 1
        else:
            width -= 4
    fig.set_figheight(PLOT_HEIGHT + box.height / fig.dpi)


BANDS_UP_TO = 6  # series; beyond, overlapping bands hide each other: thin error bars


def ci_caption(n_series: int) -> str:
    return "bands" if n_series <= BANDS_UP_TO else "error bars"


def _band_line(ax: Axes, sweep: Sweep, points: list[Point], x: list[float], metric: str,
               label: str, n_series: int) -> list[float]:
    """One series: line with markers and its CIs; returns every y drawn (for the scale)."""
    s = series_style(sweep, points[0])
    y = [p.metrics[metric] for p in points]
    ax.plot(x, y, color=s.color, marker=s.marker, linestyle=s.linestyle, label=label)
    cis = [p.ci(metric) for p in points]
    if not all(cis) or not all(c[0] <= v <= c[1] for c, v in zip(cis, y, strict=True)):
        return y  # no interval, or one that excludes its own estimate: draw none
    lo, hi = [c[0] for c in cis], [c[1] for c in cis]
    if n_series <= BANDS_UP_TO:
        ax.fill_between(x, lo, hi, color=s.color, alpha=0.18, linewidth=0)
    else:
        err = [[max(v - a, 0.0) for v, a in zip(y, lo, strict=True)],
               [max(b - v, 0.0) for v, b in zip(y, hi, strict=True)]]
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor=s.color, elinewidth=0.6, capsize=0)
    return y + lo + hi


def nfe_figures(sweep: Sweep, out: Path, skip: Sequence[str] = ()) -> list[Entry]:
    """Metric vs nfe per series (log x, CI bands), one figure per metric and guidance scale."""
    entries = []
    for scale in sweep.scales():
        groups = sweep.series(p for p in sweep.ok if p.scale == scale)
        if not any(len({p.nfe for p in g}) > 1 for g in groups.values()):
            continue
        for metric in sweep.metric_names():
            if metric in skip:
                continue
            series = {k: [p for p in g if metric in p.metrics] for k, g in groups.items()}
            series = {k: g for k, g in series.items() if g}
            fig = st.figure(PLOT_HEIGHT)
            ax = fig.add_subplot()
            ys = []
            for points in series.values():
                ys += _band_line(ax, sweep, points, [p.nfe for p in points], metric,
                                 sweep.label(points[0]), len(series))
            _log_nfe_axis(ax, [p.nfe for g in series.values() for p in g])
            _maybe_log_y(ax, ys)
            ax.set_ylabel(metric_label(metric))
            if scale is not None:
                ax.set_title(f"guidance scale {fmt(scale, 3)}")
            _legend(fig, ax, len(series))
            stem = f"nfe_{metric}{_scale_tag(scale)}"
            st.save(fig, out, stem)
            entries.append(Entry(stem, f"{metric} vs nfe" + (
                f" at guidance scale {fmt(scale, 3)}" if scale is not None else "")
                + f"; {ci_caption(len(series))}: 95% bootstrap CI."))
    return entries


def guidance_figures(sweep: Sweep, out: Path) -> list[Entry]:
    """Metric vs guidance scale per series, one figure per metric and step count."""
    entries = []
    for level in sweep.levels():
        groups = sweep.series(p for p in sweep.ok if p.level == level and p.scale is not None)
        groups = {k: sorted(g, key=lambda p: p.scale) for k, g in groups.items()}
        if not any(len({p.scale for p in g}) > 1 for g in groups.values()):
            continue
        for metric in sweep.metric_names():
            fig = st.figure(PLOT_HEIGHT)
            ax = fig.add_subplot()
            for points in groups.values():
                points = [p for p in points if metric in p.metrics]
                if points:  # at a fixed step count, samplers may differ in nfe: say so
                    label = sweep.label(points[0]) + (
                        f" (nfe {points[0].nfe:g})" if level[0] == "steps" else "")
                    _band_line(ax, sweep, points, [p.scale for p in points], metric, label,
                               len(groups))
            ax.set_xlabel("guidance scale w (1 = no guidance)")
            ax.set_ylabel(metric_label(metric))
            ax.set_title(level_text(level))
            _legend(fig, ax, len(groups))
            stem = f"guidance_{metric}_{''.join(map(str, level))}"
            st.save(fig, out, stem)
            entries.append(Entry(stem, f"{metric} vs guidance scale at {level_text(level)}; "
                                       f"{ci_caption(len(groups))}: 95% bootstrap CI."))
    return entries


def pick(names: Sequence[str], preferred: Sequence[str]) -> str | None:
    """The first metric in `names` starting with one of `preferred`, in preference order."""
    for prefix in preferred:
        for name in names:
            if name.startswith(prefix):
                return name
    return None


def pareto_front(xy: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (higher x, lower y), ordered by x."""
    front = [i for i, (x, y) in enumerate(xy) if not any(
        (x2 >= x and y2 <= y) and (x2 > x or y2 < y) for x2, y2 in xy)]
    return sorted(front, key=lambda i: xy[i])


def tradeoff_figures(sweep: Sweep, out: Path) -> list[Entry]:
    """Quality vs alignment (CLIP score) over guidance, with the Pareto front: one figure per
    Frechet distance the sweep has (each feature space sees a different trade-off), else for
    the first of KID/CMMD."""
    names = sweep.metric_names()
    align = pick(names, ("clip_score",))
    qualities = sorted(n for n in names if n.startswith("fd_") or n == "fid") or [
        pick(names, ("kid_", "cmmd"))]
    if align is None or qualities == [None]:
        return []
    return [e for quality in qualities for e in _tradeoff(sweep, out, quality, align)]


def _tradeoff(sweep: Sweep, out: Path, quality: str, align: str) -> list[Entry]:
    entries = []
    for level in sweep.levels():
        pts = [p for p in sweep.ok if p.level == level and p.scale is not None
               and quality in p.metrics and align in p.metrics]
        groups = {k: sorted(g, key=lambda p: p.scale) for k, g in sweep.series(pts).items()}
        if not any(len({p.scale for p in g}) > 1 for g in groups.values()):
            continue
        fig = st.figure(PLOT_HEIGHT)
        ax = fig.add_subplot()
        for points in groups.values():
            s = series_style(sweep, points[0])
            ax.plot([p.metrics[align] for p in points], [p.metrics[quality] for p in points],
                    color=s.color, marker=s.marker, linestyle=s.linestyle,
                    label=sweep.label(points[0]))
        pts = [p for g in groups.values() for p in g]
        xy = [(p.metrics[align], p.metrics[quality]) for p in pts]
        front = pareto_front(xy)
        fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
        ax.plot(fx, fy, color=st.FRONT, linestyle=(0, (2, 2)), linewidth=0.8, marker="o",
                markersize=7, markerfacecolor="none", markeredgewidth=0.7,
                label="Pareto front", zorder=3)
        for i in front:
            ax.annotate(f"w={fmt(pts[i].scale, 2)}", xy[i], xytext=(3, 3),
                        textcoords="offset points", fontsize=5)
        ax.set_xlabel(metric_label(align))
        ax.set_ylabel(metric_label(quality))
        ax.set_title(f"{level_text(level)}, curves over guidance scale w")
        _legend(fig, ax, len(groups) + 1)
        stem = f"tradeoff_{quality}_{align}_{''.join(map(str, level))}"
        st.save(fig, out, stem)
        entries.append(Entry(stem, f"{quality} vs {align} over guidance scale at "
                                   f"{level_text(level)}; circled: the Pareto front over all "
                                   "points."))
    return entries


def fit_slope(nfe: Sequence[float], err: Sequence[float]) -> tuple[float, list[int]] | None:
    """Least-squares slope of log err on log nfe over the larger-nfe half (>= 3 points)."""
    idx = [i for i in range(len(nfe)) if err[i] > 0]
    if len({nfe[i] for i in idx}) < 2:
        return None
    idx = sorted(idx, key=lambda i: nfe[i])
    idx = idx[-max(min(3, len(idx)), (len(idx) + 1) // 2):]
    slope = np.polyfit(np.log([nfe[i] for i in idx]), np.log([err[i] for i in idx]), 1)[0]
    return float(slope), idx


def convergence_figures(sweep: Sweep, out: Path) -> list[Entry]:
    """Analytic-model errors (rmse_*) vs nfe, log-log, with fitted slopes in the legend."""
    entries = []
    errors = [m for m in sweep.metric_names() if m.startswith("rmse_")]
    for scale in sweep.scales():
        groups = sweep.series(p for p in sweep.ok if p.scale == scale)
        for metric in errors:
            series = {k: [p for p in g if metric in p.metrics] for k, g in groups.items()}
            series = {k: g for k, g in series.items() if len({p.nfe for p in g}) > 1}
            if not series:
                continue
            fig = st.figure(PLOT_HEIGHT)
            ax = fig.add_subplot()
            ys = []
            for points in series.values():
                x, y = [p.nfe for p in points], [p.metrics[metric] for p in points]
                fit = fit_slope(x, y)
                label = sweep.label(points[0])
                if fit is not None:
                    slope, idx = fit
                    label += f" (slope {slope:.2f})".replace("-", "\u2212")
                ys += _band_line(ax, sweep, points, x, metric, label, len(series))
                if fit is not None:
                    xs = np.array([x[i] for i in idx])
                    c = np.mean(np.log([y[i] for i in idx]) - slope * np.log(xs))
                    ax.plot(xs, np.exp(c) * xs**slope, color="#555555", linewidth=0.5,
                            linestyle=(0, (1, 1)))
            _log_nfe_axis(ax, [p.nfe for g in series.values() for p in g])
            ax.set_yscale("log")
            ax.set_ylabel(metric_label(metric))
            if scale is not None:
                ax.set_title(f"guidance scale {fmt(scale, 3)}")
            _legend(fig, ax, max(len(series), 2))
            stem = f"convergence_{metric}{_scale_tag(scale)}"
            st.save(fig, out, stem)
            entries.append(Entry(stem, f"{metric} vs nfe, log-log; legend: least-squares "
                                       "slope of log error on log nfe over the larger-nfe "
                                       "half of each curve, at least 3 points (dotted); "
                                       f"{ci_caption(len(series))}: 95% bootstrap CI."))
    return entries
