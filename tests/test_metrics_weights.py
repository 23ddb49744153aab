"""Inception and CLIP paths end to end, on weight files the tests create, and missing weights."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.metrics.clip_score import CLIPScore
from sdlab.metrics.extractors import (
    INCEPTION_FILE,
    CLIPFeatures,
    DINOv2Features,
    InceptionFeatures,
    MissingWeightsError,
    load_clip,
)
from sdlab.metrics.features import FeatureDistance
from sdlab.metrics.reference import ImageFolder
from sdlab.models import tiny
from sdlab.pipeline import Batch

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "metrics"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, where torch-fidelity and torchmetrics look for weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win
    return tmp_path / "torch" / "hub"


def _batch(images, start=0, prompts=None):
    n = len(images)
    return Batch(indices=list(range(start, start + n)), seeds=list(range(start, start + n)),
                 prompts=prompts, noise=torch.zeros(n), latents=torch.zeros(n), outputs=images,
                 nfe=1, uncond_evals=0)


def _images(n, seed, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def random_inception(torch_home, monkeypatch):
    """A randomly initialised Inception saved where a user's downloaded weights would be."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:  # build the network without loading any weights
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = torch_home / "checkpoints" / INCEPTION_FILE
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return path


def test_missing_inception_weights_error_names_file_and_place(torch_home):
    with pytest.raises(MissingWeightsError) as err:
        InceptionFeatures(download=False, device="cpu")
    expected = torch_home / "checkpoints" / INCEPTION_FILE
    assert str(expected) in str(err.value) and "https://" in str(err.value)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        InceptionFeatures(weights_path=str(torch_home / "nope.pth"), device="cpu")


def test_missing_dinov2_and_clip_errors(torch_home, tmp_path):
    with pytest.raises(MissingWeightsError, match="dinov2_vits14_pretrain.pth"):
        DINOv2Features("dinov2-vit-s-14", device="cpu")
    with pytest.raises(MissingWeightsError, match="hf download"):
        load_clip(str(tmp_path / "no-such-clip"), "cpu")


def test_inception_from_hub_cache_matches_torch_fidelity(random_inception, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with pytest.warns(UserWarning, match="not the standard FID Inception"):
        ext = InceptionFeatures(download=False, device="cpu")
    settings = ext.settings()
    assert settings["weights_sha256"] == hashlib.sha256(random_inception.read_bytes()).hexdigest()
    assert settings["standard_weights"] is False and "TF1" in settings["resize"]
    images = _images(2, 0)
    ours = ext(images[:1])
    # torch-fidelity's own extractor on the same file, fed uint8 as it requires
    ref_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(random_inception))
    ref = ref_net((images[:1] * 255).round().to(torch.uint8))[0]
    assert ours.shape == (1, 2048) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)

    # the rest only checks the plumbing: a smaller network input keeps it fast
    ext.net.INPUT_IMAGE_SIZE = 75
    folder = tmp_path / "real"
    folder.mkdir()
    for i, im in enumerate(_images(3, 1)):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            folder / f"{i}.png")
    metric = FeatureDistance(ext, ImageFolder(str(folder)), metrics=("fd", "kid"),
                             cache_dir=str(tmp_path / "cache"))
    metric.update(_batch(images))
    metric.update(_batch(_images(1, 2), start=2))
    values = metric.compute()
    assert set(values) == {"fd_inception", "kid_inception"}
    assert all(np.isfinite(v) for v in values.values())
    fp = metric.fingerprint()["inception"]
    assert fp["extractor"]["weights_sha256"] == settings["weights_sha256"]
    assert fp["reference"]["n"] == 3 and fp["n_generated"] == 3


@pytest.fixture
def clip_dir(tmp_path):
    return tiny.save_tiny_clip(tmp_path / "clip")


