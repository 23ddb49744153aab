"""Weak convergence of the stochastic samplers: refined, they sample the data distribution
itself, not merely some distribution.

Every stochastic sampler is checked: registry type "SDE", and every deterministic one run
with the hyperparameters its entry names in `stochastic_with` (EDM churn, DDIM's eta).

1. In distribution, on a 2-d mixture of three well-separated narrow Gaussians. N samples
   start from the exact noisy marginal at sigma_max (x0 + sigma_max z, DESIGN's img2img
   start), so the sampler is the only source of error (the last step's D(x, sigma_min) with
   sigma_min = 0.002 shrinks the narrowest component's variance by 4e-4, far below the
   noise). The distance is the unbiased MMD^2 to the exact mixture, p-terms in closed form
   as `mmd_exact` computes them, under a Gaussian kernel as wide as the components (the
   most sensitive width, and the one whose noise has the lightest tail). Its Monte-Carlo
   noise for N exact samples is exact: the estimate is a degenerate U-statistic, so its
   variance is 2 E[h(x, y)^2] / (N (N - 1)), E[h^2] taken over 2e5 exact pairs.
2. Weak order, exactly, on a single Gaussian: there D is affine, so a sampler's output is
   affine in its start and its noise draws, and pushing unit probes through it gives the
   output variance without Monte Carlo. The error of that second moment at n and 2n steps
   gives the weak order.

Either check fails for a sampler that converges to the wrong distribution: see
`test_a_wrong_sampler_fails_both_criteria`.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdlab import samplers, schedules
from sdlab.metrics.exact import mixture_kernel_means
from sdlab.metrics.stats import kernel_sum_offdiag, rbf_kernel
from sdlab.models.gmm import GaussianMixture, GMMDenoiser
from sdlab.samplers import sde

torch.set_num_threads(1)  # tensors this small run far slower when split across threads

SEED = 0
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
ELL = 0.15  # kernel width: the components' standard deviations are 0.1-0.3
# N, coarse and fine step counts. dpmpp_sde queries a per-sample Brownian tree in Python
# (~20 nodes a query), so it gets fewer samples and steps; its error at 16 steps is ~1 sd_500
# (~4 sd_2000; within noise at 32 steps for N = 2000).
BUDGET = {"default": (4000, 8, 256), "dpmpp_sde": (500, 4, 16)}
# For exact samples z = MMD^2 / sd_N has mean 0 and sd 1 but is a weighted chi-square, led
# by the fluctuation of the mixture weights, with an exponential right tail: P(z > 4) ~ 3e-3,
# P(z > 6) ~ 2e-4 (its eigen-expansion; 3300 exact draws agree), as 3.5 sd of a normal.
Z_BOUND = 6.0
ORDER_STEPS = 128  # weak order from the errors at 128 and 256 steps

CASES = [(e.name, {}) for e in samplers.registry.entries() if e.info["type"] == "SDE"] + [
    (e.name, e.info["stochastic_with"]) for e in samplers.registry.entries()
    if e.info.get("stochastic_with")]
LCM = ("consistency sampling (Song et al. 2023, Alg. 1) re-noises the model's x0 estimate and "
       "so assumes a consistency function (the PF-ODE endpoint); given the posterior mean D, "
       "whose spread is smaller than the data's, it converges to a narrower distribution (for "
       "a Gaussian of variance s^2, to s^2 / 2) at any number of steps")
PARAMS = [pytest.param(name, hp, id=name + "".join(f"-{k}={v}" for k, v in hp.items()),
                       marks=[pytest.mark.xfail(reason=LCM, strict=True)] if name == "lcm" else [])
          for name, hp in CASES]


def mixture() -> GaussianMixture:
    """Weights 0.5 / 0.3 / 0.2, means 3 apart, rotated anisotropic components of sd 0.1-0.3."""
    angles = torch.tensor([0.3, 1.2, 2.2], dtype=torch.float64)
    c, s = angles.cos(), angles.sin()
    rotations = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]),
                           torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.5, 2.6]]), rotations,
                           torch.tensor([[0.09, 0.01], [0.04, 0.02], [0.0625, 0.0225]]), (2,))


GMM = mixture()


class ScaledSigma(GMMDenoiser):
    """A mis-calibrated model: the exact denoiser of the wrong noise level, `scale` * sigma."""

    def __init__(self, gmm: GaussianMixture, scale: float) -> None:
        super().__init__(gmm)
        self.scale = scale

    def denoise(self, x, sigma, **cond):
        return self.gmm.denoise(x, sigma * self.scale)


def mmd2(x: torch.Tensor) -> float:
    """Unbiased MMD^2 between the rows of `x` and the exact mixture (closed-form p-terms)."""
    n = len(x)
    k_xp, k_pp = mixture_kernel_means(GMM, x, ELL)
    return kernel_sum_offdiag(x, rbf_kernel(ELL)) / (n * (n - 1)) - 2 * float(k_xp.mean()) + k_pp


@pytest.fixture(scope="module")
def null_sd():
    """sd of `mmd2` over N exact samples: sqrt(2 E[h^2] / (N (N - 1))), where
    h(x, y) = k(x, y) - E_p k(x, .) - E_p k(., y) + E_pp k has mean 0 in each argument."""
    g = torch.Generator().manual_seed(12345)
    x, y = GMM.sample(200_000, g), GMM.sample(200_000, g)
    (k_x, k_pp), (k_y, _) = mixture_kernel_means(GMM, x, ELL), mixture_kernel_means(GMM, y, ELL)
    h = torch.exp(-(x - y).square().sum(1) / (2 * ELL**2)) - k_x - k_y + k_pp
    e_h2 = float(h.square().mean())
    return lambda n: math.sqrt(2 * e_h2 / (n * (n - 1)))


def sample(name: str, hparams: dict, n_samples: int, steps: int,
           denoiser: GMMDenoiser | None = None) -> torch.Tensor:
    """`n_samples` from the sampler, started at the exact marginal at SIGMA_MAX.

    One generator serves the whole batch: per-sample streams (`sdlab.noise.SeededNoise`)
    would cost n_samples draws a step, and batch invariance is tested in test_samplers.
    """
    g = torch.Generator().manual_seed(SEED)
    x0 = GMM.sample(n_samples, g)
    x = x0 + SIGMA_MAX * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigmas = schedules.karras(steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return samplers.get(name)(denoiser or GMMDenoiser(GMM), x, sigmas,
                              noise=lambda *_: torch.randn(x.shape, generator=g,
                                                           dtype=torch.float64), **hparams)


def test_exact_samples_meet_the_bound_and_the_noise_model(null_sd):
    """N exact samples, several seeds: each within the bound, their spread the computed sd."""
    n, g = BUDGET["default"][0], torch.Generator().manual_seed(SEED + 100)
    z = torch.tensor([mmd2(GMM.sample(n, g)) for _ in range(6)], dtype=torch.float64) / null_sd(n)
    assert bool((z < Z_BOUND).all()), z
    assert 0.3 < float(z.square().mean().sqrt()) < 3.0, z  # sd_N is right to a small factor


@pytest.mark.parametrize(("name", "hparams"), PARAMS)
def test_converges_in_distribution_to_the_mixture(null_sd, name, hparams):
    n_samples, coarse, fine = BUDGET.get(name, BUDGET["default"])
    z = [mmd2(sample(name, hparams, n_samples, steps)) / null_sd(n_samples)
         for steps in (coarse, fine)]
    assert z[0] > 4 * Z_BOUND, z  # the coarse error stands far out of the noise ...
    assert z[1] < Z_BOUND, z  # ... and the fine one is within what exact samples show


class Probe:
    """Noise for a batch of 2 + J rows whose j-th unit draw is 1 in row 2 + j, 0 elsewhere.

    The J units are the sampler's draws (`brownian=False`), or the increments of one
    Brownian path over the intervals between the points the sampler queries, scaled as
    `BrownianTreeNoise` scales them (`brownian=True`). `calls` lists the queries of a run.
    """

    def __init__(self, calls: list[tuple[float, float]], brownian: bool) -> None:
        self.brownian, self.k = brownian, 0
        self.points = sorted({float(s) for call in calls for s in call})
        self.rows = 2 + (len(self.points) - 1 if brownian else len(calls))

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        z = torch.zeros(self.rows, 1, dtype=torch.float64)
        if not self.brownian:
            z[2 + self.k] = 1.0
        else:
            lo, hi = sorted((float(sigma), float(sigma_next)))
            for j, (a, b) in enumerate(zip(self.points, self.points[1:], strict=False)):
                if lo <= a and b <= hi:
                    z[2 + j] = math.sqrt((b - a) / (hi - lo))
        self.k += 1
        return z


def second_moment_error(name: str, hparams: dict, steps: int, denoiser: GMMDenoiser,
                        monkeypatch) -> float:
    """Exact relative error of Var(output) for the single Gaussian that `denoiser` models.

    Output = c + A (x - mu) + sum_j B_j xi_j for the start x ~ N(mu, s^2 + sigma_max^2) and
    independent unit normals xi_j; row 0 starts at mu + 1, the others at mu with only unit j
    set in row 2 + j. The exact target is the law of D(X, sigma_min), X ~ p_sigma_min.
    """
    brownian = "brownian_noise" in samplers.get(name).__code__.co_names
    if brownian:  # the sampler's Brownian tree, replaced by a probe of the same path
        monkeypatch.setattr(sde, "brownian_noise", lambda x, sigmas, noise: noise)
    mu, s2 = float(denoiser.gmm.means[0, 0]), float(denoiser.gmm.eigvals[0, 0])
    sigmas = schedules.karras(steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    calls: list[tuple[float, float]] = []
    samplers.get(name)(denoiser, torch.full((1, 1), mu, dtype=torch.float64), sigmas,
                       noise=lambda *a: calls.append(a) or torch.zeros(1, 1, dtype=torch.float64),
                       **hparams)
    probe = Probe(calls, brownian)
    x = torch.full((probe.rows, 1), mu, dtype=torch.float64)
    x[0] += 1.0
    out = samplers.get(name)(denoiser, x, sigmas, noise=probe, **hparams)[:, 0]
    var = (out[0] - out[1]) ** 2 * (s2 + SIGMA_MAX**2) + (out[2:] - out[1]).square().sum()
    return float(var) / (s2**2 / (s2 + SIGMA_MIN**2)) - 1


def gaussian(scale: float = 1.0) -> GMMDenoiser:
    """N(0.5, 0.1^2) in one dimension, its exact denoiser at `scale` times the noise level."""
    g = GaussianMixture(torch.ones(1), torch.tensor([[0.5]]), torch.ones(1, 1, 1),
                        torch.tensor([[0.01]]), (1,))
    return ScaledSigma(g, scale)


def weak_order(name: str, hparams: dict, monkeypatch, denoiser: GMMDenoiser | None = None
               ) -> float:
    """log2 of the ratio of the second-moment errors at ORDER_STEPS and twice as many."""
    e = [second_moment_error(name, hparams, n, denoiser or gaussian(), monkeypatch)
         for n in (ORDER_STEPS, 2 * ORDER_STEPS)]
    return math.log2(abs(e[0] / e[1]))


@pytest.mark.parametrize(("name", "hparams"), PARAMS)
def test_weak_order_on_a_gaussian_is_at_least_the_registered_order(name, hparams, monkeypatch):
    # exact, so no seed can move it; on this linear problem several first-order methods
    # show order 2, which the lower bound allows
    order = samplers.registry.entry(name).info["order"]
    assert weak_order(name, hparams, monkeypatch) > order - 0.25


@pytest.mark.parametrize(("name", "hparams", "sigma_scale"), [
    ("euler_ancestral", {"s_noise": 1.5}, 1.0),  # too much noise for the drift
    ("dpmpp_2m_sde", {}, 1.1),  # the right sampler, a model 10% off in its noise level
])
def test_a_wrong_sampler_fails_both_criteria(null_sd, monkeypatch, name, hparams, sigma_scale):
    # (eta = 2 is not wrong: any eta keeps the marginals, it only converges more slowly.
    # Finer still: 5% too much noise in euler_ancestral, tried by hand, stays within the
    # MMD bound at N = 4000 but fails the exact weak order, at -1.)
    n_samples, _, fine = BUDGET["default"]
    den = ScaledSigma(GMM, sigma_scale)
    assert mmd2(sample(name, hparams, n_samples, fine, den)) / null_sd(n_samples) > Z_BOUND
    assert weak_order(name, hparams, monkeypatch, gaussian(sigma_scale)) < 0.75
