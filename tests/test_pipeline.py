"""sdlab's latent diffusion loop against diffusers' pipelines on the same tiny modules.

Equivalence: fp32 on the CPU, same prompts, per-image generators, guidance, steps and
scheduler; images may differ by at most 1e-4.
"""
# ruff: noqa: F811  (pytest fixtures are imported, then named as arguments)

from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from tiny_models import (  # noqa: F401  (tiny_dirs, tiny_model: fixtures)
    reference_images,
    reference_pipeline,
    tiny_dirs,
    tiny_model,
)

from sdlab import samplers, schedules
from sdlab.guidance import CFGDenoiser, GuidanceRule, IntervalCFG
from sdlab.pipeline import DiffusersSampling, NativeSampling, generate
from sdlab.samplers import ode, sde

TOL = 1e-4
PROMPTS = ["a red circle", "a small blue square on the left"]
SEEDS = [3, 7]
BRIDGE = {
    "EulerDiscreteScheduler": {},
    "EulerAncestralDiscreteScheduler": {},
    "DPMSolverMultistepScheduler": {"use_karras_sigmas": True},
    "DDIMScheduler": {},
    "PNDMScheduler": {},
}


def images(model, sampling, steps=8, scale=5.0, prompts=PROMPTS, seeds=SEEDS, **kw):
    batches = list(generate(model, sampling, steps, seeds, prompts=prompts,
                            guidance=kw.pop("guidance", GuidanceRule(scale)), **kw))
    return torch.cat([b.outputs for b in batches]), batches


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# diffusers steps these on the raw v output of a v-prediction network (see below)
V_QUIRKS = {("sd2", "PNDMScheduler"), ("sd2", "DPMSolverMultistepScheduler")}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("scheduler", list(BRIDGE))
def test_bridge_matches_diffusers_pipeline(tiny_model, family, scheduler):
    model = tiny_model(family)
    ours, _ = images(model, DiffusersSampling(scheduler, BRIDGE[scheduler]))
    if (family, scheduler) in V_QUIRKS:
        with epsilon_network(model):
            ref = reference_images(model, scheduler, PROMPTS, SEEDS, 8, 5.0, BRIDGE[scheduler],
                                   prediction_type="epsilon")
    else:
        ref = reference_images(model, scheduler, PROMPTS, SEEDS, 8, 5.0, BRIDGE[scheduler])
    assert ours.shape == ref.shape == (2, 3, model.height, model.width)
    assert max_diff(ours, ref) <= TOL


