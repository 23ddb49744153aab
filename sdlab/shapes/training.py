"""Shared plumbing of the training stages: CLI flags, the cached image pool, checkpoints, logs."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from sdlab.shapes.dataset import get_item


def stage_parser(doc: str, out: str, *, steps: int, batch_size: int, lr: float, num_images: int):
    """Flags every stage shares; a stage adds its own and passes its defaults here."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--cache", type=Path, default=Path(".train/cache"))
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument(
        "--schedule-steps", type=int, help="length of the lr schedule (default: --steps)"
    )
    parser.add_argument("--num-images", type=int, default=num_images, help="size of the train pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 2 is full speed on a 2-core machine"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--ckpt-every", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=50)
    return parser


def image_pool(num_images: int, seed: int, cache: Path) -> tuple[torch.Tensor, list[str]]:
    """Train items 0..num_images-1 as uint8 images [N, 3, 32, 32] and captions, cached on disk.

    Items depend only on their index, so a cached pool at least as large is sliced.
    """
    for cached in sorted(cache.glob(f"train_pool_*_seed{seed}.pt")):
        if int(cached.stem.split("_")[2]) >= num_images:
            pool = torch.load(cached)
            return pool["images"][:num_images], pool["captions"][:num_images]
    path = cache / f"train_pool_{num_images}_seed{seed}.pt"
    images = torch.empty(num_images, 3, 32, 32, dtype=torch.uint8)
    captions = []
    for i in range(num_images):
        item = get_item(i, "train", seed)
        images[i] = (item.image * 255).round().to(torch.uint8)
        captions.append(item.caption)
    atomic_save({"images": images, "captions": captions}, path)
    return images, captions


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] images to the [-1, 1] range the VAE and the CLIP vision tower take."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    return images * 2 - 1


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step: int, args: argparse.Namespace, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of `--lr` at `--schedule-steps` (or `--steps`)."""
    lr, total = args.lr, args.schedule_steps or args.steps
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Run:
    """Checkpointing, timing and JSON-lines logging of one stage in OUT."""

    def __init__(self, args: argparse.Namespace):
        torch.set_num_threads(args.threads)
        self.args, self.out = args, args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out / "checkpoint.pt"
        self.step, self.train_s, self._t0 = 0, 0.0, time.time()
        self.generator = torch.Generator().manual_seed(args.seed)

    def resume(self, objects: dict) -> None:
        """Load model/optimiser states into `objects` from the checkpoint when --resume is set."""
        if not (self.args.resume and self.ckpt_path.exists()):
            return
        state = torch.load(self.ckpt_path, weights_only=False)
        for name, obj in objects.items():
            obj.load_state_dict(state[name])
        self.step, self.train_s = state["step"], state["train_s"]
        self.generator.set_state(state["generator"])
        self._t0 = time.time()
        self.log(resumed_from=self.step)

    def elapsed(self) -> float:
        return self.train_s + time.time() - self._t0

    def checkpoint(self, objects: dict) -> None:
        state = {name: obj.state_dict() for name, obj in objects.items()}
        state["step"], state["train_s"] = self.step, self.elapsed()
        state["generator"] = self.generator.get_state()
        atomic_save(state, self.ckpt_path)

    def log(self, **values) -> None:
        line = json.dumps({"step": self.step, "time_s": round(self.elapsed(), 1), **values})
        print(line, flush=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(line + "\n")

    def finish(self, **info) -> None:
        """Write OUT/train_info.json: steps, wall time, threads and the stage's arguments."""
        args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}
        info = {"steps": self.step, "wall_s": round(self.elapsed(), 1), "args": args, **info}
        (self.out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
        self.log(done=True)
