"""Tiny SD 1.x / 2.x / XL models for the tests, built once per session, and diffusers references.

Folders come from `sdlab.models.tiny.save_tiny` (diffusers format, safetensors) and are read
back through sdlab's real loader. `reference_images` runs diffusers' own pipeline on the
very same modules, so any difference is the inference loop's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import diffusers
import pytest
import torch
from torch import Tensor

from sdlab.models.sd import LatentDiffusionModel, build
from sdlab.models.tiny import FAMILIES, save_tiny

SIZE = 16  # pixels: 8x8 latents with the tiny 2-level VAE


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """family -> a diffusers folder of that family, written once per session."""
    torch.set_num_threads(1)  # two shared cores: one thread avoids OpenMP contention stalls
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: save_tiny(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_model(tiny_dirs) -> Callable[..., LatentDiffusionModel]:
    """`tiny_model(family, **options)`: a loaded model, cached per (family, options)."""
    cache: dict[tuple, LatentDiffusionModel] = {}

    def get(family: str, **options) -> LatentDiffusionModel:
        key = (family, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = build(str(tiny_dirs[family]), name=f"tiny-{family}", height=SIZE,
                               width=SIZE, device="cpu", **options)
        return cache[key]

    return get


def reference_pipeline(model: LatentDiffusionModel, scheduler: str, **overrides):
    """diffusers' own pipeline over the model's modules, with `scheduler` from its config."""
    p = model.parts
    config = {**model.scheduler_config, "prediction_type": p.prediction_type, **overrides}
    kwargs = dict(unet=p.unet, vae=p.vae, tokenizer=p.tokenizers[0],
                  text_encoder=p.text_encoders[0],
                  scheduler=getattr(diffusers, scheduler).from_config(config))
    if p.family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            tokenizer_2=p.tokenizers[1], text_encoder_2=p.text_encoders[1],
            force_zeros_for_empty_prompt=p.force_zeros_for_empty_prompt, **kwargs)
    else:
        pipe = diffusers.StableDiffusionPipeline(
            safety_checker=None, feature_extractor=None, requires_safety_checker=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(model: LatentDiffusionModel, scheduler: str, prompts: Sequence[str],
                     seeds: Sequence[int], steps: int, guidance_scale: float,
                     overrides: dict | None = None, prediction_type: str | None = None,
                     **call) -> Tensor:
    """Images from diffusers' pipeline: per-image generators, output as tensors in [0, 1]."""
    overrides = dict(overrides or {})
    if prediction_type is not None:
        overrides["prediction_type"] = prediction_type
    pipe = reference_pipeline(model, scheduler, **overrides)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale,
                generator=gens, height=model.height, width=model.width, output_type="pt",
                **call).images
