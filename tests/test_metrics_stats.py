"""Distribution statistics against independent reference implementations."""

import numpy as np
import pytest
import scipy.linalg
import torch

from sdlab.metrics import Metric
from sdlab.metrics.knn import precision_recall_replicates
from sdlab.metrics.stats import (
    GaussianStats,
    fd_replicates,
    frechet_distance,
    kernel_sum_offdiag,
    kid_kernel,
    mmd2_replicates,
    rbf_kernel,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # small linear algebra: thread hand-offs cost more than they save on a shared CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a + shift


def _scipy_fd(x, y):
    mu1, mu2 = x.mean(0), y.mean(0)
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root))


def _stats(x):
    s = GaussianStats.empty(x.shape[1])
    s.update(torch.from_numpy(x))
    return s


def test_fd_matches_scipy_sqrtm_and_pytorch_fid():
    x, y = _features(400, 32, 0), _features(300, 32, 1, shift=0.3)
    sx, sy = _stats(x), _stats(y)
    fd = frechet_distance(sx.mean, sx.cov, sy.mean, sy.cov)
    assert fd == pytest.approx(_scipy_fd(x, y), rel=1e-6)
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    ref = fid_score.calculate_frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0),
                                               np.cov(y, rowvar=False))
    assert fd == pytest.approx(float(ref), rel=1e-6)


def test_streaming_stats_equal_one_batch():
    x = _features(1024, 48, 2, shift=5.0)
    one = _stats(x)
    many = GaussianStats.empty(48)
    for chunk in np.split(x, 16):
        many.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(many.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    ref = _stats(_features(500, 48, 3))
    a = frechet_distance(one.mean, one.cov, ref.mean, ref.cov)
    b = frechet_distance(many.mean, many.cov, ref.mean, ref.cov)
    assert b == pytest.approx(a, rel=1e-9)


def test_fd_replicates_point_equals_streaming_fd():
    x, y = _features(200, 16, 4), _features(300, 16, 5)
    sy = _stats(y)
    rep = fd_replicates(torch.from_numpy(x), torch.ones(1, 200), sy.mean, sy.cov)
    assert float(rep[0]) == pytest.approx(_scipy_fd(x, y), rel=1e-6)


@pytest.mark.parametrize("n, d", [(300, 12), (40, 64)])  # d x d and n x n (n < d) forms
def test_fd_replicates_equal_scipy_fd_of_explicit_resamples(n, d):
    x, y = _features(n, d, 14), _features(500, d, 15, shift=0.1)
    mu, cov = y.mean(0), np.cov(y, rowvar=False)
    rng = np.random.default_rng(1)
    idx = [rng.integers(0, n, n) for _ in range(3)]
    counts = torch.stack([torch.from_numpy(np.bincount(i, minlength=n)).double() for i in idx])
    ours = fd_replicates(torch.from_numpy(x), torch.cat([torch.ones(1, n), counts]),
                         torch.from_numpy(mu), torch.from_numpy(cov))
    refs = [_scipy_fd(x, y)] + [_scipy_fd(x[i], y) for i in idx]
    np.testing.assert_allclose(ours.numpy(), refs, rtol=1e-6)


def _unbiased_mmd(x, y, k):
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return xx + yy - 2 * kxy.mean()


def test_kid_equals_unbiased_polynomial_estimator():
    x, y = _features(300, 20, 6), _features(250, 20, 7, shift=0.2)
    ref = _unbiased_mmd(x, y, lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3)
    ours = mmd2_replicates(torch.from_numpy(x), torch.from_numpy(y), torch.ones(1, 250),
                           kid_kernel, block=64)
    assert float(ours[0]) == pytest.approx(ref, rel=1e-9)


def test_cmmd_rbf_and_weighted_resample_equal_explicit_resample():
    x, y = _features(120, 8, 8), _features(90, 8, 9, shift=0.5)

    def rbf(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 10.0**2))

    idx = np.random.default_rng(0).integers(0, 90, 90)
    counts = torch.from_numpy(np.bincount(idx, minlength=90)).double()[None]
    ours = mmd2_replicates(torch.from_numpy(x), torch.from_numpy(y),
                           torch.cat([torch.ones(1, 90), counts]), rbf_kernel(10.0), block=32)
    assert float(ours[0]) == pytest.approx(_unbiased_mmd(x, y, rbf), rel=1e-9)
    # a resample: every pair of distinct drawn items, copies of one item never paired
    kyy, same = rbf(y[idx], y[idx]), idx[:, None] == idx[None]
    resampled = ((rbf(x, x).sum() - 120) / (120 * 119) + kyy[~same].mean()
                 - 2 * rbf(x, y[idx]).mean())
    assert float(ours[1]) == pytest.approx(resampled, rel=1e-9)