def _manual_clip(path, images, prompts):
    """Image and text embeddings straight from transformers, for an independent reference."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(path).eval()
    tok = CLIPTokenizer.from_pretrained(path)
    px = ((images * 255).round() / 255 - 0.5) / 0.5
    with torch.no_grad():
        img = model.vision_model(pixel_values=px).pooler_output
        img = model.visual_projection(img)
        ids = tok(prompts, padding=True, return_tensors="pt")
        txt = model.text_model(**ids).pooler_output
        txt = model.text_projection(txt)
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


def test_clip_score_and_clip_features_from_a_local_model(clip_dir):
    images = _images(4, 3)
    prompts = ["a red circle", "a blue square", "a green triangle", "a small circle"]
    img, txt = _manual_clip(clip_dir, images, prompts)
    metric = CLIPScore(str(clip_dir), device="cpu")
    metric.update(_batch(images[:2], 0, prompts[:2]))
    metric.update(_batch(images[2:], 2, prompts[2:]))
    expected = max(float(100 * (img * txt).sum(-1).mean()), 0.0)
    assert metric.compute()["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    fp = metric.fingerprint()["clip_score"]
    weights = clip_dir / "model.safetensors"
    assert fp["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "100 * cos" in fp["scale"]
    lo, hi = metric.intervals(n_boot=200)["clip_score"]
    assert lo <= metric.compute()["clip_score"] <= hi

    feats = CLIPFeatures(str(clip_dir), device="cpu")(images)
    torch.testing.assert_close(feats, img.float(), rtol=1e-4, atol=1e-5)


def test_clip_token_features_are_the_mean_patch_token(clip_dir):
    from transformers import CLIPModel

    images = _images(3, 5)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    px = ((images * 255).round() / 255 - 0.5) / 0.5
    with torch.no_grad():
        layers = model.vision_model.encoder(model.vision_model.pre_layrnorm(
            model.vision_model.embeddings(px))).last_hidden_state
    extractor = CLIPFeatures(str(clip_dir), device="cpu", features="tokens", normalize=False)
    assert extractor.name == "clip_tokens" and extractor.dim == layers.shape[-1]
    torch.testing.assert_close(extractor(images), layers[:, 1:].mean(1), rtol=1e-4, atol=1e-5)
    assert "patch tokens" in extractor.settings()["extractor"]
    with pytest.raises(ValueError, match="embedding"):
        CLIPFeatures(str(clip_dir), device="cpu", features="pooled")


def test_tiny_shapes_config_end_to_end(clip_dir, tmp_path):
    pytest.importorskip("sdlab.shapes.checker")
    from omegaconf import OmegaConf

    from sdlab.metrics import build
    from sdlab.shapes.dataset import get_batch

    config = OmegaConf.load(CONFIGS / "tiny_shapes.yaml")
    config.clip.extractor.model_name_or_path = str(clip_dir)
    config.clip_score.model_name_or_path = str(clip_dir)
    config.clip.reference.n = 64
    metrics = build(config, model=None, cache_dir=str(tmp_path))
    images, captions, _ = get_batch(range(32), "train")
    for s in (0, 16):
        batch = _batch(images[s : s + 16], s, captions[s : s + 16])
        for m in metrics.values():
            m.update(batch)
    values = {k: v for m in metrics.values() for k, v in m.compute().items()}
    assert {"fd_clip", "cmmd_clip", "fd_clip_tokens", "clip_score", "shapes_accuracy"} <= set(
        values)
    assert values["shapes_accuracy"] > 0.9  # dataset images are what their captions say
    intervals = {k: v for m in metrics.values() for k, v in m.intervals(n_boot=50).items()}
    assert {"fd_clip", "cmmd_clip", "clip_score", "shapes_accuracy"} <= set(intervals)
    fp = metrics["clip"].fingerprint()["clip"]
    assert fp["reference"]["source"]["source"] == "sdlab.shapes" and fp["reference"]["n"] == 64
    tokens = metrics["clip_tokens"].fingerprint()["clip_tokens"]
    assert tokens["reference"]["n"] == 64 and tokens["extractor"]["model"] == str(clip_dir)


def _coco(root, sizes):
    import json

    (root / "val2014").mkdir(parents=True)
    images, annotations = [], []
    for i, (w, h) in enumerate(sizes):
        name = f"COCO_val2014_{i:012d}.jpg"
        pixels = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val2014" / name)
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
        annotations += [{"id": 10 * i + 1, "image_id": 100 + i, "caption": f"second {i}"},
                        {"id": 10 * i, "image_id": 100 + i, "caption": f" first {i} "}]
    (root / "annotations").mkdir()
    (root / "annotations" / "captions_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations}))
    return root


def test_coco_source_selection_captions_and_resize(tmp_path):
    from sdlab.metrics.reference import COCO

    root = _coco(tmp_path / "coco", [(40, 30), (30, 50), (64, 64), (33, 20)])
    src = COCO(str(root / "annotations" / "captions_val2014.json"), str(root / "val2014"),
               n=3, resolution=16)
    prompts = src.prompts()
    assert len(prompts) == 3 and all(p.startswith("first") for p in prompts)
    (batch,) = list(src.batches(8))
    assert batch.shape == (3, 3, 16, 16) and 0 <= batch.min() and batch.max() <= 1
    assert src.key() != COCO(src.captions, src.images, n=3, resolution=32).key()
    with pytest.raises(ValueError, match="year"):
        COCO(src.captions, src.images, year=2015).prompts()


@pytest.mark.slow
def test_sd_coco_config_end_to_end(random_inception, clip_dir, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from sdlab.metrics import build

    root = _coco(tmp_path / "coco", [(64, 48), (48, 64), (64, 64)])
    monkeypatch.setenv("COCO_ROOT", str(root))
    config = OmegaConf.load(CONFIGS / "sd_coco.yaml")
    config.inception.reference.n, config.inception.reference.resolution = 3, 64
    config.clip_score.model_name_or_path = str(clip_dir)
    with pytest.warns(UserWarning, match="not the standard"):
        metrics = build(config, model=None, cache_dir=str(tmp_path / "cache"))
    images = _images(3, 5, size=32)
    for m in metrics.values():
        m.update(_batch(images, 0, ["a red circle", "a blue square", "a circle"]))
    values = {k: v for m in metrics.values() for k, v in m.compute().items()}
    assert {"fd_inception", "kid_inception", "clip_score"} == set(values)


HUBCONF = '''
import torch

def dinov2_vits14():
    """A stand-in with DINOv2's interface: images [B, 3, 224, 224] -> [B, 384]."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 384, 14, 14), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    url = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    net.load_state_dict(torch.hub.load_state_dict_from_url(url))  # the hub cache, as DINOv2's
    return net
'''


def test_dinov2_from_the_torch_hub_cache(torch_home):
    """torch-fidelity's DINOv2 path on a hub cache the test fills (code and weights)."""
    repo = torch_home / "facebookresearch_dinov2_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 384, 14, 14), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    ckpt = torch_home / "checkpoints" / "dinov2_vits14_pretrain.pth"
    ckpt.parent.mkdir()
    torch.save(net.state_dict(), ckpt)
    ext = DINOv2Features("dinov2-vit-s-14", device="cpu")
    feats = ext(_images(2, 4))
    assert feats.shape == (2, 384) and torch.isfinite(feats).all()
    assert ext.settings()["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
