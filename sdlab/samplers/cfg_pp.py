"""CFG++ samplers (Chung et al. 2024): guided x0 estimate, unconditional noise direction.

They read the unconditional branch's prediction from `denoiser.last_uncond`, which
`sdlab.guidance.CFGDenoiser` sets after every call. CFG++ expects a guidance scale in
[0, 1] (lambda of the paper) where plain CFG uses w > 1. When the denoiser is not guided,
or the rule skipped the unconditional branch at this step (`last_uncond` is None), the
unconditional prediction is the denoised estimate itself and the samplers reduce exactly
to `ddim`/`euler` and `dpmpp_2m`.
"""

from __future__ import annotations

import math

from torch import Tensor

from sdlab.samplers import register
from sdlab.samplers.common import denoise, report, steps, t_of


def _uncond(denoiser, denoised: Tensor) -> Tensor:
    """The unconditional prediction of the last call, or `denoised` when there was none."""
    uncond = getattr(denoiser, "last_uncond", None)
    return denoised if uncond is None else uncond


@register(paper="Chung et al. 2024, CFG++: Manifold-constrained CFG (Algorithm 1, DDIM form)",
          order=1, type="ODE", steps="single", nfe_per_step=1)
def euler_cfg_pp(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """CFG++ DDIM/Euler: x_next = D_guided + sigma_next * eps_uncond (Chung et al. 2024, Alg. 1)."""
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        uncond = _uncond(denoiser, denoised)
        report(callback, i, x, sigma, sigma_next, denoised, uncond=uncond)
        # renoise the guided estimate along the unconditional noise direction
        x = denoised + sigma_next * (x - uncond) / sigma
    return x


@register(paper="Chung et al. 2024, CFG++ applied to DPM-Solver++(2M) (ComfyUI form)", order=2,
          type="ODE", steps="multi", nfe_per_step=1)
def dpmpp_2m_cfg_pp(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """CFG++ (Chung et al. 2024) for DPM-Solver++(2M): CFG++ step plus 2M's correction."""
    old_uncond, h_last = None, None
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        uncond = _uncond(denoiser, denoised)
        report(callback, i, x, sigma, sigma_next, denoised, uncond=uncond)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        h = t_of(sigma_next) - t_of(sigma)
        x_next = denoised + (sigma_next / sigma) * (x - uncond)  # CFG++ DDIM step
        if old_uncond is not None:  # 2M correction: slope of D against the previous uncond
            x_next = x_next - math.expm1(-h) / (2 * h_last / h) * (denoised - old_uncond)
        x, old_uncond, h_last = x_next, uncond, h
    return x
