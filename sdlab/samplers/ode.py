"""Deterministic (probability-flow ODE) samplers, with EDM churn where the paper has it."""

from __future__ import annotations

import math

from torch import Tensor

from sdlab.samplers import register
from sdlab.samplers.common import (
    churn_gamma,
    denoise,
    noise_or_default,
    report,
    steps,
    to_d,
)

INF = float("inf")


def _churn(x: Tensor, sigma: float, gamma: float, s_noise: float, noise) -> tuple[Tensor, float]:
    """EDM Alg. 2 lines 4-6: raise the noise level to sigma_hat = (1 + gamma) sigma."""
    sigma_hat = sigma * (1 + gamma)
    if gamma > 0:
        x = x + noise(sigma, sigma_hat) * s_noise * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat


@register(paper="Karras et al. 2022, EDM Algorithm 2 (first order)", order=1, type="ODE",
          steps="single", nfe_per_step=1, stochastic_if="s_churn > 0")
def euler(denoiser, x, sigmas, *, noise=None, callback=None, s_churn: float = 0.0,
          s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """Euler's method on the PF-ODE (Karras et al. 2022, Alg. 2 without the 2nd-order step)."""
    noise = noise_or_default(noise, x)
    n = len(sigmas) - 1
    for i, sigma, sigma_next in steps(sigmas):
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _churn(x, sigma, gamma, s_noise, noise)
        denoised = denoise(denoiser, x, sigma_hat)
        report(callback, i, x, sigma, sigma_next, denoised, sigma_hat=sigma_hat)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
        else:
            x = x + to_d(x, sigma_hat, denoised) * (sigma_next - sigma_hat)
    return x


@register(paper="Karras et al. 2022, EDM Algorithm 2", order=2, type="ODE", steps="single",
          nfe_per_step=2, stochastic_if="s_churn > 0")
def heun(denoiser, x, sigmas, *, noise=None, callback=None, s_churn: float = 0.0,
         s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """Heun's 2nd-order method with EDM churn (Karras et al. 2022, Algorithm 2)."""
    noise = noise_or_default(noise, x)
    n = len(sigmas) - 1
    for i, sigma, sigma_next in steps(sigmas):
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = _churn(x, sigma, gamma, s_noise, noise)
        denoised = denoise(denoiser, x, sigma_hat)
        report(callback, i, x, sigma, sigma_next, denoised, sigma_hat=sigma_hat)
        if sigma_next == 0:  # Alg. 2 line 8: Euler into sigma = 0, i.e. the denoised estimate
            x = denoised
            continue
        d = to_d(x, sigma_hat, denoised)
        x_next = x + d * (sigma_next - sigma_hat)  # line 8: Euler step
        d_next = to_d(x_next, sigma_next, denoise(denoiser, x_next, sigma_next))
        x = x + (d + d_next) / 2 * (sigma_next - sigma_hat)  # line 11: trapezoidal correction
    return x


@register(paper="Lu et al. 2022, DPM-Solver++ (Algorithm 2, 2M)", order=2, type="ODE",
          steps="multi", nfe_per_step=1)
def dpmpp_2m(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """DPM-Solver++(2M), data-prediction multistep in t = -log sigma (Lu et al. 2022, Alg. 2)."""
    old_denoised, h_last = None, None
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma) - math.log(sigma_next)
        if old_denoised is None:  # first step: DPM-Solver++(1), i.e. DDIM
            denoised_d = denoised
        else:  # second-order correction from the previous data prediction
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
        old_denoised, h_last = denoised, h
    return x
