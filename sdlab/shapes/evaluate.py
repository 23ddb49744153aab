"""Measure the shipped tiny_shapes model and write metrics.json plus its model card.

    python -m sdlab.shapes.evaluate --model sdlab/assets/tiny_shapes

Measures, on the held-out split: VAE reconstruction PSNR, tiny-CLIP text->image top-1
retrieval among 32 candidates, the checker's accuracy on real images, and the shapes accuracy
of generated images (DPM-Solver++(2M) with Karras sigmas through diffusers, at the chosen
guidance and at guidance 1), plus generation throughput.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

from sdlab.shapes.checker import shapes_report
from sdlab.shapes.dataset import get_batch
from sdlab.shapes.export import ASSET_DIR, write_model_card
from sdlab.shapes.train_clip import retrieval_top1
from sdlab.shapes.train_vae import reconstruct, reconstruction_psnr


def dpmpp_2m_karras(pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """The pipeline with diffusers' DPM-Solver++(2M) on Karras sigmas."""
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", use_karras_sigmas=True
    )
    return pipe


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    captions: list[str],
    *,
    steps: int = 20,
    guidance: float = 4.0,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Images [B, 3, 32, 32] in [0, 1]; image i uses its own generator seeded `seed + i`."""
    images = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="pt",
            return_dict=True,
        )
        images.append(out.images)
    return torch.cat(images).float().clamp(0, 1)


def generation_rows(pipe, captions: list[str], steps: int, guidances: list[float]) -> list[dict]:
    rows = []
    for guidance in guidances:
        start = time.time()
        images = generate(pipe, captions, steps=steps, guidance=guidance)
        seconds = time.time() - start
        report = shapes_report(images, captions)
        detail = ", ".join(f"{k} {v.mean():.3f}" for k, v in report.items() if k != "correct")
        setting = f"{len(captions)} held-out prompts, dpmpp_2m karras {steps} steps, cfg {guidance}"
        rows.append(
            row(
                f"shapes accuracy, generated (cfg {guidance:g})",
                report["correct"].mean().item(),
                f"{setting}; {detail}",
            )
        )
        rows.append(
            row(
                f"throughput (cfg {guidance:g}), images/s",
                len(captions) / seconds,
                f"{setting}, batch 64, torch threads {torch.get_num_threads()}",
            )
        )
    return rows


def row(name: str, value: float, setting: str) -> dict:
    return {"name": name, "value": round(value, 4), "setting": setting}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ASSET_DIR)
    parser.add_argument("--n-real", type=int, default=1024)
    parser.add_argument(
        "--n-generated", type=int, default=512, help="prompts: the first held-out captions"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 2 is full speed on a 2-core machine"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    images, captions, _ = get_batch(range(args.n_real), "heldout", args.seed)
    pipe = dpmpp_2m_karras(StableDiffusionPipeline.from_pretrained(args.model))
    pipe.set_progress_bar_config(disable=True)
    clip = CLIPModel.from_pretrained(args.model / "clip").eval()
    held = f"{args.n_real} held-out images"
    rows = [
        row("VAE reconstruction PSNR (dB)", reconstruction_psnr(pipe.vae, images), held),
        row(
            "CLIP text->image top-1 among 32",
            retrieval_top1(
                clip, CLIPTokenizer.from_pretrained(args.model / "clip"), images, captions
            ),
            held,
        ),
        row(
            "checker accuracy on real images",
            shapes_report(images, captions)["correct"].mean().item(),
            held,
        ),
        row(
            "checker accuracy on VAE reconstructions (ceiling for generated images)",
            shapes_report(reconstruct(pipe.vae, images), captions)["correct"].mean().item(),
            held,
        ),
    ]
    prompts = get_batch(range(args.n_generated), "heldout", args.seed)[1]
    rows += generation_rows(pipe, prompts, args.steps, args.guidance)
    command = "python -m sdlab.shapes.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
    metrics = {"rows": rows, "command": command.strip(), "wall_s": time.time() - start}
    (args.model / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(args.model)
    for r in rows:
        print(f"{r['name']}: {r['value']} ({r['setting']})")


if __name__ == "__main__":
    main()
