"""Multistep probability-flow ODE samplers: one model evaluation per step plus a history."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sdlab.samplers import register
from sdlab.samplers.common import (
    denoise,
    exp_adams_coefficients,
    lagrange_weights,
    report,
    sigma_list,
    steps,
    t_of,
    to_d,
)

# Adams-Bashforth weights for equal steps, newest derivative first (iPNDM, Zhang & Chen 2023).
ADAMS_BASHFORTH = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
                   4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _check_order(name: str, order: int, orders: range) -> None:
    if order not in orders:
        raise ValueError(f"{name} order must be in {orders.start}..{orders.stop - 1}, got {order}")


@register(paper="Karras et al. 2022 (k-diffusion LMS): linear multistep in sigma", order=4,
          type="ODE", steps="multi", nfe_per_step=1)
def lms(denoiser, x, sigmas, *, noise=None, callback=None, order: int = 4) -> Tensor:
    """Linear multistep (k-diffusion LMS): variable-step Adams-Bashforth in sigma, order <= 4."""
    _check_order("lms", order, range(1, 5))
    s, ds = sigma_list(sigmas), []
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        ds = [to_d(x, sigma, denoised), *ds][:order]
        # integrate the Lagrange polynomial through the last derivatives over [sigma, sigma_next]
        coeffs = lagrange_weights(s[i::-1][:len(ds)], sigma, sigma_next)
        x = x + sum(c * d for c, d in zip(coeffs, ds, strict=True))
    return x


@register(paper="Zhang & Chen 2023, DEIS (iPNDM, Sec. 4 / App.)", order=4, type="ODE",
          steps="multi", nfe_per_step=1)
def ipndm(denoiser, x, sigmas, *, noise=None, callback=None, order: int = 4) -> Tensor:
    """iPNDM (Zhang & Chen 2023, DEIS App.): Adams-Bashforth with equal-step weights in sigma.

    The weights assume equal steps, so on a non-uniform schedule the method is only as
    accurate as the steps are locally even; see ipndm_v for the variable-step version.
    """
    _check_order("ipndm", order, range(1, 5))
    ds = []
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        ds = [to_d(x, sigma, denoised), *ds][:order]
        x = x + (sigma_next - sigma) * sum(  # lower order while the history fills
            w * d for w, d in zip(ADAMS_BASHFORTH[len(ds)], ds, strict=True))
    return x


@register(paper="Zhang & Chen 2023, DEIS (iPNDM with variable step weights)", order=4,
          type="ODE", steps="multi", nfe_per_step=1)
def ipndm_v(denoiser, x, sigmas, *, noise=None, callback=None, order: int = 4) -> Tensor:
    """iPNDM with variable-step weights (Zhang & Chen 2023): Adams-Bashforth in sigma.

    The variable-step weights are the integrals of the Lagrange basis through the past
    sigmas, so this is the same method as `lms` (same order cap of 4).
    """
    return lms(denoiser, x, sigmas, noise=noise, callback=callback, order=order)


@register(paper="Zhang & Chen 2023, DEIS (tAB-DEIS, polynomial in log sigma)", order=3,
          type="ODE", steps="multi", nfe_per_step=1)
def deis(denoiser, x, sigmas, *, noise=None, callback=None, order: int = 3) -> Tensor:
    """DEIS tAB (Zhang & Chen 2023): eps as a polynomial in log sigma, integrated over sigma."""
    _check_order("deis", order, range(1, 4))
    s, eps = sigma_list(sigmas), []
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        eps = [to_d(x, sigma, denoised), *eps][:order]
        # dx/dsigma = eps: int over u = log sigma of L_j(u) e^u du for each past eps
        nodes = [math.log(sj) for sj in s[i::-1][:len(eps)]]
        coeffs = lagrange_weights(nodes, math.log(sigma), math.log(sigma_next), rate=1.0)
        x = x + sigma * sum(c * e for c, e in zip(coeffs, eps, strict=True))
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
        h = t_of(sigma_next) - t_of(sigma)
        if old_denoised is None:  # first step: DPM-Solver++(1), i.e. DDIM
            denoised_d = denoised
        else:  # second-order correction from the previous data prediction
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
        old_denoised, h_last = denoised, h
    return x


def _exp_adams(denoiser, x, sigmas, callback, order: int) -> Tensor:
    """Exponential Adams-Bashforth on the data-prediction ODE dx/dt = D - x, t = -log sigma."""
    hist, t_hist = [], []
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        hist, t_hist = [denoised, *hist][:order], [t_of(sigma), *t_hist][:order]
        h = t_of(sigma_next) - t_of(sigma)
        # x(t + h) = e^-h x(t) + int_0^h e^-(h - tau) D(t + tau) dtau, D through the history
        coeffs = exp_adams_coefficients(t_hist, h)
        x = math.exp(-h) * x + sum(c * d for c, d in zip(coeffs, hist, strict=True))
    return x


@register(paper="Lu et al. 2022, DPM-Solver++ (3M multistep, App. / k-diffusion dpmpp_3m_sde "
          "with eta = 0)", order=3, type="ODE", steps="multi", nfe_per_step=1)
def dpmpp_3m(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022): quadratic data prediction, integrated exactly in t.

    The second-difference term gets its exact weight; the paper's closed form (also in
    diffusers and k-diffusion) weighs it by half, which leaves an O(h^3) local error, so
    theirs converges at order 2 and this one at order 3 (reports/convergence_orders).
    """
    return _exp_adams(denoiser, x, sigmas, callback, order=3)


