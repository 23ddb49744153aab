"""Tiny randomly initialised Stable Diffusion folders (SD 1.x, 2.x, XL) for tests and benchmarks.

Each family keeps the anatomy of the real model (CLIP tokenizer and text encoder(s),
cross-attention U-Net, KL VAE, SD's scheduler config, and for XL the pooled projection and
size/crop time ids) at a size that runs in milliseconds on a CPU. `save_tiny(path, family)`
writes a diffusers-format folder that the real loaders read back; `save_tiny_clip(path)` a
transformers CLIPModel folder (with its processor) for the CLIP-based metrics.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

FAMILIES = ("sd1", "sd2", "sdxl")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16
TEXT_DIM = 32
TEXT_DIM_2 = 48  # XL's second encoder is wider, as in SDXL (1280 vs 768): single files rely on it


def tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: one token per character (plus `</w>` ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=MAX_LENGTH)


def text_config(tok: CLIPTokenizer, **overrides) -> CLIPTextConfig:
    overrides.setdefault("hidden_size", TEXT_DIM)
    return CLIPTextConfig(
        vocab_size=len(tok), intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=TEXT_DIM,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **overrides)


def vae() -> AutoencoderKL:
    """A 2-level KL autoencoder: images -> 4-channel latents at 1/2 resolution."""
    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                         norm_num_groups=16, sample_size=16, scaling_factor=0.18215)


def unet(family: str) -> UNet2DConditionModel:
    """SD 1.x/2.x layout (cross-attention then plain block); XL: plain then cross-attention."""
    common = dict(block_out_channels=(32, 64), layers_per_block=2, in_channels=4, out_channels=4,
                  sample_size=8, norm_num_groups=32)
    if family == "sd1":
        return UNet2DConditionModel(
            **common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
            attention_head_dim=8)
    if family == "sd2":
        return UNet2DConditionModel(
            **common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
            attention_head_dim=(4, 8), use_linear_projection=True, upcast_attention=True)
    if family == "sdxl":
        return UNet2DConditionModel(
            **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_DIM + TEXT_DIM_2,
            attention_head_dim=(4, 8), use_linear_projection=True,
            transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM)
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def pipeline(family: str, seed: int = 0):
    """A tiny diffusers pipeline of `family` with random weights (seeded)."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer(Path(tmp))
    sd_scheduler = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", steps_offset=1)
    if family == "sd1":
        return StableDiffusionPipeline(
            unet=unet(family), vae=vae(), text_encoder=CLIPTextModel(text_config(tok)),
            tokenizer=tok, scheduler=PNDMScheduler(**sd_scheduler, skip_prk_steps=True),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family == "sd2":
        return StableDiffusionPipeline(
            unet=unet(family), vae=vae(),
            text_encoder=CLIPTextModel(text_config(tok, hidden_act="gelu")), tokenizer=tok,
            scheduler=EulerDiscreteScheduler(**sd_scheduler, prediction_type="v_prediction"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return StableDiffusionXLPipeline(
        unet=unet(family), vae=vae(), text_encoder=CLIPTextModel(text_config(tok)),
        text_encoder_2=CLIPTextModelWithProjection(
            text_config(tok, hidden_act="gelu", hidden_size=TEXT_DIM_2)),
        tokenizer=tok, tokenizer_2=tok,
        scheduler=EulerDiscreteScheduler(**sd_scheduler, timestep_spacing="leading"))


def _sd_scheduler_keys(pipe):
    """Real SD/XL scheduler configs carry these keys whatever the class; other schedulers
    built `from_config` (DDIM, PNDM, ...) read them from there."""
    pipe.scheduler.register_to_config(clip_sample=False, set_alpha_to_one=False,
                                      skip_prk_steps=True)
    return pipe


def save_tiny(folder: str | Path, family: str, seed: int = 0) -> Path:
    """Write a tiny `family` model as a diffusers folder (safetensors) and return its path."""
    folder = Path(folder)
    _sd_scheduler_keys(pipeline(family, seed)).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_clip(path: Path, width: int = 32, mlp: int = 64, layers: int = 1, heads: int = 2,
                   projection_dim: int = 16, seed: int = 0) -> Path:
    """A random CLIPModel for 32x32 images (ViT patch 8) with a letters-only tokenizer, saved
    with its CLIPProcessor (images enter as `2 x - 1`, no resize) where `from_pretrained`
    reads it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path.mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab |= {f"{c}</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {BOS: 52, EOS: 53}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token=EOS,
                        model_max_length=32)
    tower = {"hidden_size": width, "intermediate_size": mlp, "num_hidden_layers": layers,
             "num_attention_heads": heads}
    ids = {"bos_token_id": 52, "eos_token_id": 53, "pad_token_id": 53}
    config = CLIPConfig(
        text_config=tower | ids | {"vocab_size": 54, "max_position_embeddings": 32},
        vision_config=tower | {"image_size": 32, "patch_size": 8}, projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    proc = CLIPImageProcessor(do_resize=False, do_center_crop=False, image_mean=[0.5] * 3,
                              image_std=[0.5] * 3)
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(path)
    return path
