"""FeatureDistance streaming, the reference-statistics cache, paired differences, exact
metrics of the analytic model and the shapes adapter."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import sdlab.metrics.features as features
import sdlab.metrics.reference as reference
from sdlab.metrics import Metric, build, paired_difference
from sdlab.metrics.exact import mixture_kernel_means
from sdlab.metrics.features import FeatureDistance
from sdlab.models.gmm import GaussianMixture
from sdlab.models.gmm import build as build_gmm
from sdlab.pipeline import Batch

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "metrics"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_memory(monkeypatch):
    monkeypatch.setattr(reference, "_IN_MEMORY", {})


class CountingExtractor:
    """A fixed random projection of the pixels that counts the images it sees."""

    name = "toy"

    def __init__(self, dim=6):
        self.w = torch.randn(3 * 8 * 8, dim, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
        self.images = 0

    def __call__(self, images):
        self.images += len(images)
        return images.to(torch.float64).flatten(1) @ self.w

    def settings(self):
        return {"extractor": "toy projection"}


class NoiseImages:
    """Reference images: seeded uniform noise."""

    def __init__(self, n, seed=0):
        self.n, self.seed = n, seed

    def key(self):
        return {"source": "noise", "n": self.n, "seed": self.seed}

    def batches(self, batch_size):
        g = torch.Generator().manual_seed(self.seed)
        images = torch.rand(self.n, 3, 8, 8, generator=g)
        yield from images.split(batch_size)


def _batch(outputs, start=0, prompts=None):
    n = len(outputs)
    ids = list(range(start, start + n))
    return Batch(indices=ids, seeds=ids, prompts=prompts, noise=outputs, latents=outputs,
                 outputs=outputs, nfe=1, uncond_evals=0)


def _generated(n, seed=1, shift=0.05):
    return (torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) + shift)


def test_reference_statistics_computed_once_per_key(tmp_path, monkeypatch):
    ext = CountingExtractor()
    gen = _generated(32)

    def point():
        m = FeatureDistance(ext, NoiseImages(100), metrics=("fd", "kid"), cache_dir=str(tmp_path))
        m.update(_batch(gen))
        return m.compute()

    first = point()
    assert ext.images == 100 + 32
    second = point()  # a second point of the same sweep, same process
    assert ext.images == 100 + 2 * 32 and second == first
    assert len(list(tmp_path.glob("toy-*.kid_poly3.json"))) == 1  # KID's reference term
    monkeypatch.setattr(reference, "_IN_MEMORY", {})  # a later run: only the disk cache

    def no_recompute(*args, **kwargs):
        raise AssertionError("the reference kernel term was recomputed")

    monkeypatch.setattr(features, "kernel_sum_offdiag", no_recompute)
    assert point() == first and ext.images == 100 + 3 * 32
    FeatureDistance(ext, NoiseImages(50), cache_dir=str(tmp_path)).ref()  # another key
    assert ext.images == 100 + 3 * 32 + 50
    assert len(list(tmp_path.glob("toy-*.pt"))) == 2  # one statistics file per key


def test_streaming_fd_one_batch_equals_sixteen(tmp_path):
    gen = _generated(512)
    one, many = (FeatureDistance(CountingExtractor(), NoiseImages(300), metrics=("fd", "kid"),
                                 cache_dir=str(tmp_path)) for _ in range(2))
    one.update(_batch(gen))
    for s in range(0, 512, 32):
        many.update(_batch(gen[s : s + 32], start=s))
    a, b = one.compute(), many.compute()
    assert b["fd_toy"] == pytest.approx(a["fd_toy"], rel=1e-9)
    assert b["kid_toy"] == pytest.approx(a["kid_toy"], rel=1e-9)
    # the bootstrap's all-ones replicate (stored features) agrees with the streaming value
    ones = torch.ones(1, 512, dtype=torch.float64)
    assert float(many.replicates(ones)["fd_toy"][0]) == pytest.approx(a["fd_toy"], rel=1e-9)


def test_all_feature_metrics_and_intervals(tmp_path):
    m = FeatureDistance(CountingExtractor(), NoiseImages(200), metrics=("fd", "kid", "cmmd", "pr"),
                        cache_dir=str(tmp_path))
    m.update(_batch(_generated(150, shift=0.1)))
    values, ci = m.compute(), m.intervals(n_boot=50)
    assert set(values) == {"fd_toy", "kid_toy", "cmmd_toy", "precision_toy", "recall_toy"}
    assert set(ci) == set(values) - {"recall_toy"}
    for k, (lo, hi) in ci.items():
        assert lo <= values[k] <= hi, (k, values[k], lo, hi)
    streaming_only = FeatureDistance(CountingExtractor(), NoiseImages(200), keep_features=False,
                                     cache_dir=str(tmp_path))
    streaming_only.update(_batch(_generated(150, shift=0.1)))
    assert streaming_only.compute()["fd_toy"] == pytest.approx(values["fd_toy"], rel=1e-9)
    assert streaming_only.features == [] and streaming_only.intervals() == {}
    with pytest.raises(ValueError, match="keep_features"):
        FeatureDistance(CountingExtractor(), NoiseImages(10), metrics=("kid",),
                        keep_features=False)


class PerImage(Metric):
    """Mean of a per-image value."""

    def __init__(self, ids, values):
        self.image_ids, self.values = list(ids), torch.as_tensor(values, dtype=torch.float64)

    def replicates(self, counts):
        return {"v": counts @ self.values / len(self.values)}


def test_paired_difference_matches_images_by_id():
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(400, generator=g, dtype=torch.float64)  # image-to-image variation
    a = PerImage(range(400), shared + 0.01 * torch.randn(400, generator=g, dtype=torch.float64))
    b_values = shared + 0.1 + 0.01 * torch.randn(400, generator=g, dtype=torch.float64)
    b = PerImage(reversed(range(400)), b_values.flip(0))  # same images, another order
    diff, lo, hi = paired_difference(b, a, n_boot=500)["v"]
    assert diff == pytest.approx(float((b_values - a.values).mean()))
    assert lo < 0.1 < hi and hi - lo < 0.01  # shared variation cancels
    a_lo, a_hi = a.intervals(n_boot=500)["v"]
    assert a_hi - a_lo > 10 * (hi - lo)
    with pytest.raises(ValueError, match="same generated image ids"):
        paired_difference(a, PerImage(range(1, 401), b_values))


def test_paired_difference_of_feature_metrics(tmp_path):
    gen = _generated(200, shift=0.0)
    a, b = (FeatureDistance(CountingExtractor(), NoiseImages(300), metrics=("fd", "kid", "pr"),
                            cache_dir=str(tmp_path)) for _ in range(2))
    a.update(_batch(gen))
    b.update(_batch(gen + 0.1))  # the same seeds, a worse sampler
    out = paired_difference(b, a, n_boot=100)
    va, vb = a.compute(), b.compute()
    assert set(out) == {"fd_toy", "kid_toy", "precision_toy"}
    for name, (diff, lo, hi) in out.items():
        assert diff == pytest.approx(vb[name] - va[name], rel=1e-6, abs=1e-12)
        assert lo <= hi
    assert out["fd_toy"][1] > 0  # the shift is detected


def test_mmd_interval_of_few_images_is_finite():
    # with 3 images some resamples draw one image 3 times: no distinct pair, an undefined MMD
    model = build_gmm(shape=(2, 2), components=2, seed=0)
    metric = build(OmegaConf.load(CONFIGS / "gmm.yaml"), model=model)["mmd_exact"]
    metric.update(_batch(model.gmm.sample(3, torch.Generator().manual_seed(0))))
    lo, hi = metric.intervals(n_boot=200)["mmd_exact"]
    assert math.isfinite(lo) and math.isfinite(hi)


def test_mixture_kernel_means_match_monte_carlo():
    gmm = GaussianMixture.random((2, 2), components=3, seed=1)
    x = torch.randn(5, 4, dtype=torch.float64)
    ell = 0.8
    y = gmm.sample(200_000, torch.Generator().manual_seed(0)).reshape(-1, 4)
    k_xp, k_pp = mixture_kernel_means(gmm, x, ell)
    mc = torch.exp(-torch.cdist(x, y).square() / (2 * ell**2)).mean(1)
    torch.testing.assert_close(k_xp, mc, rtol=2e-2, atol=1e-3)
    y2 = gmm.sample(200_000, torch.Generator().manual_seed(1)).reshape(-1, 4)
    mc_pp = torch.exp(-(y - y2).square().sum(1) / (2 * ell**2)).mean()
    assert k_pp == pytest.approx(float(mc_pp), rel=2e-2)


def test_gmm_metrics_config_builds_and_mmd_detects_the_wrong_distribution():
    model = build_gmm(shape=(2, 2, 2), components=3, seed=0)
    metrics = build(OmegaConf.load(CONFIGS / "gmm.yaml"), model=model)
    assert set(metrics) == {"rmse_ode", "fd_exact", "mmd_exact"}
    exact = model.gmm.sample(400, torch.Generator().manual_seed(0))
    mmd_ok, mmd_bad = metrics["mmd_exact"], build(
        OmegaConf.load(CONFIGS / "gmm.yaml"), model=model)["mmd_exact"]
    mmd_ok.update(_batch(exact))
    mmd_bad.update(_batch(exact * 1.3))
    ok, bad = mmd_ok.compute()["mmd_exact"], mmd_bad.compute()["mmd_exact"]
    lo, hi = mmd_ok.intervals(n_boot=200)["mmd_exact"]
    assert lo < 0 < hi  # unbiased: exact samples scatter around zero
    assert bad > hi and mmd_bad.intervals(n_boot=200)["mmd_exact"][0] > 0
    assert abs(ok) < 0.1 * bad and math.isfinite(ok)


def test_shapes_accuracy_on_dataset_images():
    pytest.importorskip("sdlab.shapes.checker")
    from sdlab.shapes.dataset import get_batch

    images, captions, _ = get_batch(range(24), "heldout")
    config = OmegaConf.create({"shapes": {"_target_": "sdlab.metrics.shapes.ShapesAccuracy"}})
    right, wrong = build(config)["shapes"], build(config)["shapes"]
    right.update(_batch(images, prompts=captions))
    wrong.update(_batch(images, prompts=captions[1:] + captions[:1]))
    assert right.compute()["shapes_accuracy"] > 0.9
    assert wrong.compute()["shapes_accuracy"] < 0.5
    assert "shapes_color" in right.compute() and "shapes_accuracy" in right.intervals(n_boot=50)


@pytest.mark.parametrize("group", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_metrics_config_composes_with_the_main_config(group):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIGS.parent), version_base="1.3"):
        cfg = compose("config", overrides=[f"metrics={group}"])
    assert cfg.metrics and all("_target_" in entry for entry in cfg.metrics.values())
    OmegaConf.to_container(cfg.metrics, resolve=True)  # interpolations resolve
