"""Noise schedules: pure functions `n -> sigmas` (float64, length n + 1, decreasing, last 0).

Sigma-space schedules take `sigma_min` and `sigma_max`; timestep-based schedules (the
diffusers spacings) take the model's discrete training sigmas instead. `build` hands each
schedule what it asks for, so callers never branch on the kind of schedule.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import scipy.stats
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


def sigmas_at_log(training_sigmas: Tensor, timesteps: Tensor) -> Tensor:
    """Training sigmas at fractional timesteps, interpolated linearly in log sigma.

    The model's own sigma(t) (k-diffusion, ComfyUI, sdlab denoisers); the diffusers
    spacings above interpolate sigma itself, as diffusers does.
    """
    return sigmas_at_timesteps(training_sigmas.to(torch.float64).log(), timesteps).exp()


@register(paper="ComfyUI 'simple': every (T/n)-th training sigma from the top", kind="timestep")
def simple(n: int, *, training_sigmas: Tensor) -> Tensor:
    """Training sigmas at indices T - 1 - floor(k T / n), k = 0..n-1."""
    T = len(training_sigmas)
    _check_steps(n, T)
    idx = torch.tensor([T - 1 - int(k * T / n) for k in range(n)])
    return append_zero(training_sigmas.to(torch.float64)[idx])


@register(paper="ComfyUI 'normal': timesteps uniform from T-1 to 0, sigma by log interpolation",
          kind="timestep")
def normal(n: int, *, training_sigmas: Tensor) -> Tensor:
    """Timesteps evenly spaced from T-1 down to 0 inclusive; sigma(t) log-interpolated."""
    T = len(training_sigmas)
    return append_zero(sigmas_at_log(training_sigmas,
                                     torch.linspace(T - 1, 0, n, dtype=torch.float64)))


@register(paper="ComfyUI 'sgm_uniform' (Stability generative-models discretization)",
          kind="timestep")
def sgm_uniform(n: int, *, training_sigmas: Tensor) -> Tensor:
    """n + 1 timesteps evenly spaced from T-1 to 0, the last (t = 0) dropped for the final 0."""
    T = len(training_sigmas)
    timesteps = torch.linspace(T - 1, 0, n + 1, dtype=torch.float64)[:-1]
    return append_zero(sigmas_at_log(training_sigmas, timesteps))


@register(paper="Song et al. 2021, DDIM (uniform skip tau_i = c i, ComfyUI 'ddim_uniform')",
          kind="timestep")
def ddim_uniform(n: int, *, training_sigmas: Tensor) -> Tensor:
    """Timesteps 1 + k (T // n), k = 0..n-1: DDIM's uniform subsequence (= leading, offset 1).

    ComfyUI walks the same stride while the index stays below T, which can add a step
    when T is not a multiple of n; here there are always exactly n.
    """
    T = len(training_sigmas)
    _check_steps(n, T)
    idx = 1 + torch.arange(n - 1, -1, -1) * (T // n)
    return append_zero(training_sigmas.to(torch.float64)[idx])


@register(paper="Lee et al. 2024, Beta Sampling is All You Need (ComfyUI 'beta', timesteps)",
          kind="timestep")
def beta(n: int, *, training_sigmas: Tensor, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Training sigmas at rounded Beta(alpha, beta) quantiles of the timesteps (ComfyUI variant).

    See `beta_sigma` for diffusers' variant, which places the quantiles in sigma instead.
    """
    T = len(training_sigmas) - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), alpha, beta) * T)
    if len(set(ts.tolist())) < n:
        raise ValueError(f"beta schedule repeats a timestep at {n} steps (alpha={alpha}, "
                         f"beta={beta}); use fewer steps or 'beta_sigma'")
    return append_zero(training_sigmas.to(torch.float64)[torch.from_numpy(ts).long()])


@register(paper="user-given sigmas or timesteps (config list)", kind="custom")
def custom(n: int, *, sigmas: list[float] | None = None, timesteps: list[float] | None = None,
           training_sigmas: Tensor | None = None) -> Tensor:
    """Exactly the given n sigmas (a final 0 may be included) or n training timesteps."""
    if (sigmas is None) == (timesteps is None):
        raise ValueError("custom schedule needs exactly one of 'sigmas' or 'timesteps'")
    if timesteps is not None:
        if training_sigmas is None:
            raise ValueError("custom timesteps need a discrete model; give 'sigmas' instead")
        values = sigmas_at_log(training_sigmas, torch.tensor(timesteps, dtype=torch.float64))
    else:
        values = torch.tensor(sigmas, dtype=torch.float64)
    values = values if values[-1] == 0 else append_zero(values)
    if len(values) != n + 1:
        raise ValueError(f"custom schedule has {len(values) - 1} steps but steps={n}")
    return values