def test_precision_recall_brute_force():
    ref, gen = _features(150, 5, 10), _features(120, 5, 11, shift=0.7)
    k = 3

    def radii(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    d = np.linalg.norm(gen[:, None] - ref[None], axis=-1)  # [gen, ref]
    precision = (d <= radii(ref)[None]).any(1).mean()
    recall = (d.T <= radii(gen)[None]).any(1).mean()
    p, r = precision_recall_replicates(torch.from_numpy(ref), torch.from_numpy(gen),
                                       torch.ones(1, 120), k=k, block=40)
    assert float(p[0]) == pytest.approx(precision) and float(r[0]) == pytest.approx(recall)
    assert 0 < precision < 1 and 0 < recall < 1


class KnownFD(Metric):
    """FD of samples to known Gaussian moments, through the Metric interval machinery."""

    def __init__(self, x, mu, cov):
        self.x, self.mu, self.cov, self.image_ids = x, mu, cov, list(range(len(x)))

    def replicates(self, counts):
        return {"fd": fd_replicates(self.x, counts, self.mu, self.cov)}


@pytest.mark.parametrize("d, n", [(2, 1000), (16, 200)])  # negligible / strong finite-N bias
def test_fd_bootstrap_interval_covers_known_fd_at_nominal_rate(d, n):
    # samples of N(mu1, C1) against the exact N(mu2, C2): the true FD is known in closed form
    trials, level = 300, 0.9
    g = torch.Generator().manual_seed(d)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    c1 = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    c2 = torch.eye(d, dtype=torch.float64) * 0.8
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.2, dtype=torch.float64)
    truth = _scipy_fd_moments(mu1.numpy(), c1.numpy(), mu2.numpy(), c2.numpy())
    chol = torch.linalg.cholesky(c1)
    hits = 0
    for t in range(trials):
        x = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ chol.T
        lo, hi = KnownFD(x, mu2, c2).intervals(level, n_boot=150, seed=t)["fd"]
        hits += lo <= truth <= hi
    rate = hits / trials
    print(f"d={d} N={n}: coverage of the nominal {level} interval {rate:.3f} ({trials} trials)")
    assert abs(rate - level) < 0.05, rate  # binomial sd at 300 trials is 0.017


def _scipy_fd_moments(mu1, c1, mu2, c2):
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2)
                 - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real))


class _Features(torch.nn.Module):
    """A torchmetrics 'feature extractor' that passes precomputed features through."""

    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def test_fd_and_kid_agree_with_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    x, y = _features(300, 24, 12), _features(300, 24, 13, shift=0.2)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    fid = FrechetInceptionDistance(feature=_Features(24))
    fid.update(tx, real=True)
    fid.update(ty, real=False)
    sx, sy = _stats(x), _stats(y)
    assert frechet_distance(sy.mean, sy.cov, sx.mean, sx.cov) == pytest.approx(
        float(fid.compute()), rel=1e-6)
    # one subset of all items: torchmetrics' KID is then the full unbiased estimator
    kid = KernelInceptionDistance(feature=_Features(24), subsets=1, subset_size=300)
    kid.update(tx, real=True)
    kid.update(ty, real=False)
    ours = mmd2_replicates(tx, ty, torch.ones(1, 300), kid_kernel)
    assert float(ours[0]) == pytest.approx(float(kid.compute()[0]), rel=1e-6)


@pytest.mark.slow
def test_kid_bootstrap_interval_covers_known_kid_at_nominal_rate():
    # zero-mean Gaussians: E (x.y/d + 1)^3 = 1 + 3 tr(A B) / d^2, so KID = 3 |C1 - C2|_F^2 / d^2
    d, n, m, trials, level = 4, 400, 20_000, 200, 0.9
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    c1 = a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    truth = 3 * float((c1 - torch.eye(d, dtype=torch.float64)).square().sum()) / d**2
    ref = torch.randn(m, d, generator=g, dtype=torch.float64)  # large: its own noise is small
    ref_term = kernel_sum_offdiag(ref, kid_kernel, 4096) / (m * (m - 1))

    class KID(Metric):
        def __init__(self, y):
            self.y, self.image_ids = y, list(range(len(y)))

        def replicates(self, counts):
            return {"kid": mmd2_replicates(ref, self.y, counts, kid_kernel, ref_term, 4096)}

    chol, hits = torch.linalg.cholesky(c1), 0
    for t in range(trials):
        y = torch.randn(n, d, generator=g, dtype=torch.float64) @ chol.T
        lo, hi = KID(y).intervals(level, n_boot=150, seed=t)["kid"]
        hits += lo <= truth <= hi
    rate = hits / trials
    print(f"KID: coverage of the nominal {level} interval {rate:.3f} ({trials} trials)")
    assert abs(rate - level) < 0.06, rate
