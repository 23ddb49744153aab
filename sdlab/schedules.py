"""Noise schedules: pure functions `n -> sigmas` (float64, length n + 1, decreasing, last 0).

Sigma-space schedules take `sigma_min` and `sigma_max`; timestep-based schedules (the
diffusers spacings) take the model's discrete training sigmas instead. `build` hands each
schedule what it asks for, so callers never branch on the kind of schedule.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

from sdlab.registry import Registry

registry = Registry("schedule")
register = registry.register
get = registry.get
names = registry.names


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@register(paper="Karras et al. 2022, Elucidating the Design Space (eq. 5)", kind="sigma")
def karras(n: int, *, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) schedule: uniform in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


@register(paper="k-diffusion get_sigmas_exponential", kind="sigma")
def exponential(n: int, *, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log sigma (geometric spacing)."""
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return append_zero(log_sigmas.exp())


def sigmas_at_timesteps(training_sigmas: Tensor, timesteps: Tensor) -> Tensor:
    """Training sigmas at (possibly fractional) timesteps, interpolated linearly in t."""
    training_sigmas = training_sigmas.to(torch.float64)
    timesteps = timesteps.to(torch.float64).clamp(0, len(training_sigmas) - 1)
    low = timesteps.floor().long().clamp(max=len(training_sigmas) - 2)
    w = timesteps - low
    return (1 - w) * training_sigmas[low] + w * training_sigmas[low + 1]


def _check_steps(n: int, num_train: int) -> None:
    if n > num_train:
        raise ValueError(f"{n} steps exceed the model's {num_train} training timesteps")


@register(paper="DDPM / diffusers timestep_spacing='linspace'", kind="timestep")
def linspace(n: int, *, training_sigmas: Tensor) -> Tensor:
    """Timesteps evenly spaced from T-1 to 0 (fractional), as diffusers 'linspace'."""
    T = len(training_sigmas)
    _check_steps(n, T)
    timesteps = torch.linspace(T - 1, 0, n, dtype=torch.float64)
    return append_zero(sigmas_at_timesteps(training_sigmas, timesteps))


@register(paper="Lin et al. 2024, Common Diffusion Noise Schedules are Flawed (Table 2)",
          kind="timestep")
def leading(n: int, *, training_sigmas: Tensor, steps_offset: int = 1) -> Tensor:
    """Integer timesteps k*(T//n) + offset, as diffusers 'leading' (SD's default)."""
    T = len(training_sigmas)
    _check_steps(n, T)
    timesteps = (torch.arange(n, dtype=torch.float64) * (T // n)).round().flip(0) + steps_offset
    return append_zero(sigmas_at_timesteps(training_sigmas, timesteps))


@register(paper="Lin et al. 2024, Common Diffusion Noise Schedules are Flawed (Table 2)",
          kind="timestep")
def trailing(n: int, *, training_sigmas: Tensor) -> Tensor:
    """Integer timesteps counted down from T in strides of T/n, as diffusers 'trailing'."""
    T = len(training_sigmas)
    _check_steps(n, T)
    timesteps = torch.arange(T, 0, -T / n, dtype=torch.float64).round() - 1
    return append_zero(sigmas_at_timesteps(training_sigmas, timesteps))


def build(schedule: str | Callable[..., Tensor], n: int, *, sigma_min: float, sigma_max: float,
          training_sigmas: Tensor | None = None, **params) -> Tensor:
    """Sigmas of `schedule` (a registered name or any schedule function) for `n` steps.

    A schedule whose signature takes `training_sigmas` gets the model's discrete training
    sigmas; any other gets the model's `sigma_min` and `sigma_max`.
    """
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    fn = registry.get(schedule) if isinstance(schedule, str) else schedule
    wants = inspect.signature(fn).parameters
    if "training_sigmas" in wants:
        if training_sigmas is None:
            raise ValueError(
                f"schedule {getattr(fn, '__name__', fn)!r} spaces the training timesteps of a "
                "discrete model; this model has none: use a sigma schedule such as 'karras'"
            )
        params["training_sigmas"] = training_sigmas
    if "sigma_min" in wants:
        params.setdefault("sigma_min", sigma_min)
    if "sigma_max" in wants:
        params.setdefault("sigma_max", sigma_max)
    sigmas = fn(n, **params)
    check(sigmas, n)
    return sigmas


def check(sigmas: Tensor, n: int | None = None) -> None:
    """The structural rules of a schedule: float64, n + 1 long, strictly decreasing, ends at 0."""
    if sigmas.dtype != torch.float64 or sigmas.ndim != 1:
        raise ValueError("a schedule must be a 1-D float64 tensor")
    if n is not None and len(sigmas) != n + 1:
        raise ValueError(f"schedule has {len(sigmas)} sigmas, expected {n + 1}")
    if sigmas[-1] != 0 or not bool((sigmas[:-1] > sigmas[1:]).all()):
        raise ValueError(f"schedule must be strictly decreasing and end at 0, got {sigmas}")
