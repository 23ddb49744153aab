"""A sweep as the report sees it: points read from result.json files, grouped into series.

A *series* is what one line of a figure shows: the points that share everything but the
swept axes (nfe / steps and guidance scale). Its label names only the fields that vary
across the sweep, so a one-sampler schedule ablation is labelled by schedule alone.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Fields that identify a series, in label order.
SERIES_FIELDS = ("model", "sampler", "variant", "schedule", "rule", "n_images", "seed")
# Sampler config keys that are not hyperparameters.
_NOT_HPARAMS = {"name", "_target_", "_partial_", "scheduler"}

# Metric direction by name prefix: True when lower is better.
_LOWER = ("fd_", "fid", "kid_", "cmmd", "rmse_", "mmd_", "mse_", "lpips")
_HIGHER = ("clip_score", "shapes_accuracy", "accuracy", "precision", "recall", "density",
           "coverage", "is_", "inception_score")


def lower_is_better(metric: str) -> bool | None:
    """True for error/distance metrics, False for scores, None when the name is unknown."""
    if metric.startswith(_LOWER):
        return True
    if metric.startswith(_HIGHER):
        return False
    return None


@dataclass(frozen=True)
class Point:
    """One finished sweep point."""

    result: dict[str, Any]
    job_dir: Path

    @property
    def ok(self) -> bool:
        return self.result.get("status") == "ok"

    @property
    def nfe(self) -> float:
        return float(self.result.get("nfe") or self.result["steps"])

    @property
    def steps(self) -> int:
        return int(self.result["steps"])

    @property
    def level(self) -> tuple[str, int]:
        """What the sweep held fixed for this point: its nfe budget if it had one, else steps."""
        budget = (self.result.get("config") or {}).get("nfe")
        return ("nfe", int(budget)) if budget is not None else ("steps", self.steps)

    @property
    def scale(self) -> float | None:
        """The guidance scale, or None for an unconditional model."""
        guidance = self.result.get("guidance") or {}
        return None if guidance.get("scale") is None else float(guidance["scale"])

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.get("metrics") or {}

    def ci(self, metric: str) -> tuple[float, float] | None:
        interval = (self.result.get("metrics_ci") or {}).get(metric)
        return None if not interval else (float(interval[0]), float(interval[1]))

    def field(self, name: str) -> str:
        """The value of a series field, as text."""
        if name == "variant":
            sampler = (self.result.get("config") or {}).get("sampler") or {}
            extra = {k: v for k, v in sampler.items() if k not in _NOT_HPARAMS}
            if isinstance(extra.get("config"), dict):  # diffusers scheduler overrides
                extra.update(extra.pop("config"))
            return ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(extra.items()))
        if name == "rule":
            return str((self.result.get("guidance") or {}).get("name", ""))
        return str(self.result.get(name, ""))


@dataclass
class Sweep:
    """Every point under a results directory, and how they vary."""

    points: list[Point]
    root: Path

    @property
    def ok(self) -> list[Point]:
        return [p for p in self.points if p.ok]

    @property
    def failed(self) -> list[Point]:
        return [p for p in self.points if not p.ok]

    def varying(self) -> list[str]:
        """Series fields that take more than one value among the ok points."""
        return [f for f in SERIES_FIELDS if len({p.field(f) for p in self.ok}) > 1]

    def series_key(self, point: Point) -> tuple[str, ...]:
        return tuple(point.field(f) for f in self.varying()) or (point.field("sampler"),)

    def label(self, point: Point) -> str:
        fields = self.varying() or ["sampler"]
        parts = []
        for f, value in zip(fields, self.series_key(point), strict=True):
            parts.append(value if f in ("sampler", "schedule", "variant", "rule", "model")
                         else f"{f}={value}")
        return " · ".join(p for p in parts if p)

    def series(self, points: Iterable[Point]) -> dict[tuple[str, ...], list[Point]]:
        """Points grouped by series, each sorted by nfe then guidance scale, keys sorted."""
        groups: dict[tuple[str, ...], list[Point]] = {}
        for p in points:
            groups.setdefault(self.series_key(p), []).append(p)
        return {k: sorted(v, key=lambda p: (p.nfe, p.scale or 0.0)) for k, v in
                sorted(groups.items())}

    def metric_names(self) -> list[str]:
        return sorted({m for p in self.ok for m in p.metrics})

    def scales(self) -> list[float | None]:
        return sorted({p.scale for p in self.ok}, key=lambda s: -1.0 if s is None else s)

    def levels(self) -> list[tuple[str, int]]:
        return sorted({p.level for p in self.ok})

    @property
    def name(self) -> str:
        names = sorted({str(p.result.get("name", "")) for p in self.points} - {""})
        return ", ".join(names) or self.root.name


def load(root: str | Path) -> Sweep:
    """Every result.json under root (sorted by path), as a Sweep."""
    root = Path(root)
    points = []
    for path in sorted(root.rglob("result.json")):
        points.append(Point(json.loads(path.read_text()), path.parent))
    if not points:
        raise FileNotFoundError(f"no result.json under {root}: run a sweep there first")
    return Sweep(points, root)


def fingerprint(sweep: Sweep) -> dict[str, list[str]]:
    """Each fingerprint entry with its distinct values over the ok points."""
    seen: dict[str, set[str]] = {}
    for p in sweep.ok:
        for k, v in (p.result.get("fingerprint") or {}).items():
            seen.setdefault(k, set()).add(v if isinstance(v, str) else json.dumps(v))
    return {k: sorted(v) for k, v in sorted(seen.items())}


def _split_values(value: str) -> set[str]:
    """The choices of a sweep override value `a,b,c` (bracketed lists stay whole)."""
    if any(c in value for c in "[]{}()'\""):
        return {value}
    return set(value.split(","))


def _as_mapping(overrides: Iterable[str]) -> dict[str, set[str]]:
    found = {}
    for item in overrides:
        key, _, value = item.partition("=")
        found[key.lstrip("+~")] = _split_values(value)
    return found


def commands(sweep: Sweep) -> list[str]:
    """The commands that produced the sweep's points, reconstructed from Hydra's files.

    Each `multirun.yaml` under the root gives one `sdlab -m ...` line (the command-line
    overrides as typed; the experiment preset's own sweep is implied by its name). A point
    that none of them covers (an earlier, since-extended sweep, or a single run) gets its
    own `sdlab ...` line from its `.hydra/overrides.yaml`.
    """
    lines, covers = [], []
    for path in sorted(sweep.root.rglob("multirun.yaml")):
        hydra = yaml.safe_load(path.read_text())["hydra"]
        task = list(hydra["overrides"]["task"])
        extra = [o for o in hydra["overrides"]["hydra"] if o != "hydra.mode=MULTIRUN"]
        lines.append(shlex.join(["sdlab", "-m", *task, *extra]))
        params = {k: _split_values(str(v)) for k, v in (hydra["sweeper"].get("params") or
                                                         {}).items()}
        covers.append({**params, **_as_mapping(task)})
    for p in sweep.points:
        file = p.job_dir / ".hydra" / "overrides.yaml"
        if not file.is_file():
            continue
        own = list(yaml.safe_load(file.read_text()) or [])
        mapping = _as_mapping(own)
        if not any(all(k in c and v <= c[k] for k, v in mapping.items()) for c in covers):
            lines.append(shlex.join(["sdlab", *own]))
    return list(dict.fromkeys(lines))


def level_text(level: tuple[str, int]) -> str:
    """`nfe 15` for an nfe budget, `15 steps` for a step count."""
    kind, value = level
    return f"nfe {value}" if kind == "nfe" else f"{value} steps"


def fmt(value: float, digits: int) -> str:
    """`value` to `digits` significant digits; scientific outside [1e-3, 1e5)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if -3 <= magnitude < 5:
        return f"{value:.{max(digits - 1 - magnitude, 0)}f}"
    return f"{value:.{digits - 1}e}"