def flux_shift(seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15,
               base_seq_len: int = 256, max_seq_len: int = 4096) -> float:
    """Resolution-dependent shift exp(mu), mu linear in the image token count (FLUX.1)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return math.exp(base_shift + slope * (seq_len - base_seq_len))


@register(paper="Esser et al. 2024, SD3 (timestep shift, Sec. 5.3.2); dynamic: FLUX.1",
          kind="transform")
def shift(n: int, *, sigma_min: float, sigma_max: float, training_sigmas: Tensor | None = None,
          base: str = "karras", shift: float = 3.0, seq_len: int | None = None,
          base_params: dict | None = None) -> Tensor:
    """Flow-matching shift t' = s t / (1 + (s - 1) t) of the `base` schedule's flow times.

    With sigma = t / (1 - t) the shift is sigma' = s sigma. With `seq_len` the shift is
    dynamic, s = flux_shift(seq_len), and `shift` is ignored.
    """
    s = flux_shift(seq_len) if seq_len is not None else shift
    if s <= 0:
        raise ValueError(f"shift must be > 0, got {s}")
    sigmas = build(base, n, sigma_min=sigma_min, sigma_max=sigma_max,
                   training_sigmas=training_sigmas, **(base_params or {}))
    return s * sigmas


@register(paper="Karras et al. 2022 (k-diffusion get_sigmas_polyexponential)", kind="sigma")
def polyexponential(n: int, *, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """Log sigma follows a polynomial ramp of power rho (rho = 1 is `exponential`)."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return append_zero((ramp * (math.log(sigma_max) - math.log(sigma_min))
                        + math.log(sigma_min)).exp())


@register(paper="Song et al. 2021, Score-Based Generative Modeling through SDEs (VP-SDE, eq. 33)",
          kind="sigma")
def vp(n: int, *, sigma_min: float, sigma_max: float, beta_d: float = 19.9,
       beta_min: float = 0.1) -> Tensor:
    """VP-SDE times: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t uniform.

    k-diffusion fixes t in [1e-3, 1] (sigma 0.01 to 152); here t spans exactly the
    model's [sigma_min, sigma_max], t(sigma) being the positive root of the quadratic.
    """
    def t_of(sigma: float) -> float:
        return (math.sqrt(beta_min**2 + 2 * beta_d * math.log1p(sigma**2)) - beta_min) / beta_d
    t = torch.linspace(t_of(sigma_max), t_of(sigma_min), n, dtype=torch.float64)
    return append_zero(torch.expm1(beta_d * t**2 / 2 + beta_min * t).sqrt())


@register(paper="Lu et al. 2022, DPM-Solver (time uniform in lambda = log-SNR / 2)",
          kind="sigma")
def logsnr_uniform(n: int, *, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in lambda = -log sigma, the half log-SNR: in VE form the same as `exponential`."""
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), n, dtype=torch.float64)
    return append_zero((-lam).exp())


@register(paper="Sabour et al. 2024, Align Your Steps (KL-optimal schedule, App. / ComfyUI)",
          kind="sigma")
def kl_optimal(n: int, *, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in arctan(sigma), optimal for a point-mass data distribution."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return append_zero(torch.tan(ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)))


@register(paper="Beta sigmas as in diffusers use_beta_sigmas (after Lee et al. 2024)",
          kind="sigma")
def beta_sigma(n: int, *, sigma_min: float, sigma_max: float, alpha: float = 0.6,
               beta: float = 0.6) -> Tensor:
    """Sigma linear in the Beta(alpha, beta) quantiles of a uniform grid (diffusers' variant)."""
    ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return append_zero(torch.from_numpy(sigma_min + ppf * (sigma_max - sigma_min)))


@register(paper="Polyak et al. 2024, Movie Gen (linear-quadratic t schedule, ComfyUI form)",
          kind="flow")
def linear_quadratic(n: int, *, sigma_max: float, threshold_noise: float = 0.025,
                     linear_steps: int | None = None) -> Tensor:
    """Flow time t falls linearly to threshold_noise for half the steps, then quadratically.

    As ComfyUI, sigma = t * sigma_max, so the last nonzero sigma is not the model's minimum.
    """
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    k = n // 2 if linear_steps is None else linear_steps
    m = n - k  # quadratic steps, continuing the linear part with matching slope at step k
    diff = k - threshold_noise * n
    quad, lin = diff / (k * m**2), threshold_noise / k - 2 * diff / m**2
    i = torch.arange(n, dtype=torch.float64)
    t = torch.where(i < k, i * threshold_noise / k, quad * i**2 + lin * i + quad * k**2)
    return append_zero((1 - t) * sigma_max)


# Align Your Steps 10-step noise levels (Sabour et al. 2024, project page / Table).
AYS_LEVELS = {
    "sd15": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177,
             1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662,
             0.0291671582],
    "sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945,
             0.8620721141, 0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177,
             0.0291671582],
}


@register(paper="Sabour et al. 2024, Align Your Steps (optimised 10-step tables)", kind="table")
def ays(n: int, *, model: str = "sd15") -> Tensor:
    """Align Your Steps levels for SD1.5 or SDXL, log-linearly interpolated to n + 1 levels.

    As ComfyUI, the last level is replaced by 0, so 10 steps are the published table's
    first ten levels followed by 0 (the published schedule also evaluates at sigma_min).
    """
    if model not in AYS_LEVELS:
        raise ValueError(f"ays has tables for {sorted(AYS_LEVELS)}, not {model!r}")
    levels = np.log(np.array(AYS_LEVELS[model][::-1]))
    sigmas = np.exp(np.interp(np.linspace(0, 1, n + 1), np.linspace(0, 1, len(levels)), levels))
    return torch.from_numpy(sigmas[::-1].copy()).index_fill(0, torch.tensor([n]), 0.0)


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
    if "training_sigmas" in wants and training_sigmas is not None:
        params["training_sigmas"] = training_sigmas
    elif "training_sigmas" in wants and wants["training_sigmas"].default is inspect.Parameter.empty:
        raise ValueError(
            f"schedule {getattr(fn, '__name__', fn)!r} spaces the training timesteps of a "
            "discrete model; this model has none: use a sigma schedule such as 'karras'"
        )
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
