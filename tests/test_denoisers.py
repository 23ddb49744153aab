"""Denoiser wrappers: parameterisation round trips, sigma<->t, CFG batching and nfe."""

import pytest
import torch

from sdlab.denoisers import DiscreteDDPMDenoiser, scaled_linear_alphas_cumprod
from sdlab.guidance import CFGDenoiser, GuidanceRule, IntervalCFG
from sdlab.models.gmm import GaussianMixture, GMMDenoiser, GMMDiscreteModel


@pytest.fixture(scope="module")
def exact():
    return GMMDenoiser(GaussianMixture.random(shape=(3, 4), components=3, seed=0))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_round_trip(exact, prediction_type):
    """eps-, v- and x0-prediction presentations of the analytic model give the same D."""
    wrapped = DiscreteDDPMDenoiser(GMMDiscreteModel(exact, prediction_type),
                                   exact.alphas_cumprod, prediction_type)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.03, 0.4, 3.0, 14.0):
        x = torch.randn(6, 3, 4, dtype=torch.float64, generator=g) * sigma
        s = torch.full((6,), sigma, dtype=torch.float64)
        torch.testing.assert_close(wrapped(x, s), exact(x, s), rtol=1e-9, atol=1e-9)


def test_sd_training_sigmas():
    """SD's scaled_linear betas give the familiar sigma range 0.0292 .. 14.6146."""
    ac = scaled_linear_alphas_cumprod()
    sigmas = ((1 - ac) / ac).sqrt()
    assert len(sigmas) == 1000
    assert abs(float(sigmas[0]) - 0.0292) < 1e-4 and abs(float(sigmas[-1]) - 14.6146) < 1e-4


def test_sigma_t_inverse(exact):
    t = torch.tensor([0.0, 0.5, 17.25, 500.0, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(exact.sigma_to_t(exact.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    # integer timesteps land exactly on the training sigmas
    torch.testing.assert_close(exact.t_to_sigma(torch.tensor([0.0, 999.0])),
                               exact.sigmas[[0, 999]])


class Recorder(GMMDenoiser):
    def __init__(self, gmm):
        super().__init__(gmm)
        self.batches = []

    def denoise(self, x, sigma, **cond):
        self.batches.append((x.shape[0], cond["c"].clone()))
        return x * 0 + cond["c"].reshape(-1, 1, 1)


def test_cfg_one_batched_forward(exact):
    inner = Recorder(exact.gmm)
    cond, uncond = {"c": torch.tensor([1.0, 1.0])}, {"c": torch.tensor([0.0, 0.0])}
    guided = CFGDenoiser(inner, GuidanceRule(3.0), cond, uncond)
    x = torch.zeros(2, 3, 4, dtype=torch.float64)
    out = guided(x, torch.ones(2, dtype=torch.float64))
    assert inner.batches[0][0] == 4 and guided.nfe == 1  # one forward of [uncond, cond]
    torch.testing.assert_close(inner.batches[0][1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(out, torch.full_like(x, 3.0))  # 0 + 3 * (1 - 0)


def test_guidance_one_and_interval_skip_uncond(exact):
    inner = Recorder(exact.gmm)
    cond, uncond = {"c": torch.tensor([1.0])}, {"c": torch.tensor([0.0])}
    x = torch.zeros(1, 3, 4, dtype=torch.float64)
    for rule, sigma, batch in ((GuidanceRule(1.0), 1.0, 1), (IntervalCFG(4.0, 0.5, 2.0), 3.0, 1),
                               (IntervalCFG(4.0, 0.5, 2.0), 1.0, 2)):
        inner.batches.clear()
        guided = CFGDenoiser(inner, rule, cond, uncond)
        guided(x, torch.full((1,), sigma, dtype=torch.float64))
        assert inner.batches[0][0] == batch
        assert guided.uncond_evals == (batch == 2)


def test_negative_guidance_rejected():
    with pytest.raises(ValueError, match="guidance scale must be >= 0"):
        GuidanceRule(-1.0)
