"""Samplers that choose their own steps: embedded-error DPM-Solver and Restart sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sdlab.samplers import register
from sdlab.samplers.common import (
    denoise,
    noise_or_default,
    report,
    sigma_list,
    steps,
    t_of,
    to_d,
)


@register(paper="Lu et al. 2022, DPM-Solver (adaptive step size, DPM-Solver-12, Sec. 3.3 / "
          "App. C)", order=2, type="ODE", steps="adaptive", nfe_per_step="adaptive")
def dpm_adaptive(denoiser, x, sigmas, *, noise=None, callback=None, rtol: float = 0.05,
                 atol: float = 0.0078, h_init: float = 0.05, safety: float = 0.9) -> Tensor:
    """DPM-Solver-12 (Lu et al. 2022, adaptive): 2nd-order steps sized by a 1st-order error.

    Integrates from sigmas[0] to the last nonzero sigma (the steps in between are ignored),
    then returns the denoised estimate there. Every sample has its own step size (the
    denoiser sees a per-sample sigma), so a sample's result does not depend on its batch.
    Its nfe is whatever the control needed: the denoiser's counter and the callback's `nfe`
    (batched calls made so far) tell it.
    """
    s = sigma_list(sigmas)
    t_end, batch, dev = t_of(s[-2]), x.shape[0], x.device
    t = torch.full((batch,), t_of(s[0]), dtype=torch.float64, device=dev)
    h = torch.full((batch,), float(h_init), dtype=torch.float64, device=dev)
    x_prev, denoised = x, torch.zeros_like(x)
    stale = torch.ones(batch, dtype=torch.bool, device=dev)  # D(x, sigma(t)) not cached
    shape, i, nfe = (-1,) + (1,) * (x.ndim - 1), 0, 0
    # The denoiser always sees the whole batch (its conditioning, e.g. CFG's prompts, is per
    # sample); finished samples ride along at h = 0 and their results are discarded.
    while bool((active := t < t_end - 1e-9).any()):
        h = torch.where(active, torch.minimum(h, t_end - t), h)
        if bool((need := stale & active).any()):  # D at t; kept while a step is rejected
            fresh = denoiser(x, (-t).exp())
            denoised = torch.where(need.reshape(shape), fresh, denoised)
            stale, nfe = stale & ~need, nfe + 1
        ha = torch.where(active, h, 0.0)
        ratio, ratio_mid = (-ha).exp().reshape(shape).to(x), (-ha / 2).exp().reshape(shape).to(x)
        x_low = ratio * x + (1 - ratio) * denoised  # DPM-Solver-1
        x_mid = ratio_mid * x + (1 - ratio_mid) * denoised
        d_mid, nfe = denoiser(x_mid, (-(t + ha / 2)).exp()), nfe + 1
        x_high = ratio * x + (1 - ratio) * d_mid  # DPM-Solver-2
        # RMS error per sample relative to max(atol, rtol * |x|)
        delta = torch.maximum(x_low.abs(), x_prev.abs()).mul(rtol).clamp(min=atol)
        err = ((x_high - x_low) / delta).flatten(1).pow(2).mean(1).sqrt()
        ok = active & (err <= 1)
        report(callback, i, x, float(t[active].max().neg().exp()),
               float((-(t + ha))[active].exp().min()), denoised, nfe=nfe, accepted=ok.cpu())
        x_prev = torch.where(ok.reshape(shape), x, x_prev)  # accept: local extrapolation
        x = torch.where(ok.reshape(shape), x_high, x)
        t, stale, i = torch.where(ok, t + h, t), stale | ok, i + 1
        factor = (safety * err.to(h).clamp(min=1e-10) ** -0.5).clamp(0.2, 5.0)  # error ~ h^2
        h = torch.where(active, h * factor, h)
    denoised = denoise(denoiser, x, s[-2])  # the last step lands on the denoised estimate
    report(callback, i, x, s[-2], 0.0, denoised, nfe=nfe + 1)
    return denoised


def _nearest(s: list[float], sigma: float, below: int) -> int:
    """Index of the schedule point nearest `sigma` among the nonzero points before `below`."""
    return min(range(below), key=lambda j: abs(math.log(s[j]) - math.log(sigma)))


@register(paper="Xu et al. 2023, Restart Sampling for Improving Generative Processes (Alg. 1)",
          order=2, type="SDE", steps="single", nfe_per_step="2 (+ restart loops)")
def restart(denoiser, x, sigmas, *, noise=None, callback=None,
            restarts: Sequence[Sequence[float]] = ((0.1, 2.0, 2),),
            s_noise: float = 1.0) -> Tensor:
    """Restart sampling (Xu et al. 2023, Alg. 1): Heun steps plus K re-noise/re-solve loops.

    Each restart interval is (sigma_lo, sigma_hi, K), snapped to the nearest schedule
    points; the re-solve reuses the schedule's own steps between them, so the schedule
    stays the caller's choice.
    """
    noise = noise_or_default(noise, x)
    s, plan, calls = sigma_list(sigmas), {}, 0
    for sigma_lo, sigma_hi, k in restarts:
        if not 0 < sigma_lo < sigma_hi:
            raise ValueError(f"restart interval needs 0 < sigma_lo < sigma_hi, got "
                             f"({sigma_lo}, {sigma_hi})")
        j_lo = _nearest(s, sigma_lo, len(s) - 1)
        j_hi = _nearest(s, sigma_hi, j_lo) if j_lo > 0 else j_lo
        if j_hi < j_lo:
            plan[j_lo] = (j_hi, int(k))

    def heun_step(x: Tensor, sigma: float, sigma_next: float) -> Tensor:
        nonlocal calls
        denoised = denoise(denoiser, x, sigma)
        report(callback, calls, x, sigma, sigma_next, denoised)
        calls += 1
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            return denoised
        d = to_d(x, sigma, denoised)
        x_next = x + d * (sigma_next - sigma)
        d_next = to_d(x_next, sigma_next, denoise(denoiser, x_next, sigma_next))
        return x + (d + d_next) / 2 * (sigma_next - sigma)

    for i, sigma, sigma_next in steps(sigmas):
        x = heun_step(x, sigma, sigma_next)  # the main ODE pass
        j_hi, k = plan.get(i + 1, (None, 0))
        for _ in range(k):  # restart: forward noise to sigma_hi, then backward ODE again
            x = x + noise(s[i + 1], s[j_hi]) * s_noise * math.sqrt(s[j_hi] ** 2 - s[i + 1] ** 2)
            for _, sig, sig_next in steps(sigmas)[j_hi:i + 1]:
                x = heun_step(x, sig, sig_next)
    return x
