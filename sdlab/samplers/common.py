"""Maths shared by the samplers: derivatives, ancestral splits, per-step sigma access."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sdlab.noise import default_noise

Noise = Callable[[float, float], Tensor]


def sigma_list(sigmas: Tensor) -> list[float]:
    """Sigmas as Python floats (float64) for the time-stepping coefficients."""
    return sigmas.to(torch.float64).tolist()


def steps(sigmas: Tensor) -> list[tuple[int, float, float]]:
    """(i, sigma, sigma_next) for every step of a schedule."""
    s = sigma_list(sigmas)
    return [(i, s[i], s[i + 1]) for i in range(len(s) - 1)]


def denoise(denoiser: Callable[..., Tensor], x: Tensor, sigma: float) -> Tensor:
    """Evaluate D(x, sigma) with sigma broadcast to a float64 [B] tensor."""
    return denoiser(x, torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device))


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step to sigma_next into a deterministic part to sigma_down plus noise sigma_up."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(
        sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def churn_gamma(sigma: float, n: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM (Karras et al. 2022, Alg. 2) churn factor gamma_i for a step at sigma."""
    if s_churn <= 0 or not s_tmin <= sigma <= s_tmax:
        return 0.0
    return min(s_churn / n, math.sqrt(2) - 1)


def noise_or_default(noise: Noise | None, x: Tensor) -> Noise:
    return default_noise(x) if noise is None else noise


def report(callback: Callable[[dict], None] | None, i: int, x: Tensor, sigma: float,
           sigma_next: float, denoised: Tensor, **extra) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next,
                  "denoised": denoised, **extra})
