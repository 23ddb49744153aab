"""Every registered sampler against the DESIGN contracts, and convergence orders on the
analytic mixture against its exact reference solution.

Contract tests run one parametrised test per property over every registered sampler (with
its default hyperparameters, and again with the hyperparameters its registry entry names as
making it stochastic), with no per-sampler branches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdlab import samplers, schedules
from sdlab.denoisers import Denoiser
from sdlab.guidance import CFGDenoiser, GuidanceRule
from sdlab.models.gmm import GaussianMixture, GMMDenoiser
from sdlab.noise import SeededNoise, generators
from sdlab.samplers.brownian import BrownianTreeNoise

torch.set_num_threads(1)  # tensors this small run far slower when split across threads
GMM = GaussianMixture.random((4, 2, 2), components=3, seed=0)
CASES = [(e.name, {}) for e in samplers.registry.entries()] + [
    (e.name, e.info["stochastic_with"]) for e in samplers.registry.entries()
    if e.info.get("stochastic_with")]
IDS = [f"{name}{'-' + '-'.join(map(str, hp.values())) if hp else ''}" for name, hp in CASES]
SEEDS = [11, 12, 13]


class CountingMixture:
    """The mixture with an independent count of its evaluations (one per denoise call)."""

    def __init__(self, gmm: GaussianMixture) -> None:
        self.gmm, self.calls = gmm, 0

    def denoise(self, x, sigma):
        self.calls += 1
        return self.gmm.denoise(x, sigma)


def start(seeds: list[int], sigma: float) -> torch.Tensor:
    z = torch.stack([torch.randn(GMM.shape, generator=g, dtype=torch.float64)
                     for g in generators([s + 1000 for s in seeds])])
    return sigma * z


def run(name, hparams, seeds, denoiser=None, steps=6, noise_seeds=None, **kw):
    """Sample from the starting noise of `seeds` with per-sample sampler noise."""
    denoiser = denoiser or GMMDenoiser(GMM)
    sigmas = schedules.karras(steps, sigma_min=denoiser.sigma_min, sigma_max=denoiser.sigma_max)
    x = start(seeds, float(sigmas[0]))
    noise = SeededNoise(generators(noise_seeds or seeds), x)
    return samplers.get(name)(denoiser, x, sigmas, noise=noise, **hparams, **kw)


def is_stochastic(name: str, hparams: dict) -> bool:
    return samplers.registry.entry(name).info["type"] == "SDE" or bool(hparams)


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=IDS)
def test_one_step_schedule_returns_denoised_exactly(name, hparams):
    den = GMMDenoiser(GMM)
    x, reports = start(SEEDS, 3.0), []
    out = samplers.get(name)(den, x.clone(), torch.tensor([3.0, 0.0], dtype=torch.float64),
                             noise=SeededNoise(generators(SEEDS), x), callback=reports.append,
                             **hparams)
    last = reports[-1]  # the model evaluation at the last step (after any EDM churn)
    sigma = torch.full((len(x),), last.get("sigma_hat", last["sigma"]), dtype=torch.float64)
    assert torch.equal(last["denoised"], den.denoise(last["x"], sigma))
    assert torch.equal(out, last["denoised"])
    if not hparams:  # without churn the last evaluation is at the input itself
        assert torch.equal(last["x"], x)


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=IDS)
def test_repeatable_batch_invariant_and_noise_used_iff_stochastic(name, hparams):
    batch = run(name, hparams, SEEDS)
    assert torch.equal(batch, run(name, hparams, SEEDS))  # same seeds, same images
    single = torch.cat([run(name, hparams, [s]) for s in SEEDS])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-12)  # batch of 3 == 3 of 1
    other_noise = run(name, hparams, SEEDS, noise_seeds=[s + 100 for s in SEEDS])
    assert (not torch.equal(other_noise, batch)) is is_stochastic(name, hparams)


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=IDS)
def test_global_rng_untouched(name, hparams):
    den = GMMDenoiser(GMM)
    sigmas = schedules.karras(4, sigma_min=den.sigma_min, sigma_max=den.sigma_max)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    samplers.get(name)(den, start(SEEDS, float(sigmas[0])), sigmas, **hparams)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=IDS)
def test_nfe_reported_equals_model_evaluations(name, hparams):
    counting = CountingMixture(GMM)
    den = GMMDenoiser(counting)
    reports = []
    run(name, hparams, SEEDS, denoiser=den, steps=6, callback=reports.append)
    assert den.nfe == counting.calls >= 6  # every step evaluates the model at least once
    reported = [r["nfe"] for r in reports if "nfe" in r]
    assert reported[-1:] in ([], [counting.calls])
