"""Per-sample seeded randomness: image i draws from its own generator, whatever the batch.

A sample's generator first gives its initial noise, then every draw its sampler makes, in
the same order as diffusers' pipelines draw from a list of generators, so batches of 1, 4
or 16 give the same images and native samplers see the same noise as diffusers schedulers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Seeds of the fallback noise a sampler builds when none is passed; kept away from the
# small integers used as image seeds so the fallback never repeats an initial noise.
DEFAULT_NOISE_SEED = 0x5D1AB000


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def randn(gens: Sequence[torch.Generator], shape: Sequence[int], *,
          dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """One standard-normal draw of `shape` (without batch dim) per generator, stacked."""
    draws = [torch.randn(tuple(shape), generator=g, dtype=dtype) for g in gens]
    return torch.stack(draws).to(device)


class SeededNoise:
    """The sampler noise source `noise(sigma, sigma_next) -> N(0, I)` from per-sample generators."""

    def __init__(self, gens: Sequence[torch.Generator], like: Tensor) -> None:
        if len(gens) != like.shape[0]:
            raise ValueError(f"{len(gens)} generators for a batch of {like.shape[0]}")
        self.gens = list(gens)
        self.shape, self.dtype, self.device = like.shape[1:], like.dtype, like.device

    def __call__(self, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
        return randn(self.gens, self.shape, dtype=self.dtype, device=self.device)


def default_noise(x: Tensor) -> SeededNoise:
    """Fallback noise for a sampler called without one: seeds DEFAULT_NOISE_SEED + i."""
    return SeededNoise(generators(range(DEFAULT_NOISE_SEED, DEFAULT_NOISE_SEED + len(x))), x)
