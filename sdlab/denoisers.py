"""Denoisers: the one model interface samplers see, `D(x, sigma, **cond) -> x0` in VE space.

`x = x0 + sigma * eps`; `sigma` is a float64 tensor of shape [B]. Wrappers here own every
conversion between a network's parameterisation and this interface; samplers never see
timesteps, alphas or prediction types.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class Denoiser:
    """Base class: counts every evaluation in `nfe` and exposes the model's sigma range.

    Discrete models also expose their training `sigmas` (ascending, one per timestep).
    """

    sigma_min: float
    sigma_max: float
    sigmas: Tensor | None = None

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        self.calls += 1
        return self.denoise(x, sigma, **cond)

    def denoise(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        raise NotImplementedError

    @property
    def nfe(self) -> int:
        """Network forward passes made so far."""
        return self.calls

    def reset_nfe(self) -> None:
        self.calls = 0

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional training timestep of each sigma: linear interpolation in log-sigma."""
        log_sigmas = self._log_sigmas(sigma.device)
        log_sigma = sigma.to(torch.float64).clamp(min=1e-10).log()
        low = torch.searchsorted(log_sigmas, log_sigma, right=True) - 1
        low = low.clamp(0, len(log_sigmas) - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        return low + ((log_sigma - lo) / (hi - lo)).clamp(0, 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Sigma at a fractional training timestep: the inverse of `sigma_to_t`."""
        t = torch.as_tensor(t)
        log_sigmas = self._log_sigmas(t.device)
        t = t.to(torch.float64).clamp(0, len(log_sigmas) - 1)
        low = t.floor().long().clamp(max=len(log_sigmas) - 2)
        w = t - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()

    def _log_sigmas(self, device: torch.device) -> Tensor:
        """log of the training sigmas in float64 on `device` (where the sigmas asked about are)."""
        if self.sigmas is None:
            raise ValueError(f"{type(self).__name__} is not a discrete model: it has no "
                             "training timesteps")
        cache = getattr(self, "_log_sigmas_cache", None)
        if cache is None or cache[0] is not self.sigmas:
            cache = (self.sigmas, {})
            self._log_sigmas_cache = cache
        if device not in cache[1]:
            cache[1][device] = self.sigmas.to(device, torch.float64).log()
        return cache[1][device]


class DenoiserWrapper(Denoiser):
    """A denoiser built on another: sigma range, training sigmas and nfe come from `inner`."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__()
        self.inner = inner
        self.sigma_min, self.sigma_max = inner.sigma_min, inner.sigma_max
        self.sigmas = inner.sigmas

    @property
    def nfe(self) -> int:
        return self.inner.nfe

    def reset_nfe(self) -> None:
        super().reset_nfe()
        self.inner.reset_nfe()


class Conditioned(DenoiserWrapper):
    """Binds conditioning keyword arguments so samplers can call `D(x, sigma)`."""

    def __init__(self, inner: Denoiser, **cond) -> None:
        super().__init__(inner)
        self.cond = cond

    def denoise(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        return self.inner(x, sigma, **self.cond, **cond)


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's 'scaled_linear' betas, as cumulative alphas (float64)."""
    betas = torch.linspace(
        beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64
    ) ** 2
    return torch.cumprod(1 - betas, dim=0)


class DiscreteModel:
    """What a discrete DDPM network is: `model(x_in, t, **cond)` plus its training schedule.

    `x_in` is the VP-scaled input `x / sqrt(sigma^2 + 1)` and `t` a (possibly fractional)
    timestep; the output is an `epsilon`, `v_prediction` or `sample` prediction.
    """

    alphas_cumprod: Tensor
    prediction_type: str

    def __call__(self, x_in: Tensor, t: Tensor, **cond) -> Tensor:
        raise NotImplementedError


class DiscreteDDPMDenoiser(Denoiser):
    """VE denoiser over a discrete DDPM/VP network (SD 1.x/2.x/XL U-Nets and the like).

    `c_in = 1/sqrt(sigma^2+1)`; sigma -> t by linear interpolation in log-sigma over the
    training sigmas, as k-diffusion and diffusers do.
    """

    def __init__(self, model: Callable[..., Tensor], alphas_cumprod: Tensor,
                 prediction_type: str = "epsilon") -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}"
            )
        self.model = model
        self.prediction_type = prediction_type
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def denoise(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        shape = (-1,) + (1,) * (x.ndim - 1)
        s = sigma.to(torch.float64).reshape(shape)
        c_in = 1 / (s**2 + 1).sqrt()
        t = self.sigma_to_t(sigma).to(x.device)
        out = self.model((x * c_in.to(x)), t, **cond)
        if self.prediction_type == "epsilon":
            return x - s.to(x) * out
        if self.prediction_type == "v_prediction":
            # x_in = a x0 + b eps, v = a eps - b x0  =>  x0 = a x_in - b v
            return x * (c_in**2).to(x) - (s * c_in).to(x) * out
        return out


def discrete_output(x0: Tensor, x: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """What a discrete network of `prediction_type` outputs, given the VE `x`, sigma and x0.

    The inverse of `DiscreteDDPMDenoiser`'s conversion: used to present an exact denoiser
    (the analytic model) as a discrete network, and by the diffusers bridge.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    s = sigma.to(torch.float64).reshape(shape)
    eps = (x - x0) / s.to(x)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        c_in = 1 / (s**2 + 1).sqrt()
        return c_in.to(x) * eps - (s * c_in).to(x) * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}")


def vp_scale(sigma: float) -> float:
    """The factor 1/sqrt(sigma^2 + 1) between VE and VP coordinates."""
    return 1 / math.sqrt(sigma**2 + 1)
