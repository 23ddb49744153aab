"""Measure the shipped tiny_shapes model and write metrics.json plus its model card.

    python -m sdlab.shapes.evaluate --model sdlab/assets/tiny_shapes

Measures, on the held-out split: VAE reconstruction PSNR, tiny-CLIP text->image top-1
retrieval among 32 candidates, the checker's accuracy on real images, the shapes accuracy
and FD of generated images (DPM-Solver++(2M) with Karras sigmas through diffusers, at each
guidance), generation throughput, and FD of Euler with Karras sigmas at 2..32 steps.

FD is sdlab's own metric with the settings of `metrics=tiny_shapes` (`FeatureDistance`, the
tiny CLIP's `clip` and `clip_tokens` spaces, the 10000-image held-out reference). Its floor:
the FD of real held-out images outside the reference, in sets as large as the generated ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

from sdlab.metrics import paired_difference
from sdlab.metrics.extractors import CLIPFeatures
from sdlab.metrics.features import FeatureDistance
from sdlab.metrics.reference import ShapesImages
from sdlab.shapes.checker import shapes_report
from sdlab.shapes.dataset import get_batch
from sdlab.shapes.export import ASSET_DIR, write_model_card
from sdlab.shapes.train_clip import retrieval_top1
from sdlab.shapes.train_vae import reconstruct, reconstruction_psnr

# as configs/metrics/tiny_shapes.yaml: the spaces and the reference of `metrics=tiny_shapes`
FD_SPACES = {"clip": {}, "clip_tokens": {"features": "tokens", "normalize": False}}
FLOOR_SETS = 4


class FrechetDistances:
    """sdlab's FD of a set of images in each tiny-CLIP space, against the held-out reference."""

    def __init__(self, clip_dir: Path, reference: ShapesImages):
        self.reference = reference
        self.extractors = {
            space: CLIPFeatures(str(clip_dir), device="cpu", **kw)
            for space, kw in FD_SPACES.items()
        }
        self.floors: dict[int, dict[str, list[float]]] = {}  # set size -> space -> values

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        out = {}
        for metric in self.metrics(images, keep_features=False):
            out |= metric.compute()
        return out

    def metrics(self, images: torch.Tensor, keep_features: bool = True) -> list[FeatureDistance]:
        """One FD metric per space, fed with `images` (image ids 0..N-1, for pairing)."""
        out = []
        for extractor in self.extractors.values():
            metric = FeatureDistance(
                extractor, self.reference, metrics=["fd"], keep_features=keep_features
            )
            metric.update(SimpleNamespace(outputs=images, indices=list(range(len(images)))))
            out.append(metric)
        return out

    def measure_floor(self, n: int, seed: int) -> None:
        """FD of FLOOR_SETS disjoint sets of n real held-out images from outside the reference."""
        first = self.reference.n
        floors = self.floors.setdefault(n, {})
        for k in range(FLOOR_SETS):
            real = get_batch(range(first + k * n, first + (k + 1) * n), "heldout", seed)[0]
            for name, value in self(real).items():
                floors.setdefault(name, []).append(value)

    def floor(self, name: str, n: int) -> float:
        """The floor for sets of n images (FD's bias shrinks with n: compare like with like)."""
        return statistics.mean(self.floors[n][name])

    def described(self, values: dict[str, float], n: int) -> str:
        """'fd_clip 0.0081 (1.05x floor), ...' for FD values of n images."""
        return ", ".join(
            f"{name} {value:.4g} ({value / self.floor(name, n):.2f}x the {n}-image floor)"
            for name, value in values.items()
        )


def floor_rows(fd: FrechetDistances, n: int) -> list[dict]:
    first = fd.reference.n
    rows = []
    for name, values in fd.floors[n].items():
        rows.append(
            row(
                f"{name} data-vs-data floor, {n} images",
                fd.floor(name, n),
                f"mean of {len(values)} disjoint sets of {n} real held-out images (items {first}-"
                f"{first + len(values) * n - 1}) vs the {first}-image reference; range "
                f"{min(values):.4g}-{max(values):.4g}",
            )
        )
    return rows


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


