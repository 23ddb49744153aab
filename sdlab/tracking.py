"""Experiment tracking: W&B runs (offline by default), sample grids, environment versions.

One W&B run per point, grouped by study (`group`), `job_type` = sampler, with a
deterministic id (the point key) and `resume="allow"`, finished at the end of every job.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PACKAGES = ("sdlab", "torch", "diffusers", "transformers", "torchmetrics", "torch-fidelity")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape a result."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def start(cfg: DictConfig, key: str, job_dir: Path) -> Any:
    """A W&B run for this point, or None when the logger is disabled."""
    if cfg.logger.mode == "disabled":
        return None
    import wandb

    return wandb.init(
        project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
        group=cfg.name, job_type=cfg.sampler.name, name=f"{cfg.name}-{key}",
        id=key, resume="allow", dir=str(job_dir), reinit="finish_previous",
        config=OmegaConf.to_container(cfg, resolve=True),
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                x_disable_machine_info=True),
    )


def finish(run: Any, result: dict[str, Any], grid: Path | None) -> None:
    """Log the point's metrics, CIs and grid, then finish the run (failed points exit 1)."""
    if run is None:
        return
    import wandb

    log = {f"metrics/{k}": v for k, v in result.get("metrics", {}).items()}
    for name, (lo, hi) in result.get("metrics_ci", {}).items():
        log[f"metrics_ci/{name}_lo"], log[f"metrics_ci/{name}_hi"] = lo, hi
    log.update(nfe=result.get("nfe"), steps=result["steps"])
    if grid is not None:
        log["samples"] = wandb.Image(str(grid))
    run.log(log)
    run.summary.update({"status": result["status"], "error": result["error"]})
    run.finish(exit_code=0 if result["status"] == "ok" else 1)


class TrajectoryRecorder:
    """A sampler `callback` that keeps `denoised` of one image (index `image`) per step."""

    def __init__(self, image: int = 0) -> None:
        self.image = image
        self.steps: list[tuple[int, float, torch.Tensor]] = []

    def __call__(self, info: dict[str, Any]) -> None:
        sigma = info["sigma"]
        sigma = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
        self.steps.append((int(info["i"]), sigma, info["denoised"][self.image].detach().cpu()))

    def save(self, path: str | Path, decode: Any = None) -> None:
        """Write `trajectory.pt`; `decode` maps a [K, ...] latent stack to images in [0, 1]."""
        denoised = torch.stack([d for _, _, d in self.steps]).float()
        if decode is not None:
            denoised = decode(denoised)
        torch.save({"i": torch.tensor([i for i, _, _ in self.steps]),
                    "sigma": torch.tensor([s for _, s, _ in self.steps], dtype=torch.float64),
                    "denoised": denoised.clamp(0, 1)}, path)


def save_grid(images: torch.Tensor, path: Path) -> Path | None:
    """Save an image grid (RGB or single-channel outputs in [0, 1]); other outputs have none."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        return None
    from torchvision.utils import save_image

    save_image(images.float().clamp(0, 1), path, nrow=int(len(images) ** 0.5 + 0.999))
    return path


def summary_line(result: dict[str, Any]) -> str:
    head = (f"[sdlab] {result['status']}: {result['sampler']} / {result['schedule']} "
            f"steps={result['steps']}")
    if result["status"] != "ok":
        return f"{head}: {result['error']}"
    values = " ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items())
    return f"{head} nfe={result['nfe']:g} {values} ({result['timings']['generate_s']:.1f}s)"


class SweepSummary(Callback):
    """Hydra callback: after a multirun, one summary line and a W&B table of every point."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import json

        root = Path(config.hydra.sweep.dir)
        found = [(p, json.loads(p.read_text())) for p in sorted(root.rglob("result.json"))]
        new = [r for p, r in found if p.stat().st_mtime >= getattr(self, "started", 0)]
        failed = [r for _, r in found if r["status"] != "ok"]
        print(f"[sdlab] sweep {config.name}: {len(found)} points under {root} "
              f"({len(new)} computed now, {len(found) - len(new)} already there, "
              f"{len(failed)} failed)")
        if config.logger.mode == "disabled" or not found:
            return
        import wandb

        columns = ["sampler", "schedule", "steps", "nfe", "status", "metrics", "key"]
        table = wandb.Table(columns=columns, data=[
            [r["sampler"], r["schedule"], r["steps"], r.get("nfe"), r["status"],
             json.dumps(r.get("metrics", {}), sort_keys=True), r["key"]] for _, r in found])
        run = wandb.init(project=config.logger.project, entity=config.logger.entity,
                         mode=config.logger.mode, group=config.name, job_type="summary",
                         name=f"{config.name}-summary", dir=str(root),
                         reinit="finish_previous",
                         settings=wandb.Settings(silent=True, console="off",
                                                 x_disable_stats=True,
                                                 x_disable_machine_info=True))
        run.log({"sweep_results": table})
        run.finish()
