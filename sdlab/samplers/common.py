"""Maths shared by the samplers: derivatives, ancestral splits, phi functions, step access."""

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


def lagrange_integrals(nodes: Sequence[float], a: float, b: float,
                       weight: Callable[[list[float], float, float], float] | None = None
                       ) -> list[float]:
    """Integral over [a, b] of each Lagrange basis polynomial through `nodes` (exact).

    With `weight=None` the plain integral; otherwise `weight(poly, a, b)` integrates a
    polynomial given by its monomial coefficients (lowest first) against a weight.
    """
    integrate = weight or _poly_integral
    out = []
    for j, xj in enumerate(nodes):
        poly = [1.0]
        for m, xm in enumerate(nodes):
            if m != j:  # multiply by (x - xm) / (xj - xm)
                poly = [(c_lo - xm * c) / (xj - xm) for c, c_lo in
                        zip([*poly, 0.0], [0.0, *poly], strict=True)]
        out.append(integrate(poly, a, b))
    return out


def _poly_integral(poly: list[float], a: float, b: float) -> float:
    return sum(c * (b ** (k + 1) - a ** (k + 1)) / (k + 1) for k, c in enumerate(poly))


def exp_poly_integral(poly: list[float], a: float, b: float) -> float:
    """Integral over [a, b] of p(u) e^u for a polynomial p (monomial coefficients)."""
    def antiderivative(u: float) -> float:  # e^u sum_m (-1)^m p^(m)(u)
        total, deriv = 0.0, list(poly)
        for m in range(len(poly)):
            total += (-1) ** m * sum(c * u**k for k, c in enumerate(deriv))
            deriv = [k * c for k, c in enumerate(deriv)][1:]
        return math.exp(u) * total
    return antiderivative(b) - antiderivative(a)


def noise_or_default(noise: Noise | None, x: Tensor) -> Noise:
    return default_noise(x) if noise is None else noise


def report(callback: Callable[[dict], None] | None, i: int, x: Tensor, sigma: float,
           sigma_next: float, denoised: Tensor, **extra) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next,
                  "denoised": denoised, **extra})


def exp_adams_coefficients(t_nodes: Sequence[float], h: float) -> list[float]:
    """Weights c_j with int_0^h e^-(h - tau) D(t + tau) dtau ~= sum_j c_j D_j, exactly for D
    a polynomial through the nodes t_j - t (newest first, t_nodes[0] = t = -log sigma).

    The exponential Adams-Bashforth quadrature behind DPM-Solver++ multistep and RES.
    """
    taus = [tj - t_nodes[0] for tj in t_nodes]
    return [math.exp(-h) * c for c in lagrange_integrals(taus, 0.0, h, exp_poly_integral)]
