"""The Hydra app end to end: sweeps, result files, skip-on-rerun, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from sdlab.cli import CONFIG_DIR
from sdlab.experiment import ConfigError, run
from sdlab.results import point_key

ANALYTIC = ["model=gmm", "metrics=gmm", "prompts=none"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def sdlab(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sdlab", *args], cwd=cwd, env=ENV,
                           capture_output=True, text=True, timeout=600)


def results(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())
            for p in root.rglob("result.json")}


def test_sweep_writes_results_and_rerun_skips(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", *ANALYTIC, "sampler=euler,heun,dpmpp_2m",
            "steps=4,8,16", "n_images=16", "logger=none", "~metrics.fd_exact", "~metrics.mmd_exact"]
    first = sdlab(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    found = results(sweep)
    assert len(found) == 9
    for r in found.values():
        assert r["status"] == "ok" and r["n_images"] == 16
        assert set(r) >= {"key", "model", "sampler", "schedule", "steps", "nfe", "metrics",
                          "metrics_ci", "fingerprint", "timings", "config", "seed"}
    for sampler, per_step in (("euler", 1), ("heun", 2), ("dpmpp_2m", 1)):
        points = sorted((r for r in found.values() if r["sampler"] == sampler),
                        key=lambda r: r["steps"])
        errors = [r["metrics"]["rmse_ode"] for r in points]
        assert errors[0] > errors[1] > errors[2], (sampler, errors)
        # nfe is counted, not assumed: heun's last step into sigma = 0 is a single evaluation
        assert [r["nfe"] for r in points] == [per_step * s - (per_step - 1) for s in (4, 8, 16)]
    stamps = {p: p.stat().st_mtime_ns for p in sweep.rglob("result.json")}

    second = sdlab(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("skip: point") == 9
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("result.json")} == stamps


def compose_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"results_root={tmp_path}", "logger=none",
                                            "n_images=8", *ANALYTIC, *overrides])


def test_run_in_process_and_key(tmp_path):
    cfg = compose_cfg(tmp_path, "steps=3")
    job = tmp_path / "job"
    job.mkdir()
    result = run(cfg, job)
    assert result["status"] == "ok" and result["nfe"] == 3
    assert json.loads((job / "result.json").read_text())["key"] == point_key(cfg)
    assert not list(job.glob(".*tmp"))  # the atomic write leaves no temp file
    # a batch size or logger change is the same point; a seed change is not
    assert point_key(compose_cfg(tmp_path, "steps=3", "batch_size=2")) == point_key(cfg)
    assert point_key(compose_cfg(tmp_path, "steps=3", "seed=1")) != point_key(cfg)


@pytest.mark.parametrize("override, message", [
    ("steps=0", "steps must be >= 1"),
    ("n_images=0", "n_images must be >= 1"),
    ("guidance.scale=-2", "guidance.scale must be >= 0"),
])
def test_bad_values_fail_before_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(compose_cfg(tmp_path, override), tmp_path)
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.parametrize("override, listed", [
    ("sampler=nope", "euler"), ("model=nope", "gmm"), ("schedule=nope", "karras")])
def test_unknown_choices_list_valid_ones(tmp_path, override, listed):
    with pytest.raises(MissingConfigException, match=f"(?s)Could not find.*{listed}"):
        compose_cfg(tmp_path, override)


def test_cli_error_is_one_line(tmp_path):
    out = sdlab("steps=0", *ANALYTIC, f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "sdlab: error: steps must be >= 1, got 0"


def test_default_point_runs_on_the_bundled_model(tmp_path, monkeypatch):
    """The main job's defaults: bundled model, held-out prompts, its metrics, guidance."""
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache"))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"results_root={tmp_path}", "logger=none",
                                           "n_images=8", "steps=6", "sampler=dpmpp_2m",
                                           "metrics.clip.reference.n=256"])
    result = run(cfg, tmp_path)
    assert result["model"] == "tiny_shapes" and result["status"] == "ok"
    assert result["cfg_on"] and result["nfe"] == 6 and result["uncond_evals"] == 6
    assert {"fd_clip", "cmmd_clip", "clip_score", "shapes_accuracy"} <= set(result["metrics"])
    assert result["metrics"]["shapes_accuracy"] >= 0.75  # the trained model draws its prompts
    assert (tmp_path / "grid.png").is_file()
