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


# -- single-file export: the diffusers -> original (LDM / SGM) key layout -------------------
#
# The inverse of diffusers' `single_file_utils` conversion, written for these tiny models,
# so `from_single_file` is tested on files laid out like real SD / SDXL checkpoints.

UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
               ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
               ("conv_shortcut", "skip_connection"))
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2", "conv_in": "input_blocks.0.0",
              "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_FIXED = {"conv_norm_out": "norm_out"}
VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
            ("to_out.0", "proj_out"))
OPENCLIP = (("encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"), (".fc1.", ".c_fc."), (".fc2.", ".c_proj."),
            (".self_attn.out_proj", ".attn.out_proj"))


def _sub(key: str, pairs) -> str:
    for new, old in pairs:
        key = key.replace(new, old)
    return key


def unet_to_ldm(sd: dict, config) -> dict:
    per = config["layers_per_block"] + 1
    attn_up = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    out = {}
    for key, value in sd.items():
        head, _, leaf = key.rpartition(".")
        parts = head.split(".")
        if head in UNET_FIXED:
            new = UNET_FIXED[head]
        elif parts[0] == "down_blocks":
            b, kind, j = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "downsamplers":
                new = f"input_blocks.{1 + b * per + per - 1}.0.op"
            else:
                idx = 1 + b * per + j
                new = (f"input_blocks.{idx}.0.{_sub(rest, UNET_RESNET)}" if kind == "resnets"
                       else f"input_blocks.{idx}.1.{rest}")
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = (f"middle_block.{2 * j}.{_sub(rest, UNET_RESNET)}" if kind == "resnets"
                   else f"middle_block.1.{rest}")
        elif parts[0] == "up_blocks":
            b, kind, j = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "upsamplers":
                new = f"output_blocks.{b * per + per - 1}.{2 if b in attn_up else 1}.conv"
            else:
                idx = b * per + j
                new = (f"output_blocks.{idx}.0.{_sub(rest, UNET_RESNET)}" if kind == "resnets"
                       else f"output_blocks.{idx}.1.{rest}")
        else:
            raise KeyError(f"no LDM name for U-Net key {key}")
        out[f"model.diffusion_model.{new.rstrip('.')}.{leaf}"] = value
    return out


def vae_to_ldm(sd: dict, config) -> dict:
    n = len(config["up_block_types"])
    out = {}
    for key, value in sd.items():
        new = key
        for side in ("encoder", "decoder"):
            new = new.replace(f"{side}.conv_norm_out", f"{side}.norm_out")
        new = new.replace("down_blocks.", "down.").replace(".resnets.", ".block.")
        new = new.replace("downsamplers.0", "downsample").replace("upsamplers.0", "upsample")
        new = new.replace("conv_shortcut", "nin_shortcut")
        new = new.replace("mid_block.block.0", "mid.block_1").replace("mid_block.block.1",
                                                                       "mid.block_2")
        if "up_blocks." in new:
            i = int(new.split("up_blocks.")[1].split(".")[0])
            new = new.replace(f"up_blocks.{i}.", f"up.{n - 1 - i}.")
        if "mid_block.attentions.0" in new:
            new = _sub(new.replace("mid_block.attentions.0", "mid.attn_1"), VAE_ATTN)
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[f"first_stage_model.{new}"] = value
    return out


def openclip_to_ldm(sd: dict, prefix: str) -> dict:
    """CLIPTextModelWithProjection -> OpenCLIP names (fused q/k/v, transposed projection)."""
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
           prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
           prefix + "text_projection": sd.pop("text_projection.weight").T.contiguous()}
    sd.pop("embeddings.position_ids", None)
    for key in [k for k in sd if ".q_proj." in k]:
        leaf = key.rsplit(".", 1)[1]
        qkv = [sd.pop(key.replace("q_proj", p)) for p in ("q_proj", "k_proj", "v_proj")]
        base = _sub(key.split(".self_attn")[0], OPENCLIP)
        out[f"{prefix}{base}.attn.in_proj_{leaf}"] = torch.cat(qkv)
    out.update({prefix + _sub(k, OPENCLIP): v for k, v in sd.items()})
    return out


def save_single_file(folder: Path, out: Path) -> Path:
    """One `.safetensors` in the original layout from a tiny diffusers folder."""
    from safetensors.torch import save_file

    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder))
    state = {**unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
             **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)}
    te = {k if k.startswith("text_model.") else f"text_model.{k}": v
          for k, v in pipe.text_encoder.state_dict().items()}
    if hasattr(pipe, "text_encoder_2"):
        state |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in te.items()}
        state |= openclip_to_ldm(pipe.text_encoder_2.state_dict(),
                                 "conditioner.embedders.1.model.")
    else:
        state |= {f"cond_stage_model.transformer.{k}": v for k, v in te.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out
