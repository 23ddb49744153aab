"""Latent diffusion (Stable Diffusion 1.x, 2.x, XL) as an sdlab model, each stage visible.

prompt -> tokenizer(s) -> text encoder(s) -> cond / uncond embeddings (cached per prompt)
       -> U-Net as a discrete DDPM network -> `DiscreteDDPMDenoiser` (eps or v from the
          folder's scheduler config) -> [guidance, sampler: the pipeline's business]
       -> VAE decoder (in batches, optionally tiled) -> images in [0, 1].

The text encoding and decoding reproduce diffusers' `StableDiffusionPipeline` and
`StableDiffusionXLPipeline` step for step, so equal parts give equal images.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor

from sdlab.denoisers import DiscreteDDPMDenoiser
from sdlab.models.loading import Components, ModelLoadError, load

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


class UNetNetwork:
    """The U-Net as `model(x_in, t, **cond)`: the discrete network a DDPM denoiser wraps."""

    def __init__(self, unet: Any, forward: Any = None) -> None:
        self.unet = unet
        self.forward = unet if forward is None else forward
        # diffusers' `ModelMixin.dtype` walks every parameter: milliseconds per step on a CPU
        self.dtype = unet.dtype

    def __call__(self, x_in: Tensor, t: Tensor, *, encoder_hidden_states: Tensor,
                 added_cond_kwargs: dict[str, Tensor] | None = None) -> Tensor:
        x = x_in.to(self.dtype)
        out = self.forward(x, t.to(device=x.device, dtype=torch.float32),
                           encoder_hidden_states=encoder_hidden_states,
                           added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]
        return out.to(x_in.dtype)


class LatentDiffusionModel:
    """A Stable Diffusion 1.x / 2.x / XL model behind sdlab's `Model` protocol.

    `height`/`width` are the image size in pixels (multiples of the VAE factor). Text
    embeddings are cached per prompt (the last `prompt_cache_size` prompts, in host memory),
    so a sweep over samplers, steps and guidance encodes each prompt once. For XL, an empty
    negative prompt gives zero embeddings when the model asks for it
    (`force_zeros_for_empty_prompt`), as diffusers does for `negative_prompt=None`.
    """

    conditional = True

    def __init__(self, parts: Components, *, name: str = "sd", height: int | None = None,
                 width: int | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", clip_skip: int = 0,
                 vae_batch_size: int = 8, vae_tiling: bool = False,
                 channels_last: bool = False, compile: bool = False,
                 original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0),
                 target_size: tuple[int, int] | None = None,
                 prompt_cache_size: int = 4096) -> None:
        self.parts, self.name, self.dtype = parts, name, dtype
        self.device = torch.device(device)
        self.vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        default = parts.unet.config.sample_size * self.vae_factor
        self.height, self.width = height or default, width or default
        for what, size in (("height", self.height), ("width", self.width)):
            if size % self.vae_factor:
                raise ValueError(f"{what} {size} is not a multiple of the VAE factor "
                                 f"{self.vae_factor}; use e.g. "
                                 f"{size // self.vae_factor * self.vae_factor}")
        if clip_skip < 0:
            raise ValueError(f"clip_skip must be >= 0, got {clip_skip}")
        if vae_batch_size < 1:
            raise ValueError(f"vae_batch_size must be >= 1, got {vae_batch_size}")
        self.clip_skip, self.vae_batch_size = clip_skip, vae_batch_size
        self.latent_shape = (parts.unet.config.in_channels, self.height // self.vae_factor,
                             self.width // self.vae_factor)
        self.time_ids = list((original_size or (self.height, self.width))
                             + tuple(crops_coords_top_left)
                             + (target_size or (self.height, self.width)))
        self.scheduler_config = {**parts.scheduler_config}
        # host memory, least recently used out first: XL embeddings are ~0.3 MB a prompt
        self._cache: OrderedDict[str, tuple[Tensor, Tensor | None]] = OrderedDict()
        self.prompt_cache_size = prompt_cache_size
        self._prepare(vae_tiling, channels_last)
        alphas_cumprod = DDPMScheduler.from_config(parts.scheduler_config).alphas_cumprod
        forward = torch.compile(parts.unet) if compile else parts.unet
        self._denoiser = DiscreteDDPMDenoiser(UNetNetwork(parts.unet, forward), alphas_cumprod,
                                              parts.prediction_type)

    def _prepare(self, vae_tiling: bool, channels_last: bool) -> None:
        p = self.parts
        for module in (p.unet, p.vae, *p.text_encoders):
            module.to(self.device).eval().requires_grad_(False)
            if module.dtype != self.dtype:  # loaders already cast; built modules may not be
                module.to(self.dtype)
        if (p.family == "sdxl" and self.dtype == torch.float16
                and p.vae.config.get("force_upcast", False)):
            p.vae.to(torch.float32)  # the XL VAE overflows in fp16; diffusers' XL upcasts too
        p.unet.set_attn_processor(AttnProcessor2_0())
        if channels_last:
            p.unet.to(memory_format=torch.channels_last)
        if vae_tiling:
            p.vae.enable_tiling()

    # -- text ---------------------------------------------------------------------------

    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """Embeddings [B, L, D] (and XL's pooled [B, P]) exactly as diffusers encodes them."""
        hidden, pooled = [], None
        xl = self.parts.family == "sdxl"
        for tok, enc in zip(self.parts.tokenizers, self.parts.text_encoders, strict=True):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids.to(self.device)
            out = enc(ids, output_hidden_states=True)
            if xl:
                if pooled is None and out[0].ndim == 2:
                    pooled = out[0]
                hidden.append(out.hidden_states[-(self.clip_skip + 2)])
            elif self.clip_skip:
                h = out.hidden_states[-(self.clip_skip + 1)]
                # transformers 5 dropped the `text_model` level of CLIPTextModel
                hidden.append(getattr(enc, "text_model", enc).final_layer_norm(h))
            else:
                hidden.append(out[0])
        dtype = self.parts.text_encoders[-1].dtype
        return torch.cat(hidden, dim=-1).to(dtype), pooled

    def embed(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """Cached embeddings of `prompts`: each distinct prompt is encoded once per model."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if new:
            with torch.inference_mode():
                hidden, pooled = self._encode(new)
            for i, p in enumerate(new):
                self._cache[p] = (hidden[i].cpu(), None if pooled is None else pooled[i].cpu())
        for p in prompts:
            self._cache.move_to_end(p)
        while len(self._cache) > self.prompt_cache_size:
            self._cache.popitem(last=False)
        rows = [self._cache[p] for p in prompts]
        hidden = torch.stack([h for h, _ in rows]).to(self.device)
        pooled = None if rows[0][1] is None else torch.stack([q for _, q in rows]).to(self.device)
        return hidden, pooled

    def _negative(self, negative: list[str], like: tuple[Tensor, Tensor | None]
                  ) -> tuple[Tensor, Tensor | None]:
        hidden, pooled = like
        if self.parts.force_zeros_for_empty_prompt and all(n == "" for n in negative):
            return torch.zeros_like(hidden), None if pooled is None else torch.zeros_like(pooled)
        return self.embed(negative)

    def _kwargs(self, hidden: Tensor, pooled: Tensor | None) -> dict[str, Any]:
        if self.parts.family != "sdxl":
            return {"encoder_hidden_states": hidden}
        time_ids = torch.tensor([self.time_ids], dtype=hidden.dtype, device=self.device)
        return {"encoder_hidden_states": hidden,
                "added_cond_kwargs": {"text_embeds": pooled,
                                      "time_ids": time_ids.expand(len(hidden), -1)}}

    def conditioning(self, prompts: list[str], negative: list[str]
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
        cond = self.embed(list(prompts))
        return self._kwargs(*cond), self._kwargs(*self._negative(list(negative), cond))

    # -- denoiser and decoder -----------------------------------------------------------

    def denoiser(self) -> DiscreteDDPMDenoiser:
        return self._denoiser

    def decode(self, latents: Tensor) -> Tensor:
        """Final latents -> images in [0, 1], decoded `vae_batch_size` at a time."""
        vae = self.parts.vae
        latents = latents.to(vae.dtype)
        mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(mean).view(shape).to(latents)
            std = torch.tensor(std).view(shape).to(latents)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        images = [vae.decode(chunk, return_dict=False)[0]
                  for chunk in latents.split(self.vae_batch_size)]
        return (torch.cat(images) / 2 + 0.5).clamp(0, 1)


def build(path: str, *, name: str = "sd", family: str = "auto", height: int | None = None,
          width: int | None = None, dtype: str = "fp32", device: str = "auto",
          local_files_only: bool = False, allow_pickle: bool = False,
          config: str | None = None, original_config: str | None = None,
          variant: str | None = None, **options: Any) -> LatentDiffusionModel:
    """A latent diffusion model from config (Hydra `_target_`): load, then wrap.

    `path` is a diffusers folder, a hub id or a single `.safetensors` checkpoint; `options`
    go to `LatentDiffusionModel` (clip_skip, vae_batch_size, vae_tiling, channels_last,
    compile, original_size, crops_coords_top_left, target_size, prompt_cache_size).
    """
    torch_dtype = resolve_dtype(dtype)
    parts = load(str(path), family=family, dtype=torch_dtype,
                 local_files_only=local_files_only, allow_pickle=allow_pickle, config=config,
                 original_config=original_config, variant=variant)
    return LatentDiffusionModel(parts, name=name, height=height, width=width,
                                dtype=torch_dtype, device=resolve_device(device), **options)


def bundled(asset: str = "tiny_shapes", **kwargs: Any) -> LatentDiffusionModel:
    """A model shipped inside the package, under `sdlab/assets/<asset>/` (diffusers format)."""
    from importlib import resources

    folder = resources.files("sdlab") / "assets" / asset
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"the bundled model {asset!r} is not installed (no sdlab/assets/{asset}/"
            "model_index.json); train it with the sdlab.shapes stages or pick another model")
    return build(str(folder), name=asset, **kwargs)


__all__ = ["LatentDiffusionModel", "ModelLoadError", "UNetNetwork", "build", "bundled",
           "resolve_device", "resolve_dtype"]
