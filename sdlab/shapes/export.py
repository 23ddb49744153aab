"""Stage 5: assemble the trained stages into the shipped diffusers folder and its model card.

    python -m sdlab.shapes.export --out sdlab/assets/tiny_shapes

Writes a StableDiffusionPipeline folder (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/; no safety checker), the full CLIP in transformers format under clip/,
training.json (each stage's steps, wall time and arguments) and MODEL_CARD.md. The card's
measured numbers come from metrics.json, written by `python -m sdlab.shapes.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPModel, CLIPTokenizer

from sdlab.shapes.train_unet import SCHEDULER_CONFIG, text_encoder_from_clip

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_shapes"
STAGES = ("clip", "vae", "vae_decoder", "unet")  # the tokenizer stage has no training record


def export(train_dir: Path, out: Path) -> StableDiffusionPipeline:
    """Save the pipeline of the stages in `train_dir` (tokenizer/, clip/, vae_decoder/, unet/)."""
    clip_dir = train_dir / "clip" / "final"
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(train_dir / "vae_decoder" / "final"),
        text_encoder=text_encoder_from_clip(clip_dir),
        tokenizer=CLIPTokenizer.from_pretrained(train_dir / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(train_dir / "unet" / "final"),
        # SD 1.x's inference defaults: "leading" spacing with steps_offset 1
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(train_dir / "tokenizer" / name, out / "tokenizer" / name)
    CLIPModel.from_pretrained(clip_dir).save_pretrained(out / "clip")
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(clip_dir / name, out / "clip" / name)
    training = {
        stage: json.loads((train_dir / stage / "train_info.json").read_text()) for stage in STAGES
    }
    notes = train_dir / "NOTES.md"  # how the run deviated from the plain commands, if it did
    training["notes"] = notes.read_text().strip() if notes.exists() else ""
    (out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    write_model_card(out)
    return pipe


def _stage_row(name: str, info: dict, what: str) -> str:
    a = info["args"]
    return (
        f"| {name} | {what} | {info['steps']} x {a['batch_size']} | {a['lr']} | "
        f"{info['wall_s'] / 60:.1f} min | {a['threads']} |"
    )


def write_model_card(out: Path) -> None:
    """MODEL_CARD.md from training.json and, when present, metrics.json (never typed by hand)."""
    training = json.loads((out / "training.json").read_text())
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*.safetensors")}
    total_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    unet = json.loads((out / "unet" / "config.json").read_text())
    vae = json.loads((out / "vae" / "config.json").read_text())
    lines = [
        "# tiny_shapes: a tiny, really trained Stable-Diffusion-style model",
        "",
        "Same anatomy as Stable Diffusion 1.x at toy scale, trained from scratch on the",
        "procedural shapes dataset (`sdlab.shapes.dataset`: 32x32 images of one or two shapes,",
        'captions such as "a small red circle on the left and a large blue square on the right").',
        "Every number below is written by `python -m sdlab.shapes.export` (training) and",
        "`python -m sdlab.shapes.evaluate` (measurements); rerun those instead of editing.",
        "",
        "## Components",
        "",
        f"- `vae/`: AutoencoderKL 32x32x3 <-> 8x8x4, block_out_channels "
        f"{vae['block_out_channels']}, scaling_factor {vae['scaling_factor']:.5f}.",
        f"- `unet/`: UNet2DConditionModel, block_out_channels {unet['block_out_channels']}, "
        f"{unet['layers_per_block']} layer per block, cross-attention at the lowest resolution "
        f"and in the middle block, cross_attention_dim {unet['cross_attention_dim']}; EMA weights.",
        "- `text_encoder/`: the text tower of the tiny CLIP (CLIPTextModel), frozen during UNet",
        "  training; `tokenizer/`: word-level CLIPTokenizer over the grammar, model_max_length 32.",
        "- `scheduler/`: EulerDiscreteScheduler with SD's betas (scaled_linear 0.00085 -> 0.012,",
        "  1000 steps), epsilon prediction.",
        "- `clip/`: the full tiny CLIPModel (transformers), for image features, FD/CMMD and CLIP",
        "  score; images enter it as `image * 2 - 1` at 32x32.",
        "- weights (safetensors, fp32): "
        + ", ".join(f"{k} {v / 2**20:.1f} MB" for k, v in sorted(sizes.items()))
        + f"; folder total {total_mb:.1f} MB.",
        "",
        "## Training (2-core CPU, fp32; one command per stage, fixed seed 0)",
        "",
        "| stage | what | steps x batch | lr | wall time | --threads |",
        "| --- | --- | --- | --- | --- | --- |",
        "| tokenizer | BPE merges from the grammar's 22 words | - | - | seconds | - |",
        _stage_row("clip", training["clip"], "contrastive (symmetric InfoNCE)"),
        _stage_row("vae", training["vae"], "squared error + 1e-6 KL"),
        _stage_row("vae_decoder", training["vae_decoder"], "decoder only, encoder frozen"),
        _stage_row("unet", training["unet"], "epsilon MSE, 10% empty captions, EMA"),
        "",
        "Wall times were measured on a shared 2-core machine while other jobs ran, with the",
        "`--threads` shown; `--threads 2` is full speed on an idle 2-core machine. Commands:",
        "",
        "```",
        "python -m sdlab.shapes.train_tokenizer",
        "python -m sdlab.shapes.train_clip " + _flags(training["clip"]),
        "python -m sdlab.shapes.train_vae " + _flags(training["vae"]),
        "python -m sdlab.shapes.train_vae --finetune-decoder .train/vae/final --out "
        + ".train/vae_decoder "
        + _flags(training["vae_decoder"]),
        "python -m sdlab.shapes.train_unet " + _flags(training["unet"]),
        "python -m sdlab.shapes.export",
        "python -m sdlab.shapes.evaluate",
        "```",
        "",
    ]
    lines += [training["notes"], ""] if training["notes"] else []
    lines += [
        "## Measured",
        "",
        "FD rows use sdlab's own metric with the settings of `metrics=tiny_shapes`: the tiny",
        "CLIP's projected image embedding (`fd_clip`, CMMD's space) and the mean of its vision",
        "tower's last-layer patch tokens (`fd_clip_tokens`), against 10000 held-out images. The",
        "data-vs-data floor is the FD of real held-out images from outside the reference, in",
        "sets as large as the generated ones. The embedding keeps what captions say and sits at",
        "its floor as soon as the content is right; the patch tokens also see edges and shading.",
        "",
    ]
    if metrics is None:
        lines.append("Not measured yet: run `python -m sdlab.shapes.evaluate`.")
    else:
        lines += ["| measurement | value | setting |", "| --- | --- | --- |"]
        lines += [f"| {m['name']} | {m['value']} | {m['setting']} |" for m in metrics["rows"]]
        lines += ["", f"Measured by `{metrics['command']}` in {metrics['wall_s']:.0f} s."]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def _flags(info: dict) -> str:
    a = info["args"]
    flags = f"--steps {a['steps']} --batch-size {a['batch_size']} --lr {a['lr']}"
    flags += f" --num-images {a['num_images']}"
    if a.get("schedule_steps"):
        flags += f" --schedule-steps {a['schedule_steps']}"
    if "channels" in a and not a.get("finetune_decoder"):
        flags += " --channels " + " ".join(map(str, a["channels"]))
    return flags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-dir", type=Path, default=Path(".train"))
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    args = parser.parse_args(argv)
    export(args.train_dir, args.out)
    print(f"exported to {args.out}")


if __name__ == "__main__":
    main()