@contextmanager
def epsilon_network(model):
    """The v-prediction U-Net presented to diffusers as the epsilon network it implies.

    The bridge hands every scheduler epsilon, converted from the network's output at the
    timestep where the network ran. diffusers instead gives schedulers the raw v: PNDM then
    combines v's of four timesteps and converts the sum with the current timestep's alphas,
    and DPM-Solver with Karras sigmas runs the network at the rounded timestep but converts v
    with the unrounded sigma. Both are linear-multistep-on-v choices, not the published
    methods on epsilon; on the epsilon network they coincide with what the bridge computes.
    """
    unet = model.parts.unet
    alphas_cumprod = model.denoiser().alphas_cumprod.to(torch.float32)

    def to_eps(module, args, kwargs, out):
        x_in, t = args[0], torch.as_tensor(args[1]).long()
        a = alphas_cumprod[t].sqrt()
        return (a * out[0] + (1 - a**2).sqrt() * x_in,)

    handle = unet.register_forward_hook(to_eps, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def test_native_euler_karras_matches_diffusers(tiny_model):
    """EulerDiscrete with Karras sigmas over the full training range ('linspace' spacing).

    With 'leading' spacing diffusers takes its Karras sigma_max from the largest leading
    timestep (e.g. t=951 at 20 steps), not from the model's sigma_max: a choice of range,
    not of method, so the test pins the spacing that uses the model's range.
    """
    model = tiny_model("sd1")
    native = NativeSampling(ode.euler, schedules.karras)
    ours, _ = images(model, native, steps=10)
    ref = reference_images(model, "EulerDiscreteScheduler", PROMPTS, SEEDS, 10, 5.0,
                           {"use_karras_sigmas": True, "timestep_spacing": "linspace"})
    assert max_diff(ours, ref) <= TOL


class RoundedTimesteps:
    """The network evaluated at the nearest integer timestep, as diffusers' DPM-Solver does."""

    def __init__(self, net) -> None:
        self.net = net

    def __call__(self, x_in, t, **cond):
        return self.net(x_in, t.round(), **cond)


@pytest.mark.parametrize("steps", [8, 16])
def test_native_dpmpp_2m_karras_matches_diffusers(tiny_model, monkeypatch, steps):
    """DPM-Solver++(2M) with Karras sigmas against DPMSolverMultistepScheduler.

    Two by-design differences of diffusers are reproduced here rather than copied into
    sdlab: (1) with Karras sigmas it rounds the timesteps it feeds the network to integers
    while stepping with the unrounded sigmas (sdlab evaluates the network at the exact
    sigma), and (2) it starts from x_T = z in VP space, i.e. z * sqrt(sigma_max^2 + 1) in
    VE space, where sdlab starts from z * sigma_max. Its first-order last step (into
    sigma = 0) is what dpmpp_2m does too; below 15 steps `lower_order_final` also makes the
    second-to-last step first order, so that flag is off here.
    """
    model = tiny_model("sd1")
    denoiser = model.denoiser()
    monkeypatch.setattr(denoiser, "model", RoundedTimesteps(denoiser.model))
    guided = CFGDenoiser(denoiser, GuidanceRule(5.0), *model.conditioning(PROMPTS, ["", ""]))
    sigmas = schedules.build("karras", steps, sigma_min=denoiser.sigma_min,
                             sigma_max=denoiser.sigma_max)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    z = torch.stack([torch.randn(model.latent_shape, generator=g) for g in gens])
    with torch.inference_mode():
        x0 = samplers.get("dpmpp_2m")(guided, z * math.sqrt(sigmas[0].item() ** 2 + 1), sigmas)
        ours = model.decode(x0)
    ref = reference_images(model, "DPMSolverMultistepScheduler", PROMPTS, SEEDS, steps, 5.0,
                           {"use_karras_sigmas": True, "lower_order_final": False})
    assert max_diff(ours, ref) <= TOL


@pytest.mark.parametrize("sampling", [
    NativeSampling(sde.euler_ancestral, schedules.karras),
    DiffusersSampling("EulerAncestralDiscreteScheduler"),
], ids=["native", "bridge"])
def test_batch_size_does_not_change_images(tiny_model, sampling):
    model = tiny_model("sd1")
    prompts = [f"shape {i}" for i in range(8)]
    seeds = list(range(100, 108))
    runs = [images(model, sampling, steps=4, prompts=prompts, seeds=seeds, batch_size=b)[0]
            for b in (1, 2, 8)]
    # float tolerance: CPU kernels may block a batch of 8 differently from a batch of 1
    assert max_diff(runs[0], runs[1]) <= 1e-5
    assert max_diff(runs[0], runs[2]) <= 1e-5


def test_noise_is_the_unit_initial_noise(tiny_model):
    model = tiny_model("sd1")
    _, batches = images(model, DiffusersSampling("EulerDiscreteScheduler"), steps=2)
    g = torch.Generator().manual_seed(SEEDS[1])
    assert torch.equal(batches[0].noise[1], torch.randn(model.latent_shape, generator=g))


def test_guidance_interval_covering_no_step_is_guidance_one(tiny_model):
    model = tiny_model("sd2")
    native = NativeSampling(ode.euler, schedules.karras)
    outside = IntervalCFG(5.0, sigma_lo=1e3, sigma_hi=2e3)
    ours, batches = images(model, native, steps=6, guidance=outside)
    plain, _ = images(model, native, steps=6, guidance=GuidanceRule(1.0))
    assert batches[0].nfe == 6 and batches[0].uncond_evals == 0
    assert torch.equal(ours, plain)


def test_guidance_interval_covering_all_steps_is_plain_cfg(tiny_model):
    model = tiny_model("sd2")
    native = NativeSampling(ode.euler, schedules.karras)
    everywhere = IntervalCFG(5.0, sigma_lo=0.0, sigma_hi=1e3)
    ours, batches = images(model, native, steps=6, guidance=everywhere)
    cfg, _ = images(model, native, steps=6, guidance=GuidanceRule(5.0))
    assert batches[0].nfe == 6 and batches[0].uncond_evals == 6
    assert torch.equal(ours, cfg)


def test_partial_interval_counts_only_guided_steps(tiny_model):
    model = tiny_model("sd1")
    native = NativeSampling(ode.euler, schedules.karras)
    sigmas = native.sigmas(model.denoiser(), 6)
    rule = IntervalCFG(5.0, sigma_lo=0.5, sigma_hi=5.0)
    _, batches = images(model, native, steps=6, guidance=rule)
    expected = sum(rule.active(s) for s in sigmas[:-1].tolist())
    assert 0 < expected < 6
    assert batches[0].nfe == 6 and batches[0].uncond_evals == expected


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_negative_prompt_matches_diffusers(tiny_model, family):
    model = tiny_model(family)
    negative = ["blurry", "ugly thing"]
    sampling = DiffusersSampling("DDIMScheduler")
    ours, _ = images(model, sampling, steps=4, negative_prompt=negative)
    ref = reference_images(model, "DDIMScheduler", PROMPTS, SEEDS, 4, 5.0,
                           negative_prompt=negative)
    assert max_diff(ours, ref) <= TOL


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_clip_skip_matches_diffusers(tiny_model, monkeypatch, family):
    """clip_skip on both branches; diffusers skips layers for the prompt only.

    diffusers encodes the negative prompt from the last layer whatever clip_skip says;
    sdlab (like A1111 and ComfyUI) encodes both branches the same way, so the reference
    gets its negative embeddings encoded like a prompt.
    """
    model = tiny_model(family, clip_skip=1)
    negative = ["blurry", "dark"]
    ours, _ = images(model, DiffusersSampling("EulerDiscreteScheduler"), steps=4,
                     negative_prompt=negative)
    # diffusers' SD pipeline still reads `text_model.final_layer_norm`, a level
    # transformers 5 removed from CLIPTextModel: give the reference what it looks for
    enc = model.parts.text_encoders[0]
    monkeypatch.setattr(enc, "text_model", SimpleNamespace(
        final_layer_norm=enc.final_layer_norm), raising=False)
    pipe = reference_pipeline(model, "EulerDiscreteScheduler")
    neg = pipe.encode_prompt(negative, device="cpu", num_images_per_prompt=1,
                             do_classifier_free_guidance=False, clip_skip=1)
    call = {"negative_prompt_embeds": neg[0]}
    if family == "sdxl":
        call["negative_pooled_prompt_embeds"] = neg[2]
    ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=5.0, clip_skip=1,
               generator=[torch.Generator().manual_seed(s) for s in SEEDS], height=model.height,
               width=model.width, output_type="pt", **call).images
    assert max_diff(ours, ref) <= TOL


