"""Feature extractors for the distribution metrics, and where their weights come from.

An extractor maps images [B, 3, H, W] in [0, 1] to features [B, d]. Images are first rounded
to uint8, as saving them to PNG would, so generated and reference images (read from files)
enter every network the same way. `settings()` lists everything that defines the features
(network, weights hash, resize, antialias, dtype); it keys the reference-statistics cache and
goes into result fingerprints.

Weights are never replaced by random ones: a missing file raises `MissingWeightsError`
naming the file and the directory to put it in.

- `InceptionFeatures`: torchmetrics' `NoTrainInceptionV3`, i.e. torch-fidelity's port of the
  TF FID Inception with the standard weights `weights-inception-2015-12-05-6726825d.pth`,
  pool3 (2048-d). The file comes from `weights_path` or the torch hub cache
  (`$TORCH_HOME/hub/checkpoints/`), where torch-fidelity and torchmetrics keep it too.
- `CLIPFeatures`: image embeddings (after the projection) of any Hugging Face `CLIPModel`,
  by hub id or local directory, preprocessed by the model's own `CLIPProcessor`; or, with
  `features="tokens"`, the mean of the vision tower's last-layer patch tokens (space
  `clip_tokens`). The projected embedding is trained to keep only what captions say, so it
  saturates once the content is right; the patch tokens still carry edges, shading and
  placement, the role Inception's pool3 (not its logits) plays in FID.
- `DINOv2Features`: torch-fidelity's DINOv2 extractor, from the torch hub cache.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
# sha256 of torch-fidelity's release file (its name carries the prefix, torch hub's habit)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights a metric needs are not on this machine."""


def default_device(device: str | None) -> torch.device:
    """`device`, or CUDA when available for None and "auto"."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_uint8(images: Tensor) -> Tensor:
    """[0, 1] images rounded to uint8, as a PNG would store them."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def hub_checkpoint(filename: str) -> Path:
    """Where torch hub (and so torch-fidelity and torchmetrics) caches a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def inception_weights(weights_path: str | None = None, download: bool = True) -> Path:
    """The FID Inception weights file: `weights_path`, else the torch hub cache (downloaded
    there when `download` and online)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"Inception weights_path {path} does not exist. Put "
                                      f"{INCEPTION_FILE} (from {INCEPTION_URL}) there.")
        return path
    path = hub_checkpoint(INCEPTION_FILE)
    if path.is_file():
        return path
    hint = (f"FID Inception weights not found at {path}. On a machine with internet access "
            f"download {INCEPTION_URL} and place it at {path} (or set the metric's "
            "`weights_path`). sdlab never falls back to random weights.")
    if not download:
        raise MissingWeightsError(hint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(path), hash_prefix=INCEPTION_SHA256,
                                       progress=False)
    except OSError as err:  # URLError is an OSError: offline, proxy, DNS...
        raise MissingWeightsError(f"{hint} (download failed: {err})") from err
    return path


class InceptionFeatures:
    """FID Inception pool3 features (torchmetrics `NoTrainInceptionV3`, TF-ported weights).

    `antialias=False` (default) resizes to 299x299 with torch-fidelity's TF1-compatible
    bilinear interpolation, as the original TF FID, pytorch-fid and torch-fidelity do;
    `antialias=True` is torchmetrics' default (torch bilinear with antialias) and gives
    different numbers on images that are downsampled.
    """

    name = "inception"

    def __init__(self, weights_path: str | None = None, antialias: bool = False,
                 download: bool = True, device: str | None = None, batch_size: int = 64) -> None:
        import warnings

        from torchmetrics.image.fid import NoTrainInceptionV3

        self.path = inception_weights(weights_path, download)
        self.sha256 = file_sha256(self.path)
        if self.sha256 != INCEPTION_SHA256:
            warnings.warn(f"{self.path} is not the standard FID Inception file (sha256 "
                          f"{self.sha256[:16]}...): values are not comparable to published FIDs",
                          stacklevel=2)
        self.antialias, self.batch_size = antialias, batch_size
        self.device = default_device(device)
        self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(self.path),
                                      antialias=antialias).to(self.device)
        self.dim = 2048

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        x = to_uint8(images)
        return torch.cat([self.net(b.to(self.device)).float().cpu()
                          for b in x.split(self.batch_size)])

    def settings(self) -> dict[str, Any]:
        return {"extractor": "torchmetrics NoTrainInceptionV3 (torch-fidelity InceptionV3)",
                "feature": "pool3 (2048)", "weights": self.path.name, "weights_sha256": self.sha256,
                "standard_weights": self.sha256 == INCEPTION_SHA256,
                "input": "uint8 (round(255 x))",
                "resize": "299x299 bilinear, " + ("torch antialias" if self.antialias
                                                  else "TF1-compatible, no antialias"),
                "dtype": "float32"}


