"""The analytic model: its denoiser, sampler and reference ODE solution are exact."""

import math

import pytest
import torch

from sdlab import samplers, schedules
from sdlab.models.gmm import GaussianMixture, GMMDenoiser


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture.random(shape=(2, 2, 2), components=3, seed=1)


def test_denoiser_is_tweedie(gmm):
    """D(x, sigma) = x + sigma^2 grad log p_sigma(x), with the score from autograd."""
    x = torch.randn(5, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 0.7, 5.0):
        x_s = (x * sigma).requires_grad_(True)
        (score,) = torch.autograd.grad(gmm.log_prob(x_s, sigma).sum(), x_s)
        expected = x_s.detach() + sigma**2 * score
        got = gmm.denoise(x_s.detach(), torch.full((5,), sigma, dtype=torch.float64))
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_exact_samples_match_moments(gmm):
    x = gmm.sample(200_000, torch.Generator().manual_seed(0)).flatten(1)
    mean, cov = gmm.moments()
    assert (x.mean(0) - mean).abs().max() < 0.02
    assert (torch.cov(x.T) - cov).abs().max() < 0.03


def test_log_prob_normalised_in_1d():
    g = GaussianMixture.random(shape=(1,), components=3, seed=2)
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)[:, None]
    mass = torch.trapezoid(g.log_prob(grid).exp(), grid[:, 0])
    assert abs(float(mass) - 1) < 1e-8


def test_reference_error_negligible_next_to_heun_1000(gmm):
    d = GMMDenoiser(gmm)
    z = torch.randn(8, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = z * d.sigma_max
    ref = gmm.reference_sample(x, d.sigma_max, d.sigma_min)
    tighter = gmm.reference_sample(x, d.sigma_max, d.sigma_min, rtol=1e-12, atol=1e-12)
    sigmas = schedules.karras(1000, sigma_min=d.sigma_min, sigma_max=d.sigma_max)
    heun = samplers.get("heun")(d, x, sigmas)
    ref_err = (ref - tighter).norm()
    heun_err = (heun - tighter).norm()
    assert heun_err > 0
    assert ref_err < heun_err / 100


def test_single_gaussian_ode_closed_form():
    """For one Gaussian the PF-ODE is linear: x(s) - mu = sqrt((lam+s^2)/(lam+S^2)) (x(S) - mu)."""
    lam = torch.tensor([[0.3, 0.05]], dtype=torch.float64)
    g = GaussianMixture(torch.ones(1), torch.tensor([[1.0, -2.0]]),
                        torch.eye(2, dtype=torch.float64)[None], lam, shape=(2,))
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    got = g.ode_solve(x, 10.0, 0.1)
    expected = g.means + ((lam + 0.01) / (lam + 100.0)).sqrt() * (x - g.means)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)
    assert math.isfinite(float(got.sum()))
