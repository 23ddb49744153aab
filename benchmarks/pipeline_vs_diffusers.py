"""Images/s of sdlab's loop vs diffusers' pipeline on the very same modules.

    python benchmarks/pipeline_vs_diffusers.py [--repeats 5] [--out benchmarks/results/...]

Both run the same U-Net, text encoder and VAE objects, the same scheduler, steps, guidance,
batch and seeds, interleaved in one process (sdlab, diffusers, sdlab, ...), so drifting
machine load hits both alike. Cases: the tiny SD 1.x model on the CPU (one thread, fp32) and,
when CUDA is present, an SD 1.5-sized model with random weights in fp16 at 512 px.

"Non-model time" is everything except the U-Net, text encoder and VAE-decoder forwards,
measured in separate instrumented runs (forward hooks; on CUDA they synchronise, which
would slow the timed runs) as a share of generation time. sdlab's prompt cache is cleared
before each run so both encode the prompts every time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from sdlab import samplers, schedules
from sdlab.guidance import GuidanceRule
from sdlab.models import tiny
from sdlab.models.loading import Components
from sdlab.models.sd import LatentDiffusionModel, build
from sdlab.pipeline import DiffusersSampling, NativeSampling, generate

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                    set_alpha_to_one=False, skip_prk_steps=True)


@dataclass
class Case:
    name: str
    model: LatentDiffusionModel
    batch: int
    steps: int
    scale: float = 7.5


def tiny_case(folder: Path) -> Case:
    tiny.save_tiny(folder, "sd1")
    model = build(str(folder), height=32, width=32, device="cpu")
    return Case("CPU tiny SD1.x, fp32, 32 px, 1 thread", model, batch=4, steps=20)


def sd15_case(device: str = "cuda", dtype: torch.dtype = torch.float16, size: int = 512,
              steps: int = 20) -> Case:
    """An SD 1.5-sized model (860M U-Net, ViT-L text encoder, 4-level VAE), random weights."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny.tokenizer(Path(tmp))
    tok.model_max_length = 77
    unet = diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    parts = Components("sd", unet, vae, [tok], [text], dict(SD_SCHEDULER), "epsilon")
    model = LatentDiffusionModel(parts, name="sd15-random", height=size, width=size,
                                 dtype=dtype, device=device)
    label = str(dtype).removeprefix("torch.")
    return Case(f"{device} SD1.5-sized (random weights), {label}, {size} px", model, batch=4,
                steps=steps)


def diffusers_pipeline(model: LatentDiffusionModel, scheduler):
    p = model.parts
    pipe = diffusers.StableDiffusionPipeline(
        unet=p.unet, vae=p.vae, text_encoder=p.text_encoders[0], tokenizer=p.tokenizers[0],
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def setups(model: LatentDiffusionModel):
    """(label, sdlab sampling, diffusers scheduler) pairs that compute the same thing."""
    config = {**model.scheduler_config, "prediction_type": "epsilon"}
    euler = diffusers.EulerDiscreteScheduler.from_config(config)
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True)
    return [
        ("Euler (bridge)", DiffusersSampling("EulerDiscreteScheduler"), euler),
        ("DPM++ 2M Karras (native dpmpp_2m + karras)",
         NativeSampling(samplers.get("dpmpp_2m"), schedules.karras), dpm),
    ]


class ModelClock:
    """Wall time inside the U-Net, text encoder and VAE decoder forwards (hooks)."""

    def __init__(self, model: LatentDiffusionModel) -> None:
        p = model.parts
        self.modules = [p.unet, *p.text_encoders, p.vae.post_quant_conv, p.vae.decoder]
        self.cuda = model.device.type == "cuda"
        self.total, self._start, self.handles = 0.0, 0.0, []

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __enter__(self) -> ModelClock:
        def pre(*_):
            self._sync()
            self._start = time.perf_counter()

        def post(*_):
            self._sync()
            self.total += time.perf_counter() - self._start

        for m in self.modules:
            self.handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def timed(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(case: Case, label: str, sampling, scheduler, repeats: int) -> dict:
    model, cuda = case.model, case.model.device.type == "cuda"
    prompts = [f"a photo of shape {i}" for i in range(case.batch)]
    seeds = list(range(case.batch))
    pipe = diffusers_pipeline(model, scheduler)

    def ours():
        model._cache.clear()
        next(generate(model, sampling, case.steps, seeds, prompts=prompts,
                      guidance=GuidanceRule(case.scale), batch_size=case.batch))

    def theirs():
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.inference_mode():
            pipe(prompts, num_inference_steps=case.steps, guidance_scale=case.scale,
                 generator=gens, height=model.height, width=model.width, output_type="pt")

    ours(), theirs()  # warm-up (kernels, allocator)
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, cuda))
        t_theirs.append(timed(theirs, cuda))
    share = {}
    for who, fn in (("sdlab", ours), ("diffusers", theirs)):
        with ModelClock(model) as clock:
            total = timed(fn, cuda)
        share[who] = 100 * (total - clock.total) / total
    med_ours, med_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    return {"case": case.name, "setup": label, "batch": case.batch, "steps": case.steps,
            "sdlab_ips": case.batch / med_ours, "diffusers_ips": case.batch / med_theirs,
            "ratio": med_theirs / med_ours, "ratio_best": min(t_theirs) / min(t_ours),
            "sdlab_nonmodel_pct": share["sdlab"],
            "diffusers_nonmodel_pct": share["diffusers"]}


def markdown(rows: list[dict], repeats: int) -> str:
    lines = [
        "# sdlab pipeline vs diffusers pipeline",
        "",
        f"Generated by `python benchmarks/pipeline_vs_diffusers.py` ({repeats} interleaved "
        "repeats per row, medians; guidance 7.5, so every step is one batched CFG forward).",
        f"torch {torch.__version__}, diffusers {diffusers.__version__}; "
        f"{os.cpu_count()} CPU cores shared with other jobs, torch threads "
        f"{torch.get_num_threads()}; "
        + (f"GPU {torch.cuda.get_device_name()}." if torch.cuda.is_available()
           else "no CUDA device here, so the SD1.5-sized fp16 case did not run."),
        "",
        "| case | sampler | batch | steps | sdlab img/s | diffusers img/s | ratio | "
        "ratio (best runs) | sdlab non-model % | diffusers non-model % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['setup']} | {r['batch']} | {r['steps']} | "
            f"{r['sdlab_ips']:.2f} | {r['diffusers_ips']:.2f} | {r['ratio']:.3f} | "
            f"{r['ratio_best']:.3f} | "
            f"{r['sdlab_nonmodel_pct']:.2f} | {r['diffusers_nonmodel_pct']:.2f} |")
    lines += ["", "ratio = sdlab images/s / diffusers images/s from median times (goal >= 1.00); "
              "ratio (best runs) uses each side's fastest run, the least disturbed by other "
              "load; non-model % = time outside U-Net, text-encoder and VAE-decoder forwards "
              "(goal <= 2%), from one instrumented run each."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpu-only", action="store_true", help="skip the tiny CPU case")
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared CPU cores: one thread keeps the timings steady
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        cases = [] if args.gpu_only else [tiny_case(Path(tmp) / "tiny_sd1")]
        if torch.cuda.is_available() and not args.cpu_only:
            cases.append(sd15_case())
        for case in cases:
            for label, sampling, scheduler in setups(case.model):
                rows.append(compare(case, label, sampling, scheduler, args.repeats))
                print(rows[-1], flush=True)
    text = markdown(rows, args.repeats)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
