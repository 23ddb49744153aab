"""What a model is to sdlab: a denoiser, a latent shape, conditioning and a decoder."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from sdlab.denoisers import Denoiser


class Model(Protocol):
    """A generative model as the pipeline drives it.

    `conditioning(prompts, negative)` returns the keyword arguments that make the denoiser
    conditional, for the prompts and for the unconditional/negative branch; an unconditional
    model returns two empty dicts and ignores guidance. `decode` turns final latents into the
    model's output space (images in [0, 1] for latent diffusion; the samples themselves for
    the analytic model). `scheduler_config` is the base config of diffusers schedulers.
    """

    name: str
    latent_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    conditional: bool
    scheduler_config: dict[str, Any]

    def denoiser(self) -> Denoiser: ...

    def conditioning(self, prompts: list[str], negative: list[str]
                     ) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def decode(self, latents: Tensor) -> Tensor: ...
