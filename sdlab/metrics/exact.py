"""Exact metrics on the analytic Gaussian mixture, where the truth is known.

- `rmse_ode`: root-mean-square error of each final sample against the exact probability-flow
  ODE solution from the same initial noise (`GaussianMixture.reference_sample` over the
  model's sigma range), averaged over images. It measures sampler error alone.
- `fd_exact`: Frechet distance between the generated samples' mean/covariance and the
  mixture's exact mean/covariance. It measures distribution error, including the finite-N
  sampling floor, which shrinks like 1/N: compare points at equal N.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdlab.metrics import Metric, bootstrap_indices, percentile_interval


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), via the symmetric form of the root."""
    s1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(s1 @ cov2 @ s1)
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross.trace())


def _sqrtm_psd(a: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


class ODEError(Metric):
    """RMSE of final samples against the exact PF-ODE solution from the same noise."""

    def __init__(self, model: Any, **_: Any) -> None:
        self.model = model
        self.errors: list[Tensor] = []

    def update(self, batch: Any) -> None:
        gmm = self.model.gmm
        d = self.model.denoiser()
        ref = gmm.reference_sample(batch.noise.to(torch.float64) * d.sigma_max, d.sigma_max,
                                   d.sigma_min)
        diff = batch.latents.to(torch.float64) - ref
        self.errors.append(diff.flatten(1).square().mean(1))

    def compute(self) -> dict[str, float]:
        return {"rmse_ode": float(torch.cat(self.errors).mean().sqrt())}

    def intervals(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0
                  ) -> dict[str, tuple[float, float]]:
        mse = torch.cat(self.errors)
        boot = mse[bootstrap_indices(len(mse), n_boot, seed)].mean(1).sqrt()
        return {"rmse_ode": percentile_interval(boot, level)}

    def fingerprint(self) -> dict[str, Any]:
        return {"rmse_ode": "exact PF-ODE (DOP853, rtol=atol=1e-10) over the model sigma range"}


class MixtureFD(Metric):
    """Frechet distance of the generated samples' moments to the mixture's exact moments."""

    def __init__(self, model: Any, **_: Any) -> None:
        self.model = model
        self.samples: list[Tensor] = []

    def update(self, batch: Any) -> None:
        self.samples.append(batch.latents.to(torch.float64).flatten(1))

    def _fd(self, x: Tensor) -> float:
        mu, cov = self.model.gmm.moments()
        return frechet_distance(x.mean(0), torch.cov(x.T), mu, cov)

    def compute(self) -> dict[str, float]:
        return {"fd_exact": self._fd(torch.cat(self.samples))}

    def intervals(self, level: float = 0.95, n_boot: int = 200, seed: int = 0
                  ) -> dict[str, tuple[float, float]]:
        x = torch.cat(self.samples)
        boot = torch.tensor([self._fd(x[i]) for i in bootstrap_indices(len(x), n_boot, seed)])
        return {"fd_exact": percentile_interval(boot, level)}

    def fingerprint(self) -> dict[str, Any]:
        return {"fd_exact": "Frechet distance to the exact mixture moments, float64"}
