"""Result tables in Markdown, LaTeX (booktabs) and CSV.

One row per point, sorted by guidance scale, nfe, then series. Rows with the same guidance
scale and nfe form a block (a paired comparison at equal cost); within a block of two or
more rows the best value of each metric with a known direction is bold. A value's CI is
shown as +- half the width of its 95% bootstrap interval (the CSV keeps both bounds).
Values have 3 significant digits, half-widths 2.
"""

from __future__ import annotations

import csv
import io

from sdlab.report.data import Point, Sweep, fmt, lower_is_better


def rows(sweep: Sweep) -> list[Point]:
    return sorted(sweep.points, key=lambda p: (
        p.scale or 0.0, round(p.nfe, 6) if p.ok else float("inf"), sweep.series_key(p),
        p.steps))


def _block(p: Point) -> tuple:
    return (p.scale, round(p.nfe, 6))


def best(sweep: Sweep, metric: str) -> set[int]:
    """ids of the points holding the best value of `metric` in their block."""
    lower = lower_is_better(metric)
    if lower is None:
        return set()
    blocks: dict[tuple, list[Point]] = {}
    for p in sweep.ok:
        if metric in p.metrics:
            blocks.setdefault(_block(p), []).append(p)
    found = set()
    for members in blocks.values():
        if len(members) < 2:
            continue
        values = [p.metrics[metric] for p in members]
        target = min(values) if lower else max(values)
        found |= {id(p) for p in members if p.metrics[metric] == target}
    return found


def _columns(sweep: Sweep) -> list[str]:
    head = [f for f in sweep.varying()] or ["sampler"]
    head += ["steps", "nfe"]
    if any(p.scale is not None for p in sweep.ok):
        head.append("guidance")
    if sweep.failed:
        head.append("status")
    return head


def _cells(sweep: Sweep, p: Point, head: list[str]) -> list[str]:
    cells = []
    for h in head:
        if h == "steps":
            cells.append(str(p.steps))
        elif h == "nfe":
            cells.append(f"{p.nfe:g}" if p.ok else "-")
        elif h == "guidance":
            cells.append("-" if p.scale is None else fmt(p.scale, 3))
        elif h == "status":
            cells.append(p.result.get("status", ""))
        else:
            cells.append(p.field(h))
    return cells


def _value(p: Point, metric: str) -> tuple[str, str] | None:
    if metric not in p.metrics:
        return None
    ci = p.ci(metric)
    half = None if ci is None else (ci[1] - ci[0]) / 2
    return fmt(p.metrics[metric], 3), (None if half is None else fmt(half, 2))


def markdown(sweep: Sweep) -> str:
    head, metrics = _columns(sweep), sweep.metric_names()
    bold = {m: best(sweep, m) for m in metrics}
    arrows = {m: {True: " ↓", False: " ↑", None: ""}[lower_is_better(m)] for m in metrics}
    lines = ["| " + " | ".join(head + [m + arrows[m] for m in metrics]) + " |",
             "|" + "---|" * len(head) + "--:|" * len(metrics)]
    for p in rows(sweep):
        cells = _cells(sweep, p, head)
        for m in metrics:
            v = _value(p, m)
            if v is None:
                cells.append("-")
                continue
            value = f"**{v[0]}**" if id(p) in bold[m] else v[0]
            cells.append(value if v[1] is None else f"{value} ± {v[1]}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_TEX = str.maketrans({"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%",
                      "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}", "·": r"$\cdot$"})


def _tex(text: str) -> str:
    return text.translate(_TEX)


def _tex_number(text: str) -> str:
    if "e" in text:
        mantissa, exponent = text.split("e")
        return rf"{mantissa}\times10^{{{int(exponent)}}}"
    return text


def latex(sweep: Sweep) -> str:
    """A booktabs tabular (no float wrapper: \\input it inside your own table)."""
    head, metrics = _columns(sweep), sweep.metric_names()
    bold = {m: best(sweep, m) for m in metrics}
    arrows = {m: {True: r" $\downarrow$", False: r" $\uparrow$", None: ""}[lower_is_better(m)]
              for m in metrics}
    align = "".join("r" if h in ("steps", "nfe", "guidance") else "l" for h in head)
    lines = [rf"\begin{{tabular}}{{{align}{'r' * len(metrics)}}}", r"\toprule",
             " & ".join([_tex(h) for h in head] + [_tex(m) + arrows[m] for m in metrics])
             + r" \\", r"\midrule"]
    ordered = rows(sweep)
    blocks = [_block(p) for p in ordered]
    rules = len(set(blocks)) < len(blocks)  # rules between blocks only when some are paired
    previous = None
    for p in ordered:
        if rules and previous is not None and _block(p) != previous:
            lines.append(r"\midrule")
        previous = _block(p)
        cells = [_tex(c) for c in _cells(sweep, p, head)]
        for m in metrics:
            v = _value(p, m)
            if v is None:
                cells.append("--")
                continue
            value = _tex_number(v[0])
            value = rf"\mathbf{{{value}}}" if id(p) in bold[m] else value
            cells.append(f"${value}$" if v[1] is None else
                         rf"${value} \pm {_tex_number(v[1])}$")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_table(sweep: Sweep) -> str:
    """Every point at full precision, with both CI bounds."""
    head, metrics = _columns(sweep), sweep.metric_names()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head + [c for m in metrics for c in (m, f"{m}_lo", f"{m}_hi")])
    for p in rows(sweep):
        cells = _cells(sweep, p, head)
        for m in metrics:
            ci = p.ci(m)
            cells += [repr(p.metrics[m]) if m in p.metrics else "",
                      repr(ci[0]) if ci else "", repr(ci[1]) if ci else ""]
        writer.writerow(cells)
    return buf.getvalue()