@register(paper="Zhang et al. 2023, Improved Order Analysis of Exponential Integrators (RES "
          "multistep)", order=2, type="ODE", steps="multi", nfe_per_step=1)
def res_multistep(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """RES multistep (Zhang et al. 2023): exponential Adams-Bashforth 2, phi_1/phi_2 weights."""
    return _exp_adams(denoiser, x, sigmas, callback, order=2)


def _uni_bh(x: Tensor, hist: list[Tensor], t_hist: list[float], t_next: float, variant: str,
            denoised_next: Tensor | None = None) -> Tensor:
    """One UniP (denoised_next None) or UniC update from t_hist[0] to t_next (Zhao et al. 2023).

    `hist` holds the data predictions at `t_hist`, newest first; its length is the order.
    """
    p, (t0, d0) = len(hist), (t_hist[0], hist[0])
    h = t_next - t0
    rks = [(tk - t0) / h for tk in t_hist[1:]] + [1.0]
    d1s = [(dk - d0) / rk for dk, rk in zip(hist[1:], rks, strict=False)]
    b_h = -h if variant == "bh1" else math.expm1(-h)  # B(h) of the two published variants
    # b_k = k! (-h) phi_{k+1}(-h) / B(h): right-hand side of the order conditions
    b, h_phi_k, factorial = [], math.expm1(-h) / -h - 1, 1
    for k in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / -h - 1 / factorial
    R = torch.tensor([[rk ** (k - 1) for rk in rks] for k in range(1, p + 1)], dtype=torch.float64)
    b = torch.tensor(b, dtype=torch.float64)
    if denoised_next is None:  # UniP-p: p - 1 differences; order 2 uses the paper's rho = 1/2
        rhos = [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
    else:  # UniC-p: the new prediction joins as the difference at r = 1
        rhos = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
        d1s = d1s + [denoised_next - d0]
    x_next = math.exp(-h) * x - math.expm1(-h) * d0  # DPM-Solver++(1) base
    return x_next - b_h * sum((r * d for r, d in zip(rhos, d1s, strict=True)),
                              torch.zeros_like(x))


@register(paper="Zhao et al. 2023, UniPC (UniP-p + UniC-p, Algorithms 1-3, data prediction)",
          order=3, type="ODE", steps="multi", nfe_per_step=1)
def unipc(denoiser, x, sigmas, *, noise=None, callback=None, order: int = 2,
          variant: str = "bh2", corrector: bool = True) -> Tensor:
    """UniPC (Zhao et al. 2023, Alg. 1-3): UniP-p predictor, UniC corrector at no extra nfe."""
    _check_order("unipc", order, range(1, 4))
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    hist, t_hist, last = [], [], None
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if last is not None and corrector:  # UniC: redo the last step using D at its end
            x = _uni_bh(*last, t_of(sigma), variant, denoised)
        hist, t_hist = [denoised, *hist][:order], [t_of(sigma), *t_hist][:order]
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        last = (x, hist, t_hist)  # warm-up: the order grows with the history
        x = _uni_bh(x, hist, t_hist, t_of(sigma_next), variant)
    return x
