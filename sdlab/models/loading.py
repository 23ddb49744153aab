"""Loading Stable Diffusion components safely: diffusers folders, hub ids and single files.

Every failure a user can fix (missing path, model not cached while offline, pickle weights,
corrupt safetensors, a single file with no configs) raises `ModelLoadError` with a one-line
message that says what to do, before any generation starts. Remote code is never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
SCHEDULER_KEYS_DROPPED = ("_class_name", "_diffusers_version", "prediction_type")


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass
class Components:
    """What a latent diffusion model is made of, as loaded."""

    family: str  # "sd" (1.x/2.x: one text encoder) or "sdxl"
    unet: Any
    vae: Any
    tokenizers: list[Any]
    text_encoders: list[Any]
    scheduler_config: dict[str, Any]
    prediction_type: str
    force_zeros_for_empty_prompt: bool = False


def is_local(source: str) -> bool:
    """A path rather than a hub id: it exists, is absolute/relative-explicit, or has a suffix."""
    p = Path(source).expanduser()
    return (p.exists() or source.startswith(("/", ".", "~")) or p.suffix != ""
            or source.count("/") != 1)


def check_safetensors(path: Path) -> None:
    """Read the header of a .safetensors file (cheap), so corruption fails before loading."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # safetensors raises several types for a bad header
        raise ModelLoadError(
            f"corrupt safetensors file {path}: {str(err).splitlines()[0]}; "
            "re-download or re-export it") from err


def check_folder(folder: Path, allow_pickle: bool) -> None:
    """Refuse pickle-only components unless allowed; validate every safetensors header."""
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"{folder} is not a diffusers model folder (no model_index.json); point `path` at "
            "the folder that holds model_index.json, or at a single .safetensors checkpoint")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        weights = list(sub.glob("*.safetensors"))
        pickles = [p for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles and not weights and not allow_pickle:
            raise ModelLoadError(
                f"{sub.name} of {folder} has only pickle weights ({pickles[0].name}), which can "
                "run arbitrary code when loaded; convert them to safetensors or set "
                "allow_pickle: true if you trust the source")
        for w in weights:
            check_safetensors(w)


def family_of(index: dict[str, Any]) -> str:
    return "sdxl" if "XL" in index.get("_class_name", "") else "sd"


def _pipeline_class(family: str):
    if family not in ("sd", "sdxl"):
        raise ModelLoadError(f"unknown model family {family!r}; use 'sd' (1.x/2.x) or 'sdxl'")
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _extra_kwargs(family: str) -> dict[str, Any]:
    # SD 1.x folders list a safety checker; sdlab measures raw model outputs
    if family == "sd":
        return dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return {}


def load(source: str, *, family: str = "auto", dtype: torch.dtype = torch.float32,
         local_files_only: bool = False, allow_pickle: bool = False,
         config: str | None = None, original_config: str | None = None,
         variant: str | None = None) -> Components:
    """Load from a diffusers folder, a hub id or a single-file checkpoint.

    `config` (a diffusers folder or hub id) and `original_config` (an LDM yaml) only matter
    for single files: they tell diffusers the architecture instead of guessing it from the
    weights, which is what makes single files of non-standard sizes load offline.
    """
    if not source:
        raise ModelLoadError("no model path given; set `path` to a diffusers folder, a hub id "
                             "or a .safetensors checkpoint")
    safe = None if allow_pickle else True
    common = dict(torch_dtype=dtype, local_files_only=local_files_only)
    if is_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist; check `path` (a diffusers "
                                 "folder, a .safetensors file, or a hub id such as org/name)")
        if path.is_dir():
            check_folder(path, allow_pickle)
            index = json.loads((path / "model_index.json").read_text())
            family = family_of(index) if family == "auto" else family
            pipe = _pipeline_class(family).from_pretrained(
                str(path), use_safetensors=safe, variant=variant, **common,
                **_extra_kwargs(family))
        else:
            pipe, family = _load_single_file(path, family, allow_pickle, config,
                                             original_config, common)
    else:
        pipe, family = _load_hub(source, family, safe, variant, common)
    return components_of(pipe, family)


def _load_single_file(path: Path, family: str, allow_pickle: bool, config: str | None,
                      original_config: str | None, common: dict[str, Any]):
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; "
            "use a .safetensors file or set allow_pickle: true if you trust the source")
    if path.suffix == ".safetensors":
        check_safetensors(path)
    if family == "auto":
        family = _guess_single_file_family(path)
    kwargs = dict(common, **_extra_kwargs(family))
    if config is not None:
        kwargs["config"] = config
    if original_config is not None:
        kwargs["original_config"] = original_config
    try:
        return _pipeline_class(family).from_single_file(str(path), **kwargs), family
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not load single file {path.name}: {str(err).splitlines()[0]}; pass "
            "`config` (a diffusers folder or hub id with the same architecture) and/or "
            "`original_config` (its LDM yaml) to load it offline") from err


def _guess_single_file_family(path: Path) -> str:
    if path.suffix != ".safetensors":
        return "sd"
    with safe_open(str(path), framework="pt") as f:
        xl = any(k.startswith("conditioner.embedders.1") for k in f.keys())
    return "sdxl" if xl else "sd"


def _load_hub(repo: str, family: str, safe: bool | None, variant: str | None,
              common: dict[str, Any]):
    from huggingface_hub import hf_hub_download

    try:
        index_file = hf_hub_download(repo, "model_index.json",
                                     local_files_only=common["local_files_only"])
        index = json.loads(Path(index_file).read_text())
        family = family_of(index) if family == "auto" else family
        pipe = _pipeline_class(family).from_pretrained(
            repo, use_safetensors=safe, variant=variant, **common, **_extra_kwargs(family))
    except OSError as err:
        where = ("it is not in the local Hugging Face cache and local_files_only is set; "
                 "download it once with local_files_only: false (or `hf download "
                 f"{repo}`)" if common["local_files_only"] else
                 "check the hub id, your network and, for gated models, your login; or set "
                 "`path` to a local folder")
        if "safetensors" in str(err) and safe:
            where = ("it has no safetensors weights, and pickle weights can run arbitrary code; "
                     "set allow_pickle: true if you trust the source")
        raise ModelLoadError(
            f"could not load model {repo!r} ({type(err).__name__}): {where}") from err
    return pipe, family


def components_of(pipe, family: str) -> Components:
    """The parts of a loaded diffusers pipeline that sdlab drives."""
    config = {k: v for k, v in dict(pipe.scheduler.config).items()
              if k not in SCHEDULER_KEYS_DROPPED}
    if family == "sdxl":
        tokenizers = [t for t in (pipe.tokenizer, pipe.tokenizer_2) if t is not None]
        encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]
    else:
        tokenizers, encoders = [pipe.tokenizer], [pipe.text_encoder]
    return Components(
        family=family, unet=pipe.unet, vae=pipe.vae, tokenizers=tokenizers,
        text_encoders=encoders, scheduler_config=config,
        prediction_type=pipe.scheduler.config.get("prediction_type", "epsilon"),
        force_zeros_for_empty_prompt=bool(
            pipe.config.get("force_zeros_for_empty_prompt", False)))
