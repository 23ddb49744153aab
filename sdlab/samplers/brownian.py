"""Brownian-tree noise: increments of one fixed Brownian path per sample, queried at any sigma.

A sampler asking for noise(sigma, sigma_next) gets (W(sigma_next) - W(sigma)) / sqrt(|dsigma|),
a standard normal, where W is a Brownian motion over sigma drawn once per sample. Because
the path is fixed, two schedules that share an interval see the same noise on it, so an SDE
sampler's result changes smoothly with the number of steps (Kidger et al. 2021, "Efficient
and Accurate Gradients for Neural SDEs", Sec. 4: the Brownian interval / virtual Brownian
tree). Each node of the tree draws from its own generator, seeded from the sample's seed and
the node's position, so any query order gives the same path and nothing global is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sdlab.noise import DEFAULT_NOISE_SEED

MASK64 = (1 << 64) - 1


def _mix(seed: int, salt: int) -> int:
    """SplitMix64 of (seed, salt): a well-spread child seed, fixed across runs and platforms."""
    z = (seed * 0x9E3779B97F4A7C15 + salt + 0x632BE59BD9B4E5B) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class BrownianTreeNoise:
    """noise(sigma, sigma_next) from one Brownian path per sample over [sigma_lo, sigma_hi].

    The path is refined by bisection (Brownian bridge at each midpoint) until the interval
    around a query is shorter than `tol` times the range; inside it W is interpolated
    linearly, which perturbs the variance of an increment by at most that fraction.
    """

    def __init__(self, seeds: Sequence[int], like: Tensor, sigma_lo: float, sigma_hi: float,
                 tol: float = 1e-6) -> None:
        if len(seeds) != like.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {like.shape[0]}")
        self.seeds = [int(s) for s in seeds]
        self.shape, self.dtype, self.device = like.shape[1:], like.dtype, like.device
        self.lo, self.hi = float(sigma_lo), float(sigma_hi)
        self.depth = max(1, math.ceil(math.log2(1 / tol)))
        self._generator = torch.Generator()
        self._recent: dict[tuple[int, float], Tensor] = {}  # W at the last few queries

    def _normal(self, seed: int) -> Tensor:
        """A node's standard normal: drawn in float32 (5x cheaper), summed in float64."""
        self._generator.manual_seed(seed)
        return torch.randn(tuple(self.shape), generator=self._generator).double()

    def _w(self, seed: int, s: float) -> Tensor:
        """W(s) of one sample; samplers query each sigma about twice, so recent ones are kept."""
        if (seed, s) not in self._recent:
            self._recent[seed, s] = self._bisect(seed, s)
            if len(self._recent) > 4 * len(self.seeds):
                self._recent.pop(next(iter(self._recent)))
        return self._recent[seed, s]

    def _bisect(self, seed: int, s: float) -> Tensor:
        """W(s): bisect [lo, hi] toward s, drawing each midpoint from the Brownian bridge."""
        a, b = self.lo, self.hi
        w_a = torch.zeros(tuple(self.shape), dtype=torch.float64)
        w_b = math.sqrt(b - a) * self._normal(_mix(seed, 1))
        node = 1
        for _ in range(self.depth):
            if s <= a or s >= b:
                break
            m = (a + b) / 2  # Brownian bridge: W(m) ~ N((W(a) + W(b)) / 2, (b - a) / 4)
            w_m = (w_a + w_b) / 2 + math.sqrt(b - a) / 2 * self._normal(_mix(seed, 2 * node))
            node = 2 * node + (s >= m)
            a, b, w_a, w_b = (m, b, w_m, w_b) if s >= m else (a, m, w_a, w_m)
        frac = min(max((s - a) / (b - a), 0.0), 1.0)
        return w_a + frac * (w_b - w_a)

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        lo, hi = sorted((float(sigma), float(sigma_next)))
        lo, hi = max(lo, self.lo), min(hi, self.hi)
        scale = 1 / math.sqrt(max(hi - lo, 1e-300))
        draws = [(self._w(s, hi) - self._w(s, lo)) * scale for s in self.seeds]
        return torch.stack(draws).to(self.dtype).to(self.device)


def brownian_noise(x: Tensor, sigmas: Tensor, noise: Callable[[float, float], Tensor] | None = None
                   ) -> BrownianTreeNoise:
    """A Brownian tree over a schedule's nonzero range, one path per sample.

    Its seeds come from one draw of `noise` (the bits of each sample's first two values), so
    the paths follow the caller's per-sample seeds; without `noise`, from default seeds.
    """
    nonzero = sigmas[sigmas > 0]
    lo, hi = float(nonzero.min()), float(nonzero.max())
    if noise is None:
        seeds = list(range(DEFAULT_NOISE_SEED, DEFAULT_NOISE_SEED + len(x)))
    else:
        bits = noise(hi, lo).flatten(1)[:, :2].double().view(torch.int64).tolist()
        seeds = [_mix(a & MASK64, b & MASK64) for a, b in bits]
    return BrownianTreeNoise(seeds, x, lo, hi)
