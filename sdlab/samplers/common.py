"""Maths shared by the samplers: derivatives, ancestral splits, multistep weights, step access."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def t_of(sigma: float) -> float:
    """Log-SNR time t = -log(sigma) (lambda of DPM-Solver for a VE model)."""
    return -math.log(sigma)


def sigma_of(t: float) -> float:
    """The inverse of `t_of`."""
    return math.exp(-t)


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


def churn(x: Tensor, sigma: float, gamma: float, s_noise: float, noise: Noise
          ) -> tuple[Tensor, float]:
    """EDM Alg. 2 lines 4-6: raise the noise level to sigma_hat = (1 + gamma) sigma."""
    sigma_hat = sigma * (1 + gamma)
    if gamma > 0:
        x = x + noise(sigma, sigma_hat) * s_noise * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat


def lagrange_weights(nodes: Sequence[float], a: float, b: float, rate: float = 0.0
                     ) -> list[float]:
    """w_j = int_a^b L_j(x) e^(rate (x - a)) dx for the Lagrange basis L_j through `nodes`.

    Exact; computed in s = (x - a) / (b - a), where the nodes of a multistep method sit at
    O(1) distances, so clustered or tiny steps lose no precision.
    """
    moments = [_exp_moment(k, rate * (b - a)) for k in range(len(nodes))]
    s_nodes = [(x - a) / (b - a) for x in nodes]
    weights = []
    for j, sj in enumerate(s_nodes):
        poly = [1.0]  # monomial coefficients in s, lowest first
        for m, sm in enumerate(s_nodes):
            if m != j:  # multiply by (s - sm) / (sj - sm)
                poly = [(lo - sm * c) / (sj - sm)
                        for c, lo in zip([*poly, 0.0], [0.0, *poly], strict=True)]
        weights.append((b - a) * sum(c * mk for c, mk in zip(poly, moments, strict=True)))
    return weights


def _exp_moment(k: int, H: float) -> float:
    """int_0^1 s^k e^(H s) ds: power series for small |H|, upward recurrence otherwise."""
    if abs(H) < 1:
        return sum(H**j / (math.factorial(j) * (k + j + 1)) for j in range(30))
    m = math.expm1(H) / H
    for i in range(1, k + 1):
        m = (math.exp(H) - i * m) / H
    return m


def exp_adams_coefficients(t_nodes: Sequence[float], h: float) -> list[float]:
    """Weights c_j with int_0^h e^-(h - tau) D(t + tau) dtau ~= sum_j c_j D_j, exactly for D
    a polynomial through the nodes t_j - t (newest first, t_nodes[0] = t = -log sigma).

    The exponential Adams-Bashforth quadrature behind DPM-Solver++ multistep and RES.
    """
    taus = [tj - t_nodes[0] for tj in t_nodes]
    return [math.exp(-h) * w for w in lagrange_weights(taus, 0.0, h, rate=1.0)]


def noise_or_default(noise: Noise | None, x: Tensor) -> Noise:
    return default_noise(x) if noise is None else noise


def report(callback: Callable[[dict], None] | None, i: int, x: Tensor, sigma: float,
           sigma_next: float, denoised: Tensor, **extra) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next,
                  "denoised": denoised, **extra})

