"""Stochastic (ancestral / SDE) samplers. All randomness comes through `noise`."""

from __future__ import annotations

import math

from torch import Tensor

from sdlab.samplers import register
from sdlab.samplers.brownian import brownian_noise
from sdlab.samplers.common import (
    ancestral_step,
    denoise,
    exp_adams_coefficients,
    noise_or_default,
    report,
    sigma_of,
    steps,
    t_of,
    to_d,
)


@register(paper="Ho et al. 2020 ancestral sampling, k-diffusion sample_euler_ancestral", order=1,
          type="SDE", steps="single", nfe_per_step=1)
def euler_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0,
                    s_noise: float = 1.0) -> Tensor:
    """Ancestral Euler (Song et al. 2021 ancestral sampling): Euler to sigma_down + noise."""
    noise = noise_or_default(noise, x)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_up > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@register(paper="Lu et al. 2022 DPM-Solver-2 with ancestral noise (k-diffusion)", order=1,
          type="SDE", steps="single", nfe_per_step=2)
def dpm_2_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0,
                    s_noise: float = 1.0) -> Tensor:
    """Ancestral DPM-Solver-2 (Lu et al. 2022): log-sigma midpoint to sigma_down, noise sigma_up."""
    noise = noise_or_default(noise, x)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        sigma_mid = math.sqrt(sigma * sigma_down)  # geometric midpoint of sigma -> sigma_down
        x_mid = x + to_d(x, sigma, denoised) * (sigma_mid - sigma)
        x = x + to_d(x_mid, sigma_mid, denoise(denoiser, x_mid, sigma_mid)) * (sigma_down - sigma)
        if sigma_up > 0:  # ancestral noise
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@register(paper="Lu et al. 2022, DPM-Solver++ (2S, Algorithm 1) with ancestral noise", order=1,
          type="SDE", steps="single", nfe_per_step=2)
