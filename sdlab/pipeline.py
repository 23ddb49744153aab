"""sdlab's own inference loop: seeded latents -> guided denoiser -> sampler -> decoder.

Image i is generated from seed `seeds[i]`: its generator draws the initial latent, then
every noise its sampler asks for, so any batch size gives the same images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sdlab import noise, schedules
from sdlab.denoisers import Conditioned, Denoiser
from sdlab.guidance import CFGDenoiser, GuidanceRule
from sdlab.models.base import Model
from sdlab.samplers.diffusers_bridge import make_scheduler, sample_diffusers


class NonFiniteError(RuntimeError):
    """A sampler produced NaN or inf."""


@dataclass
class NativeSampling:
    """A native sampler function on a schedule function."""

    sampler: Callable[..., Tensor]
    schedule: Callable[..., Tensor]
    sampler_name: str = ""
    schedule_name: str = ""

    def sigmas(self, denoiser: Denoiser, steps: int) -> Tensor:
        return schedules.build(self.schedule, steps, sigma_min=denoiser.sigma_min,
                               sigma_max=denoiser.sigma_max, training_sigmas=denoiser.sigmas)

    def run(self, model: Model, denoiser: Denoiser, z: Tensor, gens: Sequence[torch.Generator],
            steps: int, callback: Callable[[dict], None] | None = None) -> Tensor:
        sigmas = self.sigmas(denoiser, steps)
        x = z * sigmas[0].item()
        return self.sampler(denoiser, x, sigmas, noise=noise.SeededNoise(gens, x),
                            callback=callback)


@dataclass
class DiffusersSampling:
    """A diffusers scheduler (by class name, plus config overrides) through the bridge."""

    scheduler: str
    config: dict[str, Any] = field(default_factory=dict)
    step_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. DDIM's eta
    _made: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def make(self, model: Model):
        """A fresh scheduler (they keep step counters), validated once per model config."""
        key = json.dumps(model.scheduler_config, sort_keys=True, default=str)
        if key not in self._made:
            self._made[key] = make_scheduler(self.scheduler, model.scheduler_config,
                                             **self.config)
            return self._made[key]
        made = self._made[key]
        return type(made).from_config(made.config)

    def run(self, model: Model, denoiser: Denoiser, z: Tensor, gens: Sequence[torch.Generator],
            steps: int, callback: Callable[[dict], None] | None = None) -> Tensor:
        return sample_diffusers(denoiser, z, self.make(model), steps, generators=gens,
                                callback=callback, step_kwargs=self.step_kwargs)


Sampling = NativeSampling | DiffusersSampling


@dataclass
class Batch:
    """One generated batch: which images, their final latents and decoded outputs."""

    indices: list[int]
    seeds: list[int]
    prompts: list[str] | None
    noise: Tensor
    latents: Tensor
    outputs: Tensor
    nfe: int
    uncond_evals: int


def guided(model: Model, prompts: list[str] | None, negative: list[str] | None,
           rule: GuidanceRule) -> Denoiser:
    """The model's denoiser for these prompts, wrapped in guidance when the model is conditional."""
    base = model.denoiser()
    if not model.conditional:
        return Conditioned(base)
    cond, uncond = model.conditioning(prompts, negative)
    return CFGDenoiser(base, rule, cond, uncond)


def generate(model: Model, sampling: Sampling, steps: int, seeds: Sequence[int], *,
             prompts: Sequence[str] | None = None, negative_prompt: str | Sequence[str] = "",
             guidance: GuidanceRule | None = None, batch_size: int = 16,
             callback: Callable[[dict], None] | None = None) -> Iterator[Batch]:
    """Generate one image per seed (with `prompts[i]` for a conditional model), in batches.

    `negative_prompt` is one string for every image or one per image. Inputs are checked
    here, before anything runs; the batches come lazily.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(seeds) == 0:
        raise ValueError("no seeds: pass one seed per image to generate")
    negatives = ([negative_prompt] * len(seeds) if isinstance(negative_prompt, str)
                 else list(negative_prompt))
    if model.conditional:
        if not prompts:
            raise ValueError("the prompt list is empty: a conditional model needs one prompt "
                             "per seed")
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds: a conditional "
                             "model needs one prompt per seed")
        if len(negatives) != len(seeds):
            raise ValueError(f"{len(negatives)} negative prompts for {len(seeds)} seeds: give "
                             "one string or one per seed")
    return _batches(model, sampling, steps, list(seeds), prompts, negatives,
                    guidance or GuidanceRule(1.0), batch_size, callback)


def _batches(model: Model, sampling: Sampling, steps: int, seeds: list[int],
             prompts: Sequence[str] | None, negatives: list[str], rule: GuidanceRule,
             batch_size: int, callback: Callable[[dict], None] | None) -> Iterator[Batch]:
    for start in range(0, len(seeds), batch_size):
        idx = list(range(start, min(start + batch_size, len(seeds))))
        batch_seeds = [int(seeds[i]) for i in idx]
        batch_prompts = [prompts[i] for i in idx] if prompts is not None else None
        gens = noise.generators(batch_seeds)
        z = noise.randn(gens, model.latent_shape, dtype=model.dtype, device=model.device)
        denoiser = guided(model, batch_prompts, [negatives[i] for i in idx], rule)
        denoiser.reset_nfe()
        with torch.inference_mode():
            latents = sampling.run(model, denoiser, z, gens, steps, callback)
            bad = (~torch.isfinite(latents.flatten(1))).any(1)
            if bad.any():
                raise NonFiniteError(
                    "the sampler produced NaN/inf for seeds "
                    f"{[s for s, b in zip(batch_seeds, bad.tolist(), strict=True) if b]}; "
                    "try more steps, a smaller guidance scale or a more stable sampler")
            outputs = model.decode(latents)
        yield Batch(idx, batch_seeds, batch_prompts, z, latents, outputs, denoiser.nfe,
                    getattr(denoiser, "uncond_evals", 0))
