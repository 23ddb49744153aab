"""`sdlab-report DIR`: read every result.json under DIR and tabulate the sweep."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def load_results(root: str | Path) -> list[dict[str, Any]]:
    """Every result.json under root, ordered by sampler, schedule, guidance and nfe."""
    found = []
    for path in sorted(Path(root).rglob("result.json")):
        result = json.loads(path.read_text())
        result["path"] = str(path)
        found.append(result)
    if not found:
        raise FileNotFoundError(f"no result.json under {root}: run a sweep there first")
    return sorted(found, key=lambda r: (r["sampler"], r["schedule"], str(r.get("guidance")),
                                        r.get("nfe") or 0, r["steps"]))


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per point: sampler, schedule, steps, nfe, status and every metric with its CI."""
    names = sorted({m for r in results for m in r.get("metrics", {})})
    head = ["sampler", "schedule", "steps", "nfe", "status", *names]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["sampler"], r["schedule"], str(r["steps"]),
                 f"{r['nfe']:g}" if r.get("nfe") is not None else "-", r["status"]]
        for name in names:
            value, ci = r.get("metrics", {}).get(name), r.get("metrics_ci", {}).get(name)
            if value is None:
                cells.append("-")
            elif ci:
                cells.append(f"{value:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]")
            else:
                cells.append(f"{value:.4g}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sdlab-report", description=__doc__)
    parser.add_argument("dir", help="a sweep's results directory")
    parser.add_argument("--out", help="write the table here (Markdown) instead of printing it")
    args = parser.parse_args(argv)
    try:
        table = markdown_table(load_results(args.dir))
    except FileNotFoundError as err:
        parser.exit(2, f"sdlab-report: error: {err}\n")
    if args.out:
        Path(args.out).write_text(table)
    else:
        print(table, end="")
