"""An analytic Gaussian mixture: exact denoiser, exact samples, and a reference ODE solution.

For p(x0) = sum_k pi_k N(mu_k, S_k), the noisy marginal at level sigma is
sum_k pi_k N(mu_k, S_k + sigma^2 I), and the ideal denoiser is

    D(x, sigma) = sum_k w_k(x, sigma) [mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)],

with w_k the posterior component probabilities. Each S_k is stored by its eigendecomposition
U_k diag(lam_k) U_k^T, so every inverse and determinant is a division by lam_k + sigma^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from sdlab.denoisers import Denoiser, DiscreteModel, discrete_output, scaled_linear_alphas_cumprod

LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """A mixture of K full-covariance Gaussians over tensors of `shape` (float64)."""

    def __init__(self, weights: Tensor, means: Tensor, eigvecs: Tensor, eigvals: Tensor,
                 shape: Sequence[int]) -> None:
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.log_weights = (weights / weights.sum()).log().to(torch.float64)
        self.means = means.to(torch.float64).reshape(-1, self.dim)  # [K, d]
        self.eigvecs = eigvecs.to(torch.float64)  # [K, d, d], columns are eigenvectors
        self.eigvals = eigvals.to(torch.float64)  # [K, d]

    @classmethod
    def random(cls, shape: Sequence[int] = (4, 4, 4), components: int = 4, seed: int = 0,
               mean_scale: float = 1.0, eig_range: tuple[float, float] = (0.01, 0.5)
               ) -> GaussianMixture:
        """A random mixture, reproducible from `seed`: random means, rotations and spectra."""
        g = torch.Generator().manual_seed(seed)
        d = math.prod(shape)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        means = mean_scale * torch.randn(components, d, generator=g, dtype=torch.float64)
        eigvecs = torch.linalg.qr(torch.randn(components, d, d, generator=g,
                                              dtype=torch.float64))[0]
        lo, hi = math.log(eig_range[0]), math.log(eig_range[1])
        eigvals = (lo + (hi - lo) * torch.rand(components, d, generator=g,
                                               dtype=torch.float64)).exp()
        return cls(weights, means, eigvecs, eigvals, shape)

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def posterior(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Component log-responsibilities [B, K] and per-component posterior means [B, K, d]."""
        xf = self._flat(x)
        var = self.eigvals[None] + sigma.to(torch.float64).reshape(-1, 1, 1) ** 2  # [B, K, d]
        y = torch.einsum("kde,bkd->bke", self.eigvecs, xf[:, None] - self.means[None])
        log_lik = -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * LOG_2PI)
        log_resp = torch.log_softmax(self.log_weights + log_lik, dim=-1)
        means = self.means[None] + torch.einsum("kde,bke->bkd", self.eigvecs,
                                                y * self.eigvals[None] / var)
        return log_resp, means

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The exact ideal denoiser E[x0 | x0 + sigma eps = x]."""
        log_resp, means = self.posterior(x, sigma)
        x0 = (log_resp.exp()[..., None] * means).sum(1)
        return x0.reshape(x.shape).to(x.dtype)

    def log_prob(self, x: Tensor, sigma: float = 0.0) -> Tensor:
        """Exact log density of the noisy marginal at level sigma."""
        xf = self._flat(x)
        var = self.eigvals[None] + sigma**2
        y = torch.einsum("kde,bkd->bke", self.eigvecs, xf[:, None] - self.means[None])
        log_lik = -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * LOG_2PI)
        return torch.logsumexp(self.log_weights + log_lik, dim=-1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Exact samples x0 ~ p."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nde,ne->nd", self.eigvecs[k], z * self.eigvals[k].sqrt())
        return x.reshape(n, *self.shape)

    def moments(self) -> tuple[Tensor, Tensor]:
        """Exact mean [d] and covariance [d, d] of the mixture."""
        w = self.log_weights.exp()
        mean = (w[:, None] * self.means).sum(0)
        covs = torch.einsum("kde,ke,kfe->kdf", self.eigvecs, self.eigvals, self.eigvecs)
        dev = self.means - mean
        cov = (w[:, None, None] * (covs + dev[:, :, None] * dev[:, None, :])).sum(0)
        return mean, cov

    def ode_solve(self, x: Tensor, sigma_from: float, sigma_to: float, rtol: float = 1e-10,
                  atol: float = 1e-10) -> Tensor:
        """Probability-flow ODE from sigma_from to sigma_to > 0, by DOP853 in s = log sigma.

        dx/ds = x - D(x, e^s) is smooth in s, so an 8th-order adaptive solver at tight
        tolerance gives a solution whose own error is far below any sampler's.
        """
        batch = x.shape[0]

        def f(s: float, y: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(y).reshape(batch, self.dim)
            sig = torch.full((batch,), math.exp(s), dtype=torch.float64)
            return (xt - self.denoise(xt, sig)).reshape(-1).numpy()

        y0 = self._flat(x).reshape(-1).numpy()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # hundreds of tiny evaluations: threads only add contention
        try:
            sol = solve_ivp(f, (math.log(sigma_from), math.log(sigma_to)), y0,
                            method="DOP853", rtol=rtol, atol=atol)
        finally:
            torch.set_num_threads(threads)
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        return torch.from_numpy(sol.y[:, -1]).reshape(x.shape).to(x.dtype)

    def reference_sample(self, x: Tensor, sigma_max: float, sigma_min: float, **tol) -> Tensor:
        """What an exact ODE sampler returns on a schedule from sigma_max down to sigma_min, 0.

        Samplers end with the step sigma_min -> 0 that returns D(x, sigma_min); the exact
        counterpart is the exact ODE solution at sigma_min, denoised.
        """
        x_min = self.ode_solve(x, sigma_max, sigma_min, **tol)
        return self.denoise(x_min, torch.full((x.shape[0],), sigma_min, dtype=torch.float64))


class GMMDenoiser(Denoiser):
    """The mixture's exact denoiser as an sdlab Denoiser, with SD's sigma range by default.

    `sigmas` are SD's discrete training sigmas, so timestep schedules and the diffusers
    bridge run on it as they do on an SD U-Net.
    """

    def __init__(self, gmm: GaussianMixture, alphas_cumprod: Tensor | None = None) -> None:
        super().__init__()
        self.gmm = gmm
        self.alphas_cumprod = (scaled_linear_alphas_cumprod() if alphas_cumprod is None
                               else alphas_cumprod.to(torch.float64))
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    def denoise(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        return self.gmm.denoise(x, sigma)


class GMMDiscreteModel(DiscreteModel):
    """The mixture presented as a discrete DDPM network predicting eps, v or x0 from (x_in, t)."""

    def __init__(self, denoiser: GMMDenoiser, prediction_type: str = "epsilon") -> None:
        self.denoiser = denoiser
        self.prediction_type = prediction_type
        self.alphas_cumprod = denoiser.alphas_cumprod

    def __call__(self, x_in: Tensor, t: Tensor, **cond) -> Tensor:
        sigma = self.denoiser.t_to_sigma(t.reshape(-1).expand(x_in.shape[0]))
        x = x_in * (sigma**2 + 1).sqrt().reshape((-1,) + (1,) * (x_in.ndim - 1)).to(x_in)
        return discrete_output(self.denoiser.gmm.denoise(x, sigma), x, sigma,
                               self.prediction_type)


class GMMModel:
    """The analytic mixture as a pipeline model: unconditional, samples are the outputs."""

    conditional = False

    def __init__(self, gmm: GaussianMixture, name: str = "gmm") -> None:
        self.gmm, self.name = gmm, name
        self.latent_shape = gmm.shape
        self.dtype, self.device = torch.float64, torch.device("cpu")
        self.scheduler_config: dict = {}
        self._denoiser = GMMDenoiser(gmm)

    def denoiser(self) -> GMMDenoiser:
        return self._denoiser

    def conditioning(self, prompts: list[str], negative: list[str]) -> tuple[dict, dict]:
        return {}, {}

    def decode(self, latents: Tensor) -> Tensor:
        return latents


def build(shape: Sequence[int] = (4, 4, 4), components: int = 4, seed: int = 0,
          name: str = "gmm") -> GMMModel:
    """The analytic model from config: a random mixture reproducible from `seed`."""
    return GMMModel(GaussianMixture.random(tuple(shape), components, seed), name)
