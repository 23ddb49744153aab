"""One sweep point: config -> images -> metrics -> result.json (+ grid, + tracker run).

`run(cfg)` is what the `sdlab` Hydra app calls for each job. It validates the whole point
before any work, skips a point whose key already has an ok result under the results root,
and writes `result.json` atomically only once the point has finished (ok or failed).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sdlab import metrics as metrics_mod
from sdlab import tracking
from sdlab.pipeline import DiffusersSampling, NativeSampling, NonFiniteError, generate

# Config keys that define a point's numbers; everything else (logger, batch size, paths)
# cannot change a result, so it stays out of the key.
KEY_FIELDS = ("model", "sampler", "schedule", "guidance", "metrics", "prompts", "steps",
              "n_images", "seed", "negative_prompt")


class ConfigError(ValueError):
    """A config that cannot run; raised before any work starts."""


def point_key(cfg: DictConfig) -> str:
    """Hash of the resolved config fields that define a point's numbers."""
    defining = {k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in KEY_FIELDS}
    if "scheduler" in (defining["sampler"] or {}):
        defining["schedule"] = None  # a diffusers scheduler brings its own timesteps
    blob = json.dumps(defining, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_result(root: str | Path, key: str) -> Path | None:
    """An ok result.json with this key anywhere under root, if one exists."""
    root = Path(root)
    if not root.is_dir():
        return None
    for path in sorted(root.rglob("result.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if result.get("key") == key and result.get("status") == "ok":
            return path
    return None


def write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON through a temp file and rename, so a reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def validate(cfg: DictConfig) -> None:
    """Every check that needs no model: fail in one line before anything is built."""
    for field, low in (("steps", 1), ("n_images", 1), ("batch_size", 1)):
        if int(cfg[field]) < low:
            raise ConfigError(f"{field} must be >= {low}, got {cfg[field]}")
    scale = cfg.guidance.get("scale", 1.0)
    if scale is not None and float(scale) < 0:
        raise ConfigError(f"guidance.scale must be >= 0, got {scale}")
    if "scheduler" not in cfg.sampler and "_target_" not in cfg.sampler:
        raise ConfigError("sampler config needs `_target_` (a sampler function) or `scheduler` "
                          "(a diffusers scheduler class name)")


def _instantiate_named(node: DictConfig) -> Any:
    """Instantiate a `_target_` config that also carries a `name` label."""
    fields = OmegaConf.to_container(node, resolve=True)
    fields.pop("name", None)
    return instantiate(fields)


def build_sampling(cfg: DictConfig) -> NativeSampling | DiffusersSampling:
    if "scheduler" in cfg.sampler:
        return DiffusersSampling(cfg.sampler.scheduler, OmegaConf.to_container(
            cfg.sampler.get("config") or {}, resolve=True))
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


def run(cfg: DictConfig, job_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one sweep point and return its result (also written to `job_dir/result.json`)."""
    validate(cfg)
    job_dir = Path(job_dir or os.getcwd())
    key = point_key(cfg)
    done = find_result(cfg.results_root, key)
    if done is not None:
        print(f"[sdlab] skip: point {key} already has an ok result at {done}")
        return {**json.loads(done.read_text()), "skipped": True}

    sampling = build_sampling(cfg)
    rule = _instantiate_named(cfg.guidance)
    model = build_model(cfg)
    prompts = build_prompts(cfg, int(cfg.n_images))
    if model.conditional and prompts is None:
        raise ConfigError(f"model {cfg.model.name!r} is text-conditional: choose prompts=...")
    metrics = metrics_mod.build(cfg.metrics, model=model)
    seeds = [int(cfg.seed) + i for i in range(int(cfg.n_images))]

    result = {
        "key": key, "status": "ok", "error": None, "name": cfg.name,
        "model": cfg.model.name, "sampler": cfg.sampler.name,
        "schedule": (f"diffusers:{cfg.sampler.scheduler}" if "scheduler" in cfg.sampler
                     else cfg.schedule.name),
        "guidance": ({**rule.describe(), "name": cfg.guidance.name} if model.conditional
                     else None),
        "steps": int(cfg.steps), "n_images": len(seeds), "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    run_log = tracking.start(cfg, key, job_dir)
    outputs = []
    try:
        t0 = time.perf_counter()
        nfes, uncond = [], []
        bar = tqdm(total=len(seeds), desc=f"generate {cfg.sampler.name} {cfg.steps} steps",
                   unit="img", leave=False)
        for batch in generate(model, sampling, int(cfg.steps), seeds, prompts=prompts,
                              negative_prompt=cfg.negative_prompt, guidance=rule,
                              batch_size=int(cfg.batch_size)):
            for metric in metrics.values():
                metric.update(batch)
            nfes.append(batch.nfe)
            uncond.append(batch.uncond_evals)
            if len(outputs) < 64:
                outputs.append(batch.outputs[: 64 - len(outputs)].cpu())
            bar.update(len(batch.seeds))
        bar.close()
        t1 = time.perf_counter()
        values, cis, fingerprint = {}, {}, {}
        for metric in metrics.values():
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
    grid = tracking.save_grid(torch.cat(outputs), job_dir / "grid.png") if (
        outputs and cfg.save_grid) else None
    write_atomic(job_dir / "result.json", result)
    tracking.finish(run_log, result, grid)
    print(tracking.summary_line(result))
    return result
