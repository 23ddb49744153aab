"""Distribution metrics of generated images against reference images, in one feature space.

`FeatureDistance` extracts features of each generated batch as it arrives (images are not
kept) and reports, named after the extractor's space (`inception`, `clip`, `dinov2`, ...):

- `fd_<space>`: Frechet distance (`fd_inception` is FID), from streaming float64 mean and
  scatter: O(d^2) memory whatever N.
- `kid_<space>`: KID, unbiased MMD^2 with the cubic polynomial kernel over all images (the
  expectation that KID's mean over random subsets estimates, without its subset noise).
- `cmmd_<space>`: CMMD, 1000 x unbiased MMD^2 with a Gaussian kernel, sigma = 10.
- `precision_<space>`, `recall_<space>`: improved precision/recall with k-NN balls (k = 3).

KID, CMMD, precision/recall and every bootstrap interval need the generated features
themselves: they are kept on the CPU in the extractor's dtype (float32 for the networks),
N x d x 4 bytes: 80 MB for 10k Inception images. With `keep_features=False` only FD is
available, in O(d^2) memory, without interval.

Intervals: basic bootstrap over generated images (see `sdlab.metrics`) for every value
except recall. Recall measures how much of the reference a set of n generated balls covers;
a resample with replacement holds only ~63% distinct images, so it covers less, for a reason
that is not estimator bias (a simulation put every replicate below the point value).
Precision has no such problem: the reference balls stay fixed and it is a mean over
generated images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdlab.metrics import Metric, library_versions
from sdlab.metrics.knn import precision_recall_replicates
from sdlab.metrics.reference import (
    Extractor,
    ReferenceSource,
    ReferenceStats,
    reference_stats,
)
from sdlab.metrics.stats import (
    GaussianStats,
    fd_replicates,
    frechet_distance,
    kernel_sum_offdiag,
    kid_kernel,
    mmd2_replicates,
    rbf_kernel,
)

KINDS = ("fd", "kid", "cmmd", "pr")


class FeatureDistance(Metric):
    """FD, KID, CMMD and precision/recall of generated images in an extractor's feature space."""

    def __init__(self, extractor: Extractor, reference: ReferenceSource,
                 metrics: tuple[str, ...] | list[str] = ("fd",), cache_dir: str | None = None,
                 keep_features: bool = True, batch_size: int = 64, pr_k: int = 3,
                 cmmd_sigma: float = 10.0, cmmd_scale: float = 1000.0, **_: Any) -> None:
        unknown = set(metrics) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {KINDS}")
        if not keep_features and set(metrics) - {"fd"}:
            raise ValueError("kid, cmmd and pr need the generated features: keep_features=True")
        self.extractor, self.reference = extractor, reference
        self.metrics, self.cache_dir, self.keep_features = tuple(metrics), cache_dir, keep_features
        self.batch_size, self.pr_k = batch_size, pr_k
        self.cmmd_sigma, self.cmmd_scale = cmmd_sigma, cmmd_scale
        self.space = extractor.name
        self.stats: GaussianStats | None = None
        self.features: list[Tensor] = []
        self.image_ids: list[int] = []
        self._ref: ReferenceStats | None = None

    @property
    def device(self) -> torch.device:
        return getattr(self.extractor, "device", torch.device("cpu"))

    def ref(self) -> ReferenceStats:
        if self._ref is None:
            self._ref = reference_stats(self.reference, self.extractor, self.cache_dir,
                                        self.batch_size)
        return self._ref

    def update(self, batch: Any) -> None:
        feats = self.extractor(batch.outputs)
        if self.stats is None:
            self.stats = GaussianStats.empty(feats.shape[1])
        self.stats.update(feats)
        if self.keep_features:
            self.features.append(feats.cpu())  # in the extractor's dtype (float32 for networks)
        self.image_ids += list(batch.indices)

    def compute(self) -> dict[str, float]:
        if self.stats is None or self.stats.n < 2:
            raise ValueError(f"{self.space} metrics need at least 2 generated images")
        out = {}
        if "fd" in self.metrics:
            ref = self.ref()
            out[f"fd_{self.space}"] = frechet_distance(self.stats.mean, self.stats.cov,
                                                       ref.mean, ref.cov)
        if set(self.metrics) - {"fd"}:
            ones = torch.ones(1, self.stats.n, dtype=torch.float64)
            rest = self._replicates(ones, [m for m in self.metrics if m != "fd"])
            out |= {k: float(v[0]) for k, v in rest.items()}
        return out

    def replicates(self, counts: Tensor) -> dict[str, Tensor]:
        if not self.keep_features:
            raise ValueError("bootstrap replicates need keep_features=True")
        out = self._replicates(counts, self.metrics)
        out.pop(f"recall_{self.space}", None)  # no valid resampling interval: see module doc
        return out

    def intervals(self, level: float = 0.95, n_boot: int = 200, seed: int = 0
                  ) -> dict[str, tuple[float, float]]:
        return super().intervals(level, n_boot, seed) if self.keep_features else {}

    def _ref_term(self, name: str, kernel: Any, ref: Tensor) -> float:
        """Mean kernel value over pairs of distinct reference images, cached with the stats."""
        m = len(ref)
        return self.ref().cached(name, lambda: kernel_sum_offdiag(ref, kernel) / (m * (m - 1)))

    def _replicates(self, counts: Tensor, metrics: Any) -> dict[str, Tensor]:
        ref, dev = self.ref(), self.device
        gen = torch.cat(self.features).to(dev, torch.float64)
        ref_feats, c = ref.features.to(dev, torch.float64), counts.to(dev, torch.float64)
        out = {}
        if "fd" in metrics:
            out[f"fd_{self.space}"] = fd_replicates(gen, c, ref.mean.to(dev), ref.cov.to(dev))
        if "kid" in metrics:
            term = self._ref_term("kid_poly3", kid_kernel, ref_feats)
            out[f"kid_{self.space}"] = mmd2_replicates(ref_feats, gen, c, kid_kernel, term)
        if "cmmd" in metrics:
            k = rbf_kernel(self.cmmd_sigma)
            term = self._ref_term(f"cmmd_rbf{self.cmmd_sigma:g}", k, ref_feats)
            out[f"cmmd_{self.space}"] = self.cmmd_scale * mmd2_replicates(ref_feats, gen, c, k,
                                                                          term)
        if "pr" in metrics:
            p, r = precision_recall_replicates(ref_feats, gen, c, self.pr_k)
            out[f"precision_{self.space}"], out[f"recall_{self.space}"] = p, r
        return out

    def fingerprint(self) -> dict[str, Any]:
        ref = self.ref()
        definitions = {
            "fd": "Frechet distance, float64 streaming mean/scatter, unbiased covariances",
            "kid": "unbiased MMD^2, kernel (x.y/d + 1)^3, all images (no subsets)",
            "cmmd": f"{self.cmmd_scale:g} x unbiased MMD^2, kernel exp(-|x-y|^2/(2 "
                    f"{self.cmmd_sigma:g}^2))",
            "pr": f"improved precision/recall (Kynkaanniemi et al. 2019), k={self.pr_k}",
        }
        return {f"{self.space}": {
            "metrics": {m: definitions[m] for m in self.metrics},
            "extractor": self.extractor.settings(),
            "reference": {"key": ref.key, "source": ref.spec["source"], "n": ref.n,
                          "stats_sha256": ref.sha256},
            "n_generated": self.stats.n if self.stats is not None else 0,
            "generated_input": "pipeline outputs clamped to [0, 1], rounded to uint8",
            "bootstrap": "basic interval, resampling generated features; reference fixed",
            "versions": library_versions(),
        }}