def dpmpp_2s_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0,
                       s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1) to sigma_down, then ancestral noise sigma_up."""
    noise = noise_or_default(noise, x)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        h = t_of(sigma_down) - t_of(sigma)
        sigma_s = sigma_of(t_of(sigma) + h / 2)  # intermediate point s = t + r h
        x_s = (sigma_s / sigma) * x - math.expm1(-h / 2) * denoised
        x = (sigma_down / sigma) * x - math.expm1(-h) * denoise(denoiser, x_s, sigma_s)
        if sigma_up > 0:  # ancestral noise
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@register(paper="Lu et al. 2022, DPM-Solver++ SDE (2S, r = 1/2; k-diffusion dpmpp_sde)",
          order=1, type="SDE", steps="single", nfe_per_step=2)
def dpmpp_sde(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0,
              s_noise: float = 1.0, r: float = 0.5) -> Tensor:
    """DPM-Solver++ SDE (Lu et al. 2022): two ancestral half-steps per step, Brownian-tree noise.

    The noise of the half-step must be part of the full step's, so the sampler queries one
    Brownian path per sample, seeded from one draw of `noise` (or default seeds); with
    independent draws instead the samples' covariance is off by ~20% at 32 steps. The path
    also makes the result change smoothly with the number of steps.
    """
    noise = brownian_noise(x, sigmas, noise)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        t, h = t_of(sigma), t_of(sigma_next) - t_of(sigma)
        sigma_s = sigma_of(t + h * r)
        # stage 1: ancestral DPM-Solver++(1) to the intermediate level s
        sd, su = ancestral_step(sigma, sigma_s, eta)
        x_s = (sd / sigma) * x - math.expm1(t - t_of(sd)) * denoised
        if su > 0:
            x_s = x_s + noise(sigma, sigma_s) * s_noise * su
        denoised_s = denoise(denoiser, x_s, sigma_s)
        # stage 2: ancestral step to sigma_next with the r-weighted data prediction
        sd, su = ancestral_step(sigma, sigma_next, eta)
        denoised_d = (1 - 1 / (2 * r)) * denoised + 1 / (2 * r) * denoised_s
        x = (sd / sigma) * x - math.expm1(t - t_of(sd)) * denoised_d
        if su > 0:
            x = x + noise(sigma, sigma_next) * s_noise * su
    return x


@register(paper="Lu et al. 2022, DPM-Solver++(2M) SDE variant (k-diffusion dpmpp_2m_sde)",
          order=1, type="SDE", steps="multi", nfe_per_step=1)
def dpmpp_2m_sde(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0,
                 s_noise: float = 1.0, solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022): 2M under the SDE, midpoint or heun correction."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"dpmpp_2m_sde solver_type must be 'midpoint' or 'heun', "
                         f"got {solver_type!r}")
    noise = noise_or_default(noise, x)
    old_denoised, h_last = None, None
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        h = t_of(sigma_next) - t_of(sigma)
        eta_h = eta * h
        # the SDE's exact solution for a constant data prediction
        x = (sigma_next / sigma) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
        if old_denoised is not None:  # second-order correction from the previous prediction
            r = h_last / h
            weight = (0.5 * -math.expm1(-h - eta_h) if solver_type == "midpoint"
                      else -math.expm1(-h - eta_h) / (-h - eta_h) + 1)
            x = x + weight * (denoised - old_denoised) / r
        if eta > 0:  # the injected noise of the SDE over the step
            x = x + noise(sigma, sigma_next) * sigma_next * math.sqrt(
                -math.expm1(-2 * eta_h)) * s_noise
        old_denoised, h_last = denoised, h
    return x


@register(paper="Lu et al. 2022, DPM-Solver++(3M) SDE variant (k-diffusion dpmpp_3m_sde)",
          order=1, type="SDE", steps="multi", nfe_per_step=1)
def dpmpp_3m_sde(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0,
                 s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022): quadratic extrapolation of D, decay rate 1 + eta.

    Uses the exact weights of `dpmpp_3m` (k-diffusion's version halves the second-difference
    term), so with eta = 0 it is `dpmpp_3m`.
    """
    noise = noise_or_default(noise, x)
    hist, t_hist = [], []
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        # in s = (1 + eta) t the SDE's mean follows the data-prediction ODE dx/ds = D - x
        hist, t_hist = [denoised, *hist][:3], [(1 + eta) * t_of(sigma), *t_hist][:3]
        h = t_of(sigma_next) - t_of(sigma)
        coeffs = exp_adams_coefficients(t_hist, (1 + eta) * h)
        x = math.exp(-(1 + eta) * h) * x + sum(c * d for c, d in zip(coeffs, hist, strict=True))
        if eta > 0:  # the injected noise of the SDE over the step
            x = x + noise(sigma, sigma_next) * sigma_next * math.sqrt(
                -math.expm1(-2 * eta * h)) * s_noise
    return x


@register(paper="Ho et al. 2020, DDPM (ancestral sampling from the posterior, eq. 6-7)", order=1,
          type="SDE", steps="single", nfe_per_step=1)
def ddpm(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, eq. 6-7): x_next ~ q(x_next | x, x0 = D(x)).

    In VE form the posterior has mean D + (sigma_next / sigma)^2 (x - D) and variance
    sigma_next^2 (1 - sigma_next^2 / sigma^2): DDIM with eta = 1.
    """
    noise = noise_or_default(noise, x)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the posterior at sigma = 0 is a point mass at x0
            x = denoised
            continue
        ratio = (sigma_next / sigma) ** 2
        x = denoised + ratio * (x - denoised)  # posterior mean (eq. 7)
        x = x + math.sqrt(sigma_next**2 * (1 - ratio)) * noise(sigma, sigma_next)  # beta-tilde
    return x


@register(paper="Luo et al. 2023, Latent Consistency Models (multistep sampling, Alg. 1 of "
          "Song et al. 2023)", order=1, type="SDE", steps="single", nfe_per_step=1)
def lcm(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """Consistency multistep sampling (Song et al. 2023, Alg. 1; LCM): x0 estimate, re-noise.

    Meant for consistency models, whose output is a sample of the data. With an ordinary
    diffusion model's denoiser (a posterior mean) it converges, at any step count, to a
    narrower distribution than the data's (variance s^2/2 for Gaussian data of variance s^2):
    tests/test_sde_weak_convergence.py measures this.
    """
    noise = noise_or_default(noise, x)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        x = denoised  # the consistency function's output
        if sigma_next > 0:  # re-noise to the next level
            x = x + sigma_next * noise(sigma, sigma_next)
    return x
