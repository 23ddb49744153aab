"""Single-step probability-flow ODE samplers (with EDM churn where the paper has it) and DDIM."""

from __future__ import annotations

import math

from torch import Tensor

from sdlab.samplers import register
from sdlab.samplers.common import (
    ancestral_step,
    churn,
    churn_gamma,
    denoise,
    noise_or_default,
    report,
    sigma_list,
    steps,
    to_d,
)

INF = float("inf")


@register(paper="Karras et al. 2022, EDM Algorithm 2 (first order)", order=1, type="ODE",
          steps="single", nfe_per_step=1, stochastic_with={"s_churn": 1.0})
def euler(denoiser, x, sigmas, *, noise=None, callback=None, s_churn: float = 0.0,
          s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """Euler's method on the PF-ODE (Karras et al. 2022, Alg. 2 without the 2nd-order step)."""
    noise = noise_or_default(noise, x)
    n = len(sigmas) - 1
    for i, sigma, sigma_next in steps(sigmas):
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sigma, gamma, s_noise, noise)
        denoised = denoise(denoiser, x, sigma_hat)
        report(callback, i, x, sigma, sigma_next, denoised, sigma_hat=sigma_hat)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
        else:
            x = x + to_d(x, sigma_hat, denoised) * (sigma_next - sigma_hat)
    return x


@register(paper="Karras et al. 2022, EDM Algorithm 2", order=2, type="ODE", steps="single",
          nfe_per_step=2, stochastic_with={"s_churn": 1.0})
def heun(denoiser, x, sigmas, *, noise=None, callback=None, s_churn: float = 0.0,
         s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """Heun's 2nd-order method with EDM churn (Karras et al. 2022, Algorithm 2)."""
    noise = noise_or_default(noise, x)
    n = len(sigmas) - 1
    for i, sigma, sigma_next in steps(sigmas):
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sigma, gamma, s_noise, noise)
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


@register(paper="Lu et al. 2022, DPM-Solver (DPM-Solver-2 in sigma, Karras et al. 2022 form)",
          order=2, type="ODE", steps="single", nfe_per_step=2, stochastic_with={"s_churn": 1.0})
def dpm_2(denoiser, x, sigmas, *, noise=None, callback=None, s_churn: float = 0.0,
          s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-2: midpoint method with the midpoint taken in log sigma (Lu et al. 2022)."""
    noise = noise_or_default(noise, x)
    n = len(sigmas) - 1
    for i, sigma, sigma_next in steps(sigmas):
        gamma = churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sigma, gamma, s_noise, noise)
        denoised = denoise(denoiser, x, sigma_hat)
        report(callback, i, x, sigma, sigma_next, denoised, sigma_hat=sigma_hat)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        sigma_mid = math.sqrt(sigma_hat * sigma_next)  # geometric midpoint: r = 1/2 in t
        x_mid = x + to_d(x, sigma_hat, denoised) * (sigma_mid - sigma_hat)
        d_mid = to_d(x_mid, sigma_mid, denoise(denoiser, x_mid, sigma_mid))
        x = x + d_mid * (sigma_next - sigma_hat)  # full step with the midpoint slope
    return x


@register(paper="no paper: ComfyUI community sampler (Heun with a third, sigma-weighted stage)",
          order=1, type="ODE", steps="single", nfe_per_step=3)
def heunpp2(denoiser, x, sigmas, *, noise=None, callback=None) -> Tensor:
    """Heun++ (ComfyUI heunpp2, no paper): Euler slopes at three sigmas, sigma-weighted.

    The weights sigma_j / (k sigma_0) make it consistent but not second order: a heuristic.
    """
    s = sigma_list(sigmas)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # the last step lands exactly on the denoised estimate
            x = denoised
            continue
        d = to_d(x, sigma, denoised)
        x_2 = x + d * (sigma_next - sigma)  # Euler predictor to sigma_next
        ds, ws = [d, to_d(x_2, sigma_next, denoise(denoiser, x_2, sigma_next))], [sigma_next]
        if s[i + 2] > 0:  # a third stage one more step ahead, unless that is sigma = 0
            x_3 = x_2 + ds[1] * (s[i + 2] - sigma_next)
            ds.append(to_d(x_3, s[i + 2], denoise(denoiser, x_3, s[i + 2])))
            ws.append(s[i + 2])
        ws = [w / (len(ds) * s[0]) for w in ws]
        d_prime = (1 - sum(ws)) * ds[0] + sum(w * dj for w, dj in zip(ws, ds[1:], strict=True))
        x = x + d_prime * (sigma_next - sigma)
    return x


@register(paper="Song et al. 2021, DDIM (eq. 12, generalised process with eta)", order=1,
          type="ODE", steps="single", nfe_per_step=1, stochastic_with={"eta": 1.0})
def ddim(denoiser, x, sigmas, *, noise=None, callback=None, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) in VE form: x0 estimate plus a mix of eps and fresh noise.

    With eta = 0 it is Euler on the PF-ODE; eta = 1 is DDPM's ancestral posterior.
    """
    noise = noise_or_default(noise, x)
    for i, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        report(callback, i, x, sigma, sigma_next, denoised)
        if sigma_next == 0:  # alpha_prev = 1: the x0 estimate itself
            x = denoised
            continue
        eps = (x - denoised) / sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)  # sigma_t(eta) / alpha
        x = denoised + sigma_down * eps  # "direction pointing to x_t"
        if sigma_up > 0:
            x = x + sigma_up * noise(sigma, sigma_next)  # random noise term
    return x
