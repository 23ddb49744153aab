"""Streaming metrics: `update(batch)` as images are generated, then `compute()`.

Every metric follows `Metric`: it sees each `sdlab.pipeline.Batch` once, returns a dict of
named values (names say their feature space, e.g. `fd_inception`), bootstrap confidence
intervals over generated images, and a fingerprint of every setting that affects its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class Metric:
    """Base class of streaming metrics."""

    def update(self, batch: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def intervals(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0
                  ) -> dict[str, tuple[float, float]]:
        return {}

    def fingerprint(self) -> dict[str, Any]:
        return {"metric": type(self).__name__}


def percentile_interval(values: Tensor, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap replicates."""
    lo, hi = torch.quantile(values.to(torch.float64),
                            torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Tensor:
    """`n_boot` resamples (with replacement) of `n` items, reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=g)


def build(config: Mapping[str, Any], **context: Any) -> dict[str, Metric]:
    """Instantiate each metric of a `metrics` config group, handing it the run's context."""
    from hydra.utils import instantiate

    return {name: instantiate(cfg, **context) for name, cfg in config.items()}
