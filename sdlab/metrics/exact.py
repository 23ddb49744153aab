"""Exact metrics on the analytic Gaussian mixture, where the truth is known.

- `rmse_ode`: root-mean-square error of each final sample against the exact probability-flow
  ODE solution from the same initial noise (`GaussianMixture.reference_sample` over the
  model's sigma range), averaged over images. It measures sampler error alone.
- `fd_exact`: Frechet distance between the generated samples' mean/covariance and the
  mixture's exact mean/covariance. It sees only the first two moments and has a finite-N
  floor that shrinks like 1/N: compare points at equal N.
- `mmd_exact`: squared MMD between the generated samples q and the true mixture p under the
  Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 l^2)), with l^2 = tr Cov_p fixed by the
  model. The kernel is characteristic, so MMD^2 = 0 only when q = p (all moments, all modes).
  Both p-terms are exact, not sampled: for a Gaussian kernel and a Gaussian mixture,
  E_{y~p} k(x, y) = (2 pi l^2)^(d/2) p_l(x), with p_l the mixture convolved with N(0, l^2 I)
  (`GaussianMixture.log_prob(x, sigma=l)`), and E_{x,y~p} k = sum_jk w_j w_k (2 pi l^2)^(d/2)
  N(mu_j - mu_k; 0, S_j + S_k + l^2 I). With the q-q term as a U-statistic the estimate is
  unbiased for MMD^2(q, p): it has no finite-N floor (it scatters around 0 for a perfect
  sampler, so it can be slightly negative).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sdlab.metrics import Metric
from sdlab.metrics.stats import fd_replicates, frechet_distance, kernel_quadratic, rbf_kernel

__all__ = ["MixtureFD", "MixtureMMD", "ODEError", "frechet_distance"]


class ODEError(Metric):
    """RMSE of final samples against the exact PF-ODE solution from the same noise."""

    def __init__(self, model: Any, **_: Any) -> None:
        self.model = model
        self.errors: list[Tensor] = []
        self.image_ids: list[int] = []

    def update(self, batch: Any) -> None:
        gmm = self.model.gmm
        d = self.model.denoiser()
        ref = gmm.reference_sample(batch.noise.to(torch.float64) * d.sigma_max, d.sigma_max,
                                   d.sigma_min)
        diff = batch.latents.to(torch.float64) - ref
        self.errors.append(diff.flatten(1).square().mean(1))
        self.image_ids += list(batch.indices)

    def compute(self) -> dict[str, float]:
        return {"rmse_ode": float(torch.cat(self.errors).mean().sqrt())}

    def replicates(self, counts: Tensor) -> dict[str, Tensor]:
        mse = torch.cat(self.errors)
        return {"rmse_ode": (counts @ mse / len(mse)).sqrt()}

    def fingerprint(self) -> dict[str, Any]:
        return {"rmse_ode": "exact PF-ODE (DOP853, rtol=atol=1e-10) over the model sigma range"}


class _Samples(Metric):
    """Keeps the generated samples, flattened, in float64."""

    def __init__(self, model: Any, **_: Any) -> None:
        self.model = model
        self.samples: list[Tensor] = []
        self.image_ids: list[int] = []

    def update(self, batch: Any) -> None:
        self.samples.append(batch.latents.to(torch.float64).flatten(1))
        self.image_ids += list(batch.indices)

    def compute(self) -> dict[str, float]:
        x = torch.cat(self.samples)
        return {k: float(v[0]) for k, v in self.replicates(torch.ones(1, len(x))).items()}


class MixtureFD(_Samples):
    """Frechet distance of the generated samples' moments to the mixture's exact moments."""

    def replicates(self, counts: Tensor) -> dict[str, Tensor]:
        mu, cov = self.model.gmm.moments()
        return {"fd_exact": fd_replicates(torch.cat(self.samples), counts, mu, cov)}

    def intervals(self, level: float = 0.95, n_boot: int = 200, seed: int = 0
                  ) -> dict[str, tuple[float, float]]:
        return super().intervals(level, n_boot, seed)

    def fingerprint(self) -> dict[str, Any]:
        return {"fd_exact": "Frechet distance to the exact mixture moments, float64"}


def mixture_kernel_means(gmm: Any, x: Tensor, lengthscale: float) -> tuple[Tensor, float]:
    """E_{y~p} k(x_i, y) for each row of `x`, and E_{x,y~p} k(x, y), for the Gaussian kernel."""
    d, l2 = gmm.dim, lengthscale**2
    log_norm = 0.5 * d * math.log(2 * math.pi * l2)
    k_xp = (gmm.log_prob(x, sigma=lengthscale) + log_norm).exp()
    covs = torch.einsum("kde,ke,kfe->kdf", gmm.eigvecs, gmm.eigvals, gmm.eigvecs)
    w = gmm.log_weights.exp()
    k_pp = 0.0
    eye = torch.eye(d, dtype=torch.float64)
    for j in range(len(w)):
        for k in range(len(w)):
            chol = torch.linalg.cholesky(covs[j] + covs[k] + l2 * eye)
            z = torch.linalg.solve_triangular(chol, (gmm.means[j] - gmm.means[k])[:, None],
                                              upper=False)
            log_n = (-0.5 * z.square().sum() - chol.diagonal().log().sum()
                     - 0.5 * d * math.log(2 * math.pi))
            k_pp += float(w[j] * w[k] * (log_n + log_norm).exp())
    return k_xp, k_pp


class MixtureMMD(_Samples):
    """Unbiased MMD^2 to the exact mixture under a Gaussian kernel (closed-form p-terms)."""

    def lengthscale(self) -> float:
        return math.sqrt(float(self.model.gmm.moments()[1].trace()))

    def replicates(self, counts: Tensor) -> dict[str, Tensor]:
        x = torch.cat(self.samples)
        n, ell = len(x), self.lengthscale()
        k_xp, k_pp = mixture_kernel_means(self.model.gmm, x, ell)
        c = counts.to(x)
        qq = kernel_quadratic(x, c, rbf_kernel(ell)) / (n**2 - c.square().sum(1))
        return {"mmd_exact": qq - 2 * (c @ k_xp) / n + k_pp}

    def fingerprint(self) -> dict[str, Any]:
        return {"mmd_exact": "unbiased MMD^2 to the exact mixture, Gaussian kernel, "
                             f"lengthscale^2 = tr Cov_p = {self.lengthscale() ** 2:.6g}, float64"}
