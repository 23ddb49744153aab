"""The statistics behind the distribution metrics, on feature tensors, in float64.

Every estimator here also takes bootstrap `counts` ([B, n], how often each generated item is
drawn in each resample): the point estimate is the all-ones row, so a bootstrap replicate and
the reported value go through the same code.

- Frechet distance ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), with the matrix root taken
  in the symmetric form tr((C1^(1/2) C2 C1^(1/2))^(1/2)), which is exact for PSD matrices and
  needs only `eigh`.
- `GaussianStats`: streaming mean/covariance (Chan et al.'s pairwise update, float64), O(d^2)
  memory whatever the number of items.
- MMD^2, unbiased U-statistic (Gretton et al. 2012, eq. 3) over the full samples, with the
  kernel evaluated in row blocks so memory stays O(block * n). KID (Binkowski et al. 2018) is
  MMD^2 under torchmetrics' cubic polynomial kernel (x.y/d + 1)^3; CMMD (Jayasumana et al.
  2024) is 1000 * MMD^2 under exp(-||x - y||^2 / (2 sigma^2)), sigma = 10.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.image.kid import poly_kernel

Kernel = Callable[[Tensor, Tensor], Tensor]


def sqrtm_psd(a: Tensor) -> Tensor:
    """Principal square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), via the symmetric form of the root."""
    mu1, cov1, mu2, cov2 = (t.to(torch.float64) for t in (mu1, cov1, mu2, cov2))
    s1 = sqrtm_psd(cov1)
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross)


@dataclass
class GaussianStats:
    """Running count, mean and centred scatter matrix of feature rows, in float64."""

    n: int
    mean: Tensor  # [d]
    scatter: Tensor  # [d, d], sum of (x - mean)(x - mean)^T

    @classmethod
    def empty(cls, dim: int, device: torch.device | str = "cpu") -> GaussianStats:
        z = torch.zeros(dim, dtype=torch.float64, device=device)
        return cls(0, z, torch.zeros(dim, dim, dtype=torch.float64, device=device))

    def update(self, x: Tensor) -> None:
        """Merge a batch of rows [b, d] (Chan, Golub & LeVeque's pairwise update)."""
        x = x.to(self.mean.device, torch.float64)
        nb, mb = x.shape[0], x.mean(0)
        xc = x - mb
        delta = mb - self.mean
        n = self.n + nb
        self.scatter += xc.T @ xc + torch.outer(delta, delta) * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n

    @property
    def cov(self) -> Tensor:
        """Unbiased covariance (divides by n - 1), as numpy/scipy and pytorch-fid do."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 items, got {self.n}")
        return self.scatter / (self.n - 1)


def fd_replicates(x: Tensor, counts: Tensor, mu_ref: Tensor, cov_ref: Tensor) -> Tensor:
    """Frechet distance of count-weighted resamples of rows `x` [n, d] to (mu_ref, cov_ref).

    A resample's covariance is Z^T Z / (n - 1) with rows z_i = sqrt(c_i) (x_i - mean_c). The
    cross term tr((C_ref^(1/2) C C_ref^(1/2))^(1/2)) needs the eigenvalues of a d x d matrix,
    or, when n < d, of the n x n matrix Z C_ref Z^T / (n - 1), which has the same nonzero ones.
    """
    x = x.to(torch.float64)
    mu_ref, cov_ref, c = mu_ref.to(x), cov_ref.to(x), counts.to(x)
    (n, d), center = x.shape, x.mean(0)
    xc = x - center  # centring first keeps the weighted scatter accurate
    delta = c @ xc / n  # [B, d]: each resample's mean minus the sample mean
    mean_term = (center + delta - mu_ref).square().sum(-1)
    # sum_i c_i |xc_i - delta|^2 = sum_i c_i |xc_i|^2 - n |delta|^2
    trace = (c @ xc.square().sum(1) - n * delta.square().sum(1)) / (n - 1)
    if n < d:
        cross = _cross_gram(xc, c, delta, cov_ref)
    else:
        cross = _cross_cov(xc, c, delta, cov_ref)
    return mean_term + trace + cov_ref.trace() - 2 * cross


def _cross_cov(xc: Tensor, c: Tensor, delta: Tensor, cov_ref: Tensor) -> Tensor:
    n, d = xc.shape
    s_ref = sqrtm_psd(cov_ref)
    ys, dys = xc @ s_ref, delta @ s_ref  # C_ref^(1/2) C C_ref^(1/2) is then a weighted scatter
    out = []
    for cb, db in zip(c.split(max(1, 2**24 // d**2)), dys.split(max(1, 2**24 // d**2)),
                      strict=True):  # replicates per chunk: ~128 MiB of d x d matrices
        scatter = torch.stack([(ys.T * ci) @ ys for ci in cb])
        m = (scatter - n * db[:, :, None] * db[:, None, :]) / (n - 1)
        out.append(torch.linalg.eigvalsh(m).clamp(min=0).sqrt().sum(-1))
    return torch.cat(out)


def _cross_gram(xc: Tensor, c: Tensor, delta: Tensor, cov_ref: Tensor) -> Tensor:
    n = xc.shape[0]
    xs = xc @ cov_ref  # [n, d]
    gram = xs @ xc.T  # xc_i^T C_ref xc_j
    out = []
    for ci, di in zip(c, delta, strict=True):
        u = xs @ di  # xc_i^T C_ref delta
        m = gram - u[:, None] - u[None] + di @ cov_ref @ di  # (xc_i - delta)^T C_ref (..._j)
        w = ci.sqrt()
        out.append(torch.linalg.eigvalsh(w[:, None] * m * w[None] / (n - 1)).clamp(min=0)
                   .sqrt().sum())
    return torch.stack(out)


def kid_kernel(x: Tensor, y: Tensor) -> Tensor:
    """KID's cubic polynomial kernel (x.y/d + 1)^3, torchmetrics' `poly_kernel`."""
    return poly_kernel(x, y, degree=3, gamma=None, coef=1.0)


def rbf_kernel(sigma: float) -> Kernel:
    """Gaussian kernel exp(-||x - y||^2 / (2 sigma^2))."""

    def k(x: Tensor, y: Tensor) -> Tensor:
        d2 = (x.square().sum(1)[:, None] + y.square().sum(1)[None] - 2 * x @ y.T).clamp(min=0)
        return torch.exp(-d2 / (2 * sigma**2))

    return k


def kernel_sum_offdiag(x: Tensor, kernel: Kernel, block: int = 1024) -> float:
    """sum_{i != j} k(x_i, x_j), in row blocks."""
    x = x.to(torch.float64)
    total = 0.0
    for s in range(0, len(x), block):
        k = kernel(x[s : s + block], x)
        total += float(k.sum() - k.diagonal(offset=s).sum())
    return total


def kernel_quadratic(y: Tensor, counts: Tensor, kernel: Kernel, block: int = 1024) -> Tensor:
    """sum_{i != j} c_i c_j k(y_i, y_j) for each count-weighted resample (c^T K c minus the
    same-item pairs c_i^2 K_ii). Pairs of copies of one item are left out like the diagonal
    of the U-statistic: counting them, k(y, y) being the kernel's largest value, would bias
    every replicate upwards, an artefact of resampling that the estimator itself lacks."""
    y, c = y.to(torch.float64), counts.to(y.device, torch.float64)
    out = torch.zeros(c.shape[0], dtype=torch.float64, device=y.device)
    for s in range(0, len(y), block):
        k, cb = kernel(y[s : s + block], y), c[:, s : s + block]  # k: [b, n]
        out += ((k @ c.T) * cb.T).sum(0) - cb.square() @ k.diagonal(offset=s)
    return out


def mmd2_replicates(x_ref: Tensor, y: Tensor, counts: Tensor, kernel: Kernel,
                    ref_term: float | None = None, block: int = 1024) -> Tensor:
    """Unbiased MMD^2 between reference rows `x_ref` [m, d] and count-weighted resamples of `y`.

    The y-y term is `kernel_quadratic` over its sum_{i != j} c_i c_j; the cross sum is c^T r with
    r_j = sum_i k(x_i, y_j); `ref_term` (the x-x part, the same for every resample) may be
    passed in to reuse it.
    """
    x_ref, y = x_ref.to(torch.float64), y.to(torch.float64)
    m, n = x_ref.shape[0], y.shape[0]
    c = counts.to(y)
    if ref_term is None:
        ref_term = kernel_sum_offdiag(x_ref, kernel, block) / (m * (m - 1))
    r = torch.zeros(n, dtype=torch.float64, device=y.device)
    for t in range(0, m, block):
        for s in range(0, n, block):
            r[s : s + block] += kernel(x_ref[t : t + block], y[s : s + block]).sum(0)
    pairs = n**2 - c.square().sum(1)  # n (n - 1) for the point estimate
    return ref_term + kernel_quadratic(y, c, kernel, block) / pairs - 2 * (c @ r) / (m * n)