def local_dir(name_or_path: str) -> Path | None:
    """A model directory: as given, or relative to the checkout holding the `sdlab` package
    (so `sdlab/assets/...` works from any working directory); None for a hub id."""
    import sdlab

    path = Path(name_or_path).expanduser()
    for candidate in (path, Path(sdlab.__file__).parent.parent / path):
        if candidate.is_dir():
            return candidate
    return None


def _hf_weight_files(name_or_path: str) -> list[Path]:
    local = local_dir(name_or_path)
    if local is not None:
        return sorted(local.glob("*.safetensors")) or sorted(local.glob("*.bin"))
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(name_or_path, filename)
        if isinstance(found, str):
            return [Path(found)]
    return []


def weights_sha256(name_or_path: str) -> str:
    """sha256 of a Hugging Face model's weight files (joined hashes when sharded)."""
    files = _hf_weight_files(name_or_path)
    if not files:
        return "unknown"
    hashes = [file_sha256(f) for f in files]
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()


@lru_cache(maxsize=4)
def load_clip(name_or_path: str, device: str) -> tuple[Any, Any]:
    """A Hugging Face CLIP (`CLIPModel`, `CLIPProcessor`) by hub id or local directory."""
    from transformers import CLIPModel, CLIPProcessor

    local = local_dir(name_or_path)
    source = name_or_path if local is None else str(local)
    try:
        model = CLIPModel.from_pretrained(source).to(device).eval()
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:  # ValueError: not a valid hub id nor a directory
        raise MissingWeightsError(
            f"CLIP model {name_or_path!r} is not available on this machine: give a local "
            "directory holding a transformers CLIPModel (config.json, model.safetensors) with "
            "its tokenizer and preprocessor_config.json, or on a machine with internet access "
            f"run `hf download {name_or_path}` (Hugging Face cache: $HF_HOME/hub)") from err
    return model, processor


def pooled(out: Any) -> Tensor:
    """The embedding tensor of `get_{image,text}_features` (transformers 5 returns an output)."""
    return out if isinstance(out, Tensor) else out.pooler_output


CLIP_FEATURES = {"embedding": "clip", "tokens": "clip_tokens"}  # features -> space name


