"""One sweep point: config -> images -> metrics -> result.json (+ grid, + tracker run).

`run(cfg)` is what the `sdlab` Hydra app calls for each job. It validates the whole point
before any work, skips a point whose key already has an ok result under the results root
(or that another live job is computing), and writes `result.json` atomically only once the
point has finished, ok or failed.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from sdlab import distributed, tracking
from sdlab import metrics as metrics_mod
from sdlab.denoisers import Denoiser
from sdlab.pipeline import DiffusersSampling, NativeSampling, NonFiniteError, generate
from sdlab.results import Claimed, claim, find_result, point_key, write_atomic


class ConfigError(ValueError):
    """A config that cannot run; raised before any work starts."""


def validate(cfg: DictConfig) -> None:
    """Every check that needs no model: fail in one line before anything is built."""
    for field, low in (("steps", 1), ("n_images", 1), ("batch_size", 1)):
        if int(cfg[field]) < low:
            raise ConfigError(f"{field} must be >= {low}, got {cfg[field]}")
    if cfg.get("nfe") is not None and int(cfg.nfe) < 1:
        raise ConfigError(f"nfe must be >= 1, got {cfg.nfe}")
    scale = cfg.guidance.get("scale", 1.0)
    if scale is not None and float(scale) < 0:
        raise ConfigError(f"guidance.scale must be >= 0, got {scale}")
    if "scheduler" not in cfg.sampler and "_target_" not in cfg.sampler:
        raise ConfigError("sampler config needs `_target_` (a sampler function) or `scheduler` "
                          "(a diffusers scheduler class name)")
    device = str(cfg.get("device", "auto"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} was requested but no CUDA GPU is visible; "
                          "use device=cpu or device=auto")


def _instantiate_named(node: DictConfig) -> Any:
    """Instantiate a `_target_` config that also carries a `name` label."""
    fields = OmegaConf.to_container(node, resolve=True)
    fields.pop("name", None)
    return instantiate(fields)


def build_sampling(cfg: DictConfig) -> NativeSampling | DiffusersSampling:
    if "scheduler" in cfg.sampler:
        return DiffusersSampling(
            cfg.sampler.scheduler,
            OmegaConf.to_container(cfg.sampler.get("config") or {}, resolve=True),
            OmegaConf.to_container(cfg.sampler.get("step") or {}, resolve=True))
    return NativeSampling(_instantiate_named(cfg.sampler), _instantiate_named(cfg.schedule),
                          cfg.sampler.name, cfg.schedule.name)


_MODELS: dict[str, Any] = {}


def build_model(cfg: DictConfig) -> Any:
    """The point's model, built once per process (a sweep's jobs share it)."""
    key = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = _instantiate_named(cfg.model)
    return _MODELS[key]


def build_prompts(cfg: DictConfig, n: int) -> list[str] | None:
    """One prompt per image (the prompt source repeats if it has fewer), or None."""
    if not cfg.prompts:
        return None
    prompts = list(_instantiate_named(cfg.prompts))
    if not prompts:
        raise ConfigError("the prompt source is empty: give at least one prompt")
    return [prompts[i % len(prompts)] for i in range(n)]


class _Free(Denoiser):
    """A zero-cost stand-in with a model's sigmas, to count a sampler's evaluations."""

    def __init__(self, like: Denoiser) -> None:
        super().__init__()
        self.sigma_min, self.sigma_max, self.sigmas = like.sigma_min, like.sigma_max, like.sigmas

    def denoise(self, x, sigma, **cond):
        return torch.zeros_like(x)


def steps_for_nfe(sampling: NativeSampling | DiffusersSampling, model: Any, budget: int) -> int:
    """The most steps whose counted nfe fits the budget, by dry runs on a free denoiser."""
    free = _Free(model.denoiser())
    z = torch.zeros(1, 1, dtype=torch.float64)
    best = None
    for steps in range(1, budget + 1):
        free.reset_nfe()
        sampling.run(model, free, z, [torch.Generator().manual_seed(0)], steps)
        if free.nfe > budget:
            break
        best = steps
    if best is None:
        raise ConfigError(f"no step count of this sampler fits nfe={budget}")
    return best


def _generate_all(cfg, job_dir, model, sampling, rule, prompts, metrics, seeds, rank, size):
    """Generate every image (this rank's share), feeding rank 0's metrics in seed order."""
    nfes, uncond, grid = [], [], []
    bar = tqdm(total=len(seeds), desc=f"generate {cfg.sampler.name} {cfg.steps} steps",
               unit="img", leave=False, disable=rank != 0)
    recorder = tracking.TrajectoryRecorder() if cfg.get("save_trajectory") and rank == 0 else None
    for idx in distributed.rounds(len(seeds), int(cfg.batch_size), rank, size):
        mine = None
        if idx:
            mine = next(generate(
                model, sampling, int(cfg.steps), [seeds[i] for i in idx],
                prompts=[prompts[i] for i in idx] if prompts else None,
                negative_prompt=cfg.negative_prompt, guidance=rule, batch_size=len(idx),
                callback=recorder))
            if recorder is not None:  # the first image's trajectory is enough for a strip
                with torch.inference_mode():
                    recorder.save(job_dir / "trajectory.pt", decode=model.decode)
                recorder = None
        for batch in distributed.gather(mine, size):
            if batch is None or rank != 0:
                continue
            for metric in metrics.values():
                metric.update(batch)
            nfes.append(batch.nfe)
            uncond.append(batch.uncond_evals)
            if sum(len(g) for g in grid) < 64:
                grid.append(batch.outputs[: 64 - sum(len(g) for g in grid)].cpu())
            if cfg.get("save_outputs"):
                _cache_outputs(batch, job_dir / "outputs")
            bar.update(len(batch.seeds))
    bar.close()
    return nfes, uncond, grid


def _cache_outputs(batch, out: Path) -> None:
    """Keep final latents and outputs for recomputing metrics later without regenerating."""
    from safetensors.torch import save_file

    out.mkdir(exist_ok=True)
    save_file({"latents": batch.latents.contiguous().cpu(),
               # a copy (outputs may be the latents themselves), packed (they may be a view)
               "outputs": batch.outputs.cpu().clone(memory_format=torch.contiguous_format),
               "seeds": torch.tensor(batch.seeds)}, out / f"batch_{batch.seeds[0]:08d}.safetensors")


def run(cfg: DictConfig, job_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one sweep point and return its result (also written to `job_dir/result.json`)."""
    validate(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    job_dir = Path(job_dir or os.getcwd())
    rank, size = distributed.world()
    sampling = build_sampling(cfg)
    rule = _instantiate_named(cfg.guidance)
    prompts = build_prompts(cfg, int(cfg.n_images))  # cheap checks before the model loads
    model = build_model(cfg)
    if cfg.get("nfe") is not None:
        with open_dict(cfg):
            cfg.steps = steps_for_nfe(sampling, model, int(cfg.nfe))
    key = point_key(cfg)
    done = find_result(cfg.results_root, key)
    if done is not None:
        print(f"[sdlab] skip: point {key} already has an ok result at {done}")
        return {**json.loads(done.read_text()), "skipped": True}
    if model.conditional and prompts is None:
        raise ConfigError(f"model {cfg.model.name!r} is text-conditional: choose prompts=...")
    metrics = metrics_mod.build(cfg.metrics, model=model)
    seeds = [int(cfg.seed) + i for i in range(int(cfg.n_images))]
    try:
        with claim(cfg.results_root, key) if rank == 0 else nullcontext():
            return _run_point(cfg, job_dir, key, model, sampling, rule, prompts, metrics,
                              seeds, rank, size)
    except Claimed as busy:
        print(f"[sdlab] skip: {busy}")
        return {"key": key, "status": "claimed", "skipped": True}


def _run_point(cfg, job_dir, key, model, sampling, rule, prompts, metrics, seeds, rank, size):
    result = {
        "key": key, "status": "ok", "error": None, "name": cfg.name,
        "model": cfg.model.name, "sampler": cfg.sampler.name,
        "schedule": (f"diffusers:{cfg.sampler.scheduler}" if "scheduler" in cfg.sampler
                     else cfg.schedule.name),
        "guidance": ({**rule.describe(), "name": cfg.guidance.name} if model.conditional
                     else None),
        "steps": int(cfg.steps), "n_images": len(seeds), "seed": int(cfg.seed),
        "world_size": size, "config": OmegaConf.to_container(cfg, resolve=True),
    }
    run_log = tracking.start(cfg, key, job_dir) if rank == 0 else None
    grid = []
    try:
        t0 = time.perf_counter()
        nfes, uncond, grid = _generate_all(cfg, job_dir, model, sampling, rule, prompts, metrics,
                                           seeds, rank, size)
        if rank != 0:
            return {"key": key, "status": "ok", "rank": rank}
        t1 = time.perf_counter()
        values, cis, fingerprint = {}, {}, {}
        for metric in tqdm(metrics.values(), desc="metrics", leave=False):
            values.update(metric.compute())
            cis.update(metric.intervals())
            fingerprint.update(metric.fingerprint())
        t2 = time.perf_counter()
        result.update(
            nfe=sum(nfes) / len(nfes), cfg_on=any(uncond),
            uncond_evals=sum(uncond) / len(uncond), metrics=values,
            metrics_ci={k: list(v) for k, v in cis.items()},
            fingerprint={**fingerprint, **tracking.versions()},
            timings={"generate_s": t1 - t0, "metrics_s": t2 - t1,
                     "per_image_s": (t1 - t0) / len(seeds)})
    except (NonFiniteError, FloatingPointError) as err:
        result.update(status="failed", error=str(err), metrics={}, metrics_ci={})
        if rank != 0:
            return result
    image = tracking.save_grid(torch.cat(grid), job_dir / "grid.png") if (
        grid and cfg.save_grid) else None
    write_atomic(job_dir / "result.json", result)
    tracking.finish(run_log, result, image)
    print(tracking.summary_line(result))
    return result