def generation_rows(
    pipe, captions: list[str], steps: int, guidances: list[float], fd: FrechetDistances
) -> list[dict]:
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
        distances = fd(images)
        for name, value in distances.items():
            rows.append(
                row(
                    f"{name}, generated (cfg {guidance:g})",
                    value,
                    f"{setting}; {value / fd.floor(name, len(captions)):.2f}x the data-vs-data "
                    "floor",
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


def euler_rows(
    pipe, captions: list[str], steps: list[int], guidance: float, fd: FrechetDistances
) -> list[dict]:
    """Euler with Karras sigmas at each step count: FD in both spaces and shapes accuracy,
    then each step count's FD minus the next one's with a paired 95% bootstrap interval (the
    same seeds at every step count, so resampling the same images cancels shared noise)."""
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True
    )
    rows, kept = [], []
    for n in steps:
        images = generate(pipe, captions, steps=n, guidance=guidance)
        kept.append(fd.metrics(images))
        distances = {k: v for m in kept[-1] for k, v in m.compute().items()}
        accuracy = shapes_report(images, captions)["correct"].mean().item()
        rows.append(
            row(
                f"fd_clip_tokens, Euler karras {n} steps (cfg {guidance:g})",
                distances["fd_clip_tokens"],
                f"{len(captions)} held-out prompts; {fd.described(distances, len(captions))}; "
                f"shapes accuracy {accuracy:.3f}",
            )
        )
    for i in range(len(steps) - 1):
        (n, a), (m, b) = (steps[i], kept[i]), (steps[i + 1], kept[i + 1])
        for metric_a, metric_b in zip(a, b, strict=True):
            for name, (diff, lo, hi) in paired_difference(metric_a, metric_b).items():
                rows.append(
                    row(
                        f"{name}, Euler {n} steps minus {m} steps",
                        diff,
                        f"paired basic bootstrap 95% interval [{lo:.4g}, {hi:.4g}] "
                        f"({len(captions)} images, 1000 resamples)",
                    )
                )
    return rows


def row(name: str, value: float, setting: str) -> dict:
    return {"name": name, "value": float(f"{value:.4g}"), "setting": setting}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ASSET_DIR)
    parser.add_argument("--n-real", type=int, default=1024)
    parser.add_argument(
        "--n-generated", type=int, default=512, help="prompts: the first held-out captions"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.5])
    parser.add_argument(
        "--euler-steps",
        type=int,
        nargs="+",
        default=[2, 4, 8, 16, 32],
        help="step counts of the Euler/Karras FD series",
    )
    parser.add_argument("--euler-guidance", type=float, default=3.0)
    parser.add_argument(
        "--euler-images", type=int, default=2048, help="prompts of the Euler series (paired)"
    )
    parser.add_argument(
        "--reference-n", type=int, default=10_000, help="FD reference images (tiny_shapes: 10000)"
    )
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
    fd = FrechetDistances(args.model / "clip", ShapesImages(args.reference_n, "heldout", args.seed))
    for n in sorted({args.n_generated, args.euler_images}):
        fd.measure_floor(n, args.seed)
        rows += floor_rows(fd, n)
    first_floor_set = get_batch(
        range(args.reference_n, args.reference_n + args.n_generated), "heldout", args.seed
    )[0]
    recon = fd(reconstruct(pipe.vae, first_floor_set))
    rows.append(
        row(
            "fd_clip_tokens of VAE reconstructions",
            recon["fd_clip_tokens"],
            f"{args.n_generated} real held-out images (the first floor set) through encode and "
            f"decode; {fd.described(recon, args.n_generated)}",
        )
    )
    prompts = get_batch(range(args.n_generated), "heldout", args.seed)[1]
    rows += generation_rows(pipe, prompts, args.steps, args.guidance, fd)
    euler_prompts = get_batch(range(args.euler_images), "heldout", args.seed)[1]
    rows += euler_rows(pipe, euler_prompts, args.euler_steps, args.euler_guidance, fd)
    command = "python -m sdlab.shapes.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
    metrics = {"rows": rows, "command": command.strip(), "wall_s": time.time() - start}
    (args.model / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(args.model)
    for r in rows:
        print(f"{r['name']}: {r['value']} ({r['setting']})")


if __name__ == "__main__":
    main()