def test_each_prompt_is_encoded_once(tiny_model):
    model = tiny_model("sd1", vae_batch_size=1)
    calls = []
    hook = model.parts.text_encoders[0].register_forward_hook(
        lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        for sampler in ("EulerDiscreteScheduler", "DDIMScheduler"):
            images(model, DiffusersSampling(sampler), steps=2, prompts=["p one", "p two"])
    finally:
        hook.remove()
    assert sum(calls) == 3  # two prompts and the empty negative, once each


def test_guidance_one_skips_the_unconditional_branch(tiny_model):
    model = tiny_model("sdxl")
    _, batches = images(model, NativeSampling(ode.euler, schedules.karras), steps=3, scale=1.0)
    assert batches[0].nfe == 3 and batches[0].uncond_evals == 0


def test_prompt_cache_keeps_the_most_recent_prompts(tiny_model):
    model = tiny_model("sd1", prompt_cache_size=2)
    first, _ = model.embed(["a", "b"])
    model.embed(["c"])
    assert list(model._cache) == ["b", "c"]
    again, _ = model.embed(["a", "b"])
    assert torch.equal(first, again) and list(model._cache) == ["a", "b"]


def test_xl_size_and_crop_conditioning_matches_diffusers(tiny_model):
    model = tiny_model("sdxl", original_size=(64, 48), crops_coords_top_left=(4, 2))
    ours, _ = images(model, DiffusersSampling("EulerDiscreteScheduler"), steps=4)
    ref = reference_images(model, "EulerDiscreteScheduler", PROMPTS, SEEDS, 4, 5.0,
                           original_size=(64, 48), crops_coords_top_left=(4, 2))
    assert max_diff(ours, ref) <= TOL
    plain, _ = images(tiny_model("sdxl"), DiffusersSampling("EulerDiscreteScheduler"), steps=4)
    assert max_diff(ours, plain) > TOL  # the time ids do reach the U-Net


def test_callback_sees_every_step(tiny_model):
    seen = []
    images(tiny_model("sd1"), NativeSampling(ode.euler, schedules.karras), steps=5,
           callback=lambda info: seen.append((info["i"], info["x"].shape)))
    assert [i for i, _ in seen] == list(range(5))
    assert all(shape == (2, *tiny_model("sd1").latent_shape) for _, shape in seen)