class CLIPFeatures:
    """CLIP image features of any Hugging Face CLIP.

    `features="embedding"`: the image embedding after the projection, L2-normalised when
    `normalize` (the space CMMD uses), space `clip`. `features="tokens"`: the mean over patch
    tokens (class token excluded) of the vision tower's last hidden layer, before the final
    layer norm and the projection, space `clip_tokens`.
    """

    def __init__(self, model_name_or_path: str = "openai/clip-vit-large-patch14",
                 normalize: bool = True, device: str | None = None, batch_size: int = 64,
                 features: str = "embedding") -> None:
        if features not in CLIP_FEATURES:
            raise ValueError(f"CLIP features must be one of {sorted(CLIP_FEATURES)}, "
                             f"got {features!r}")
        self.model_name, self.features = str(model_name_or_path), features
        self.name = CLIP_FEATURES[features]
        self.normalize, self.batch_size = normalize, batch_size
        self.device = default_device(device)
        self.model, self.processor = load_clip(self.model_name, str(self.device))
        config = self.model.config
        embedding = features == "embedding"
        self.dim = config.projection_dim if embedding else config.vision_config.hidden_size
        self.sha256 = weights_sha256(self.model_name)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        out = []
        for b in to_uint8(images).split(self.batch_size):
            px = self.processor(images=list(b), return_tensors="pt")["pixel_values"]
            px = px.to(self.device)
            if self.features == "embedding":
                f = pooled(self.model.get_image_features(pixel_values=px)).float()
            else:
                hidden = self.model.vision_model(pixel_values=px).last_hidden_state
                f = hidden[:, 1:].mean(1).float()
            out.append((torch.nn.functional.normalize(f, dim=-1) if self.normalize else f).cpu())
        return torch.cat(out)

    def settings(self) -> dict[str, Any]:
        ip = self.processor.image_processor
        keep = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                "rescale_factor", "do_normalize", "image_mean", "image_std")
        what = {"embedding": "transformers CLIPModel image embedding (after projection)",
                "tokens": "transformers CLIPModel vision tower, mean of last-layer patch tokens "
                          "(class token excluded, before post_layernorm and projection)"}
        return {"extractor": what[self.features],
                "model": self.model_name, "weights_sha256": self.sha256, "input": "uint8",
                "preprocess": {k: _jsonable(getattr(ip, k, None)) for k in keep},
                "l2_normalized": self.normalize, "dtype": str(self.model.dtype)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict | list | tuple | str | int | float | bool) or v is None:
        return v
    return str(v)


DINOV2_VARIANTS = {"dinov2-vit-s-14": "dinov2_vits14", "dinov2-vit-b-14": "dinov2_vitb14",
                   "dinov2-vit-l-14": "dinov2_vitl14", "dinov2-vit-g-14": "dinov2_vitg14"}


def dinov2_files(variant: str) -> tuple[Path, Path]:
    """The torch hub code directory and checkpoint torch-fidelity's DINOv2 extractor loads."""
    hub = Path(torch.hub.get_dir())
    return (hub / "facebookresearch_dinov2_main",
            hub / "checkpoints" / f"{DINOV2_VARIANTS[variant]}_pretrain.pth")


class DINOv2Features:
    """torch-fidelity's DINOv2 extractor (224x224, TF1-compatible bilinear, ImageNet norm)."""

    name = "dinov2"

    def __init__(self, variant: str = "dinov2-vit-l-14", device: str | None = None,
                 batch_size: int = 64) -> None:
        if variant not in DINOV2_VARIANTS:
            raise ValueError(f"unknown DINOv2 variant {variant!r}; one of {list(DINOV2_VARIANTS)}")
        repo, ckpt = dinov2_files(variant)
        if not (repo.is_dir() and ckpt.is_file()):
            raise MissingWeightsError(
                f"DINOv2 ({variant}) needs the torch hub code at {repo} and the weights at "
                f"{ckpt}. On a machine with internet access run python -c \"import torch; "
                f"torch.hub.load('facebookresearch/dinov2', '{DINOV2_VARIANTS[variant]}')\" and "
                f"copy {repo.name}/ and checkpoints/{ckpt.name} into {repo.parent}.")
        from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

        self.variant, self.batch_size = variant, batch_size
        self.device = default_device(device)
        self.net = FeatureExtractorDinoV2(variant, ["dinov2"]).to(self.device)
        self.sha256 = file_sha256(ckpt)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return torch.cat([self.net(b.to(self.device))[0].float().cpu()
                          for b in to_uint8(images).split(self.batch_size)])

    def settings(self) -> dict[str, Any]:
        return {"extractor": f"torch-fidelity FeatureExtractorDinoV2 ({self.variant})",
                "weights_sha256": self.sha256, "input": "uint8",
                "resize": "224x224 bilinear, TF1-compatible, no antialias", "dtype": "float32"}
