"""Classifier-free guidance as a denoiser wrapper, with pluggable guidance rules.

The conditional and unconditional branches go through the network in one batched forward
(counted once in nfe). A rule decides, per step, whether the unconditional branch is needed
and how the two predictions combine; rules live in a registry (`configs/guidance/`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from sdlab.denoisers import Denoiser, DenoiserWrapper
from sdlab.registry import Registry

registry = Registry("guidance rule")
register = registry.register
names = registry.names


class GuidanceRule:
    """Plain CFG: D = D_u + w (D_c - D_u) (Ho & Salimans 2022). `scale == 1` skips D_u.

    A rule whose `active` or `combine` reads the noise level sets `needs_sigma = True`; the
    others get `sigma=None` when sigma lives on an accelerator, because reading it back would
    make the host wait for the device at every step.
    """

    needs_sigma = False

    def __init__(self, scale: float = 1.0) -> None:
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.scale = float(scale)

    def active(self, sigma: float | None) -> bool:
        """Whether the unconditional branch is evaluated at this noise level."""
        return self.scale != 1.0

    def combine(self, cond: Tensor, uncond: Tensor, sigma: float | None) -> Tensor:
        return uncond + self.scale * (cond - uncond)

    def describe(self) -> dict[str, Any]:
        return {"rule": type(self).__name__, "scale": self.scale}


register("cfg", paper="Ho & Salimans 2022, Classifier-Free Diffusion Guidance")(GuidanceRule)


@register("cfg_rescale", paper="Lin et al. 2024, Common Diffusion Noise Schedules are Flawed "
          "(Sec. 3.4, eq. 15-16)")
class RescaledCFG(GuidanceRule):
    """CFG whose result is rescaled toward the conditional prediction's std by phi."""

    def __init__(self, scale: float = 1.0, phi: float = 0.7) -> None:
        super().__init__(scale)
        if not 0 <= phi <= 1:
            raise ValueError(f"cfg_rescale phi must be in [0, 1], got {phi}")
        self.phi = float(phi)

    def combine(self, cond: Tensor, uncond: Tensor, sigma: float | None) -> Tensor:
        cfg = super().combine(cond, uncond, sigma)
        dims = tuple(range(1, cond.ndim))
        rescaled = cfg * (cond.std(dim=dims, keepdim=True) / cfg.std(dim=dims, keepdim=True))
        return self.phi * rescaled + (1 - self.phi) * cfg

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "phi": self.phi}


@register("interval", paper="Kynkaanniemi et al. 2024, Applying Guidance in a Limited Interval "
          "Improves Sample and Distribution Quality")
class IntervalCFG(GuidanceRule):
    """CFG only for sigma_lo < sigma <= sigma_hi; elsewhere the conditional branch alone."""

    needs_sigma = True

    def __init__(self, scale: float = 1.0, sigma_lo: float = 0.28,
                 sigma_hi: float = 5.42) -> None:
        super().__init__(scale)
        if not 0 <= sigma_lo < sigma_hi:
            raise ValueError(f"guidance interval needs 0 <= sigma_lo < sigma_hi, "
                             f"got ({sigma_lo}, {sigma_hi})")
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)

    def active(self, sigma: float) -> bool:
        return super().active(sigma) and self.sigma_lo < sigma <= self.sigma_hi

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sigma_lo": self.sigma_lo, "sigma_hi": self.sigma_hi}


def _cat(a: Any, b: Any) -> Any:
    """Concatenate two conditioning structures (tensors, dicts of them) along the batch."""
    if isinstance(a, Tensor):
        return torch.cat([a, b])
    if isinstance(a, Mapping):
        return {k: _cat(a[k], b[k]) for k in a}
    return a


class CFGDenoiser(DenoiserWrapper):
    """Guided denoiser: one batched forward over [uncond, cond] when the rule needs both.

    After each call, `last_cond` and `last_uncond` hold the two branch predictions
    (`last_uncond` is None when the branch was skipped), for samplers such as CFG++ that
    need them. `uncond_evals` counts forwards that carried the unconditional branch.
    """

    def __init__(self, inner: Denoiser, rule: GuidanceRule, cond: Mapping[str, Any],
                 uncond: Mapping[str, Any]) -> None:
        super().__init__(inner)
        self.rule, self.cond, self.uncond = rule, dict(cond), dict(uncond)
        self.both = _cat(self.uncond, self.cond)  # the batched conditioning, built once
        self.uncond_evals = 0
        self.last_cond: Tensor | None = None
        self.last_uncond: Tensor | None = None

    def denoise(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        read = self.rule.needs_sigma or sigma.device.type == "cpu"
        s = float(sigma[0]) if read else None  # float() of a device tensor waits for the device
        if not self.rule.active(s):
            self.last_cond, self.last_uncond = self.inner(x, sigma, **self.cond), None
            return self.last_cond
        self.uncond_evals += 1
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), **self.both)
        self.last_uncond, self.last_cond = both.chunk(2)
        return self.rule.combine(self.last_cond, self.last_uncond, s)

    def reset_nfe(self) -> None:
        super().reset_nfe()
        self.uncond_evals = 0
