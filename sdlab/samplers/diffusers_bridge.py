"""Drive any diffusers scheduler on an sdlab denoiser.

The scheduler sees an epsilon-predicting discrete model: at each of its timesteps the
bridge maps `t` to sigma with the denoiser's own log-sigma interpolation, lifts the
scheduler's model input back to VE space, calls the denoiser (so guidance, counting and
every wrapper apply unchanged), and returns `eps = (x - D) / sigma`. For an epsilon network
this reproduces the network's output, so the bridge reproduces diffusers' pipelines.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import diffusers
import torch
from torch import Tensor

from sdlab.denoisers import Denoiser
from sdlab.registry import UnknownNameError

# Stable Diffusion 1.x's scheduler config: the base for models that bring none of their own.
SD_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                       "beta_schedule": "scaled_linear", "clip_sample": False,
                       "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}


# Schedulers the bridge refuses, with the one-line reason: they do not sample a discrete
# epsilon/VP model from noise (token/VQ models, flow matching, inversion, other APIs).
UNFIT = {
    "AmusedScheduler": "masked-token (VQ) generation, not a Gaussian diffusion",
    "BlockRefinementScheduler": "commits discrete tokens from logits, not a Gaussian diffusion",
    "CMStochasticIterativeScheduler": "consistency-model sampler for an EDM-preconditioned "
                                      "consistency network, not an eps model",
    "CogVideoXDDIMScheduler": "CogVideoX's SNR-shifted schedule (snr_shift_scale) differs "
                              "from the model's; use DDIMScheduler",
    "CogVideoXDPMScheduler": "CogVideoX's SNR-shifted schedule and two-timestep step() API; "
                             "use DPMSolverMultistepScheduler",
    "DDIMInverseScheduler": "inverts images into noise; it does not sample",
    "DDPMWuerstchenScheduler": "Wuerstchen's continuous cosine schedule, not training timesteps",
    "DPMSolverMultistepInverseScheduler": "inverts images into noise; it does not sample",
    "DiscreteDDIMScheduler": "discrete-token (D3PM) diffusion, not a Gaussian diffusion",
    "EDMDPMSolverMultistepScheduler": "EDM preconditioning: timesteps are c_noise(sigma) of a "
                                      "continuous model; use the native samplers",
    "EDMEulerScheduler": "EDM preconditioning: timesteps are c_noise(sigma) of a continuous "
                         "model; use the native euler",
    "EntropyBoundScheduler": "discrete-token diffusion, not a Gaussian diffusion",
    "FlowMapEulerDiscreteScheduler": "flow-map (rectified-flow) models, not eps/VP",
    "FlowMatchEulerDiscreteScheduler": "flow-matching models, not eps/VP",
    "FlowMatchHeunDiscreteScheduler": "flow-matching models, not eps/VP",
    "FlowMatchLCMScheduler": "flow-matching models, not eps/VP",
    "HeliosDMDScheduler": "Helios video flow-matching pipeline only",
    "HeliosScheduler": "Helios video flow-matching pipeline only",
    "IPNDMScheduler": "its own fixed trigonometric schedule, not the model's betas",
    "KarrasVeScheduler": "two-call VE API (add_noise_to_input, step_correct) without betas",
    "LTXEulerAncestralRFScheduler": "rectified-flow models, not eps/VP",
    "MiniMaxH3Scheduler": "rectified-flow models, not eps/VP",
    "PiflowScheduler": "policy-based flow models (distilled Kandinsky), not eps/VP",
    "RFD4ProteinaScheduler": "protein-structure flow model, not an image diffusion",
    "RePaintScheduler": "inpainting: step() needs the original image and mask",
    "SCMScheduler": "TrigFlow continuous-time consistency models, not eps/VP",
    "ScoreSdeVeScheduler": "predictor-corrector VE-SDE API (step_pred, step_correct)",
    "UnCLIPScheduler": "only the squaredcos_cap_v2 betas of unCLIP/Karlo",
    "VQDiffusionScheduler": "vector-quantised token diffusion, not a Gaussian diffusion",
}


def scheduler_names() -> list[str]:
    """Every scheduler class the installed diffusers exports (fit for the bridge or not)."""
    return sorted(
        name for name in dir(diffusers)
        if name.endswith("Scheduler") and isinstance(getattr(diffusers, name, None), type)
        and issubclass(getattr(diffusers, name), diffusers.SchedulerMixin)
    )


def fitting_scheduler_names() -> list[str]:
    """The schedulers the bridge drives: samplers for a discrete epsilon/VP model.

    A class missing from both lists (a newer diffusers) is tried; classes that diffusers
    exports only as placeholders (e.g. DPMSolverSDEScheduler without torchsde) are absent.
    """
    return [name for name in scheduler_names() if name not in UNFIT]


def make_scheduler(name: str, base_config: dict[str, Any] | None = None, **overrides: Any):
    """A diffusers scheduler by class name, from a model's scheduler config plus overrides."""
    if name not in scheduler_names():
        raise UnknownNameError(
            f"unknown diffusers scheduler {name!r}; valid: {', '.join(scheduler_names())}")
    if name in UNFIT:
        raise ValueError(f"{name} does not fit the bridge: {UNFIT[name]}")
    cls = getattr(diffusers, name)
    config = {**SD_SCHEDULER_CONFIG, **(base_config or {}), **overrides}
    if "prediction_type" in overrides and overrides["prediction_type"] != "epsilon":
        raise ValueError("the bridge feeds schedulers epsilon predictions; "
                         "drop the prediction_type override (the denoiser knows the model's)")
    config["prediction_type"] = "epsilon"
    known = set(inspect.signature(cls.__init__).parameters)
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"{name} has no option(s) {sorted(unknown)}; it takes {sorted(known)}")
    return cls.from_config({k: v for k, v in config.items() if k in known})


def sample_diffusers(denoiser: Denoiser, z: Tensor, scheduler, steps: int, *,
                     generators: Sequence[torch.Generator] | None = None,
                     callback: Callable[[dict], None] | None = None,
                     step_kwargs: dict[str, Any] | None = None) -> Tensor:
    """Run `scheduler` for `steps` from unit noise `z`; returns the final sample.

    `step_kwargs` go to every `scheduler.step` call (e.g. DDIM's `eta`), as diffusers'
    pipelines pass their extra step arguments.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler.set_timesteps(steps)
    step_kwargs = dict(step_kwargs or {})
    if generators is not None and "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = list(generators)
    x = z * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        sigma = float(denoiser.t_to_sigma(torch.as_tensor(t)))
        x_ve = x_in * math.sqrt(sigma**2 + 1)
        # sigma on the latents' device: a host tensor would be copied (and waited for) each step
        denoised = denoiser(x_ve, torch.full((x.shape[0],), sigma, dtype=torch.float64,
                                             device=x.device))
        eps = (x_ve - denoised) / sigma
        if callback is not None:
            sigma_next = (float(denoiser.t_to_sigma(torch.as_tensor(timesteps[i + 1])))
                          if i + 1 < len(timesteps) else 0.0)
            callback({"i": i, "x": x_ve, "sigma": sigma, "sigma_next": sigma_next,
                      "denoised": denoised, "t": t})
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x
