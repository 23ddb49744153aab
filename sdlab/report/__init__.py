"""`sdlab-report DIR [--out OUT]`: a sweep's result.json files -> figures, tables, report.md.

OUT (default `DIR/report`) receives:
- `figures/<name>.pdf` and `.png`: metric vs nfe, metric vs guidance, quality-alignment
  trade-off with the Pareto front, sampler x steps image grids, error vs nfe with fitted
  convergence slopes (analytic model), per-step trajectory strips; only those the data
  supports (an axis needs two values, an image figure its files);
- `tables/results.{md,tex,csv}`;
- `report.md`: the command that produced the sweep, the data, the metric fingerprint, an
  optional reading (`--notes FILE`, Markdown), every figure and the table.
Same inputs give the same bytes: inputs are read in sorted order and files carry no dates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdlab.report import images, plots, tables
from sdlab.report import style as st
from sdlab.report.data import Sweep, load
from sdlab.report.document import render

__all__ = ["build", "load", "main"]


def figures(sweep: Sweep, out: Path) -> list[plots.Entry]:
    """Every figure the sweep supports, written under `out`."""
    analytic = any(m.startswith("rmse_") for m in sweep.metric_names())
    with st.rc():
        convergence = plots.convergence_figures(sweep, out) if analytic else []
        # the convergence figure already shows rmse_* against nfe
        skip = [m for m in sweep.metric_names() if m.startswith("rmse_")] if convergence else []
        return (convergence + plots.nfe_figures(sweep, out, skip)
                + plots.guidance_figures(sweep, out) + plots.tradeoff_figures(sweep, out)
                + images.grid_figures(sweep, out) + images.trajectory_figures(sweep, out))


def build(root: str | Path, out: str | Path, notes: str | None = None) -> Path:
    """Write the report of the sweep under `root` into `out`; returns `out/report.md`."""
    sweep, out = load(root), Path(out)
    for sub in ("figures", "tables"):  # a rebuild leaves no stale figure behind
        for old in sorted((out / sub).glob("*")) if (out / sub).is_dir() else []:
            old.unlink()
    entries = figures(sweep, out / "figures")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    table_md = tables.markdown(sweep)
    (out / "tables" / "results.md").write_text(table_md)
    (out / "tables" / "results.tex").write_text(tables.latex(sweep))
    (out / "tables" / "results.csv").write_text(tables.csv_table(sweep))
    report = out / "report.md"
    report.write_text(render(sweep, entries, table_md, notes))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sdlab-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a sweep's results directory (searched recursively)")
    parser.add_argument("--out", help="where to write the report (default: DIR/report)")
    parser.add_argument("--notes", help="a Markdown file with a written reading of the figures")
    args = parser.parse_args(argv)
    notes = None
    if args.notes:
        notes = Path(args.notes).read_text()
    try:
        report = build(args.dir, args.out or Path(args.dir) / "report", notes)
    except FileNotFoundError as err:
        parser.exit(2, f"sdlab-report: error: {err}\n")
    print(f"sdlab-report: wrote {report}")
