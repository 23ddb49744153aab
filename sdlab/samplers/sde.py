"""Stochastic (ancestral / SDE) samplers. All randomness comes through `noise`."""

from __future__ import annotations

from torch import Tensor

from sdlab.samplers import register
from sdlab.samplers.common import ancestral_step, denoise, noise_or_default, report, steps, to_d


@register(paper="Ho et al. 2020 ancestral sampling, k-diffusion sample_euler_ancestral", order=1,
          type="SDE", steps="single", nfe_per_step=1, stochastic_if="eta > 0")
def euler_ancestral(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 1.0,
                    s_noise: float = 1.0) -> Tensor:
    """Ancestral Euler: an Euler step to sigma_down, then fresh noise of size sigma_up."""
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
