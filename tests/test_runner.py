"""The sweep runner: crash safety, concurrency, failures, W&B records, nfe budgets, torchrun."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from wandb_records import records

from sdlab.cli import CONFIG_DIR
from sdlab.experiment import ConfigError, run

TESTS = Path(__file__).parent
# one thread per process: these tests run several sdlab processes side by side
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
# the exact ODE error alone keeps each point cheap
ANALYTIC = ["model=gmm", "metrics=gmm", "prompts=none"]
SWEEP = [*ANALYTIC, "sampler=euler,dpmpp_2m", "steps=3,6", "n_images=8", "logger=none",
         "~metrics.fd_exact", "~metrics.mmd_exact"]


def nan_sampler(denoiser, x, sigmas, *, noise=None, callback=None):
    """A broken sampler: NaN for every second image."""
    out = denoiser(x, sigmas[0].expand(len(x)).to(torch.float64)).clone()
    out[::2] = float("nan")
    return out


def sdlab(*args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "sdlab", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc) -> str:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return out


def results(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("result.json"))]


def by_key(root: Path) -> dict[str, dict]:
    found = results(root)
    keys = [r["key"] for r in found]
    assert len(keys) == len(set(keys)), "a point was written twice"
    return {r["key"]: r["metrics"] for r in found}


def test_kill_minus_9_then_resume_equals_uninterrupted(tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    finish(sdlab("-m", f"hydra.sweep.dir={clean}", *SWEEP, cwd=tmp_path))
    proc = sdlab("-m", f"hydra.sweep.dir={crashed}", *SWEEP, cwd=tmp_path,
                 start_new_session=True)
    while not list(crashed.rglob("result.json")):
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    time.sleep(random.uniform(0, 1.5))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = by_key(crashed)
    assert 1 <= len(partial) <= 4
    assert not list(crashed.rglob(".*.tmp"))  # no half-written result survives a kill
    out = finish(sdlab("-m", f"hydra.sweep.dir={crashed}", *SWEEP, cwd=tmp_path))
    assert out.count("skip: point") == len(partial)  # finished points are not recomputed
    assert by_key(crashed) == by_key(clean)
    assert not list((crashed / ".claims").iterdir())


def test_two_joblib_workers_share_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", *SWEEP]
    a, b = sdlab(*args, cwd=tmp_path), sdlab(*args, cwd=tmp_path)
    finish(a), finish(b)
    found = by_key(sweep)  # asserts no duplicates; every file parsed as JSON
    assert len(found) == 4
    assert all(r["status"] == "ok" for r in results(sweep))


def test_nan_point_is_recorded_failed_and_sweep_continues(tmp_path):
    sweep = tmp_path / "sweep"
    finish(sdlab("-m", f"hydra.sweep.dir={sweep}", *ANALYTIC, "n_images=4", "steps=3",
                 "logger=none",
                 "sampler._target_=test_runner.nan_sampler,sdlab.samplers.ode.euler",
                 cwd=tmp_path))
    status = {r["config"]["sampler"]["_target_"]: r for r in results(sweep)}
    failed = status["test_runner.nan_sampler"]
    assert failed["status"] == "failed" and "NaN" in failed["error"]
    assert status["sdlab.samplers.ode.euler"]["status"] == "ok"


def compose_cfg(root, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"results_root={root}", "n_images=4", *ANALYTIC,
                                            *overrides])


def test_wandb_offline_run_holds_config_metrics_and_image(tmp_path):
    cfg = compose_cfg(tmp_path, "logger.mode=offline", "steps=4", "model.shape=[3,4,4]",
                      "model.components=2")
    result = run(cfg, tmp_path)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.time() + 60  # wandb's service process may still be flushing the file
    while "exit" not in (kinds := [r.WhichOneof("record_type") for r in records(run_file)]):
        assert time.time() < deadline, f"the run file never closed: {kinds}"
        time.sleep(0.2)
    recs = records(run_file)
    (run_rec,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_rec.config.update}
    assert config["steps"] == 4 and config["sampler"]["name"] == "euler"
    history = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for r in recs if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert history["metrics/rmse_ode"] == pytest.approx(result["metrics"]["rmse_ode"])
    assert history["samples/_type"] == "image-file"
    assert (run_file.parent / "files" / history["samples/path"]).is_file()
    assert run_rec.run_id == result["key"] and run_rec.run_group == cfg.name
    assert run_rec.job_type == "euler"


def test_nfe_budget_sets_steps_from_counted_evaluations(tmp_path):
    result = run(compose_cfg(tmp_path, "logger=none", "sampler=heun", "nfe=9"), tmp_path)
    assert result["steps"] == 5 and result["nfe"] == 9  # heun: 2 per step, 1 into sigma=0
    with pytest.raises(ConfigError, match="nfe must be >= 1"):
        run(compose_cfg(tmp_path, "logger=none", "nfe=0"), tmp_path)


def test_gpu_requested_without_one_fails_before_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        run(compose_cfg(tmp_path, "logger=none", "device=cuda"), tmp_path)


def test_torchrun_two_processes_match_one(tmp_path):
    point = [*ANALYTIC, "n_images=12", "batch_size=2", "steps=4", "logger=none",
             "sampler=euler_ancestral", "~metrics.mmd_exact"]
    one = finish(sdlab(f"hydra.sweep.dir={tmp_path / 'one'}", *point, cwd=tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "sdlab",
         f"hydra.sweep.dir={tmp_path / 'two'}", *point],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert one
    (a,), (b,) = results(tmp_path / "one"), results(tmp_path / "two")
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert a["key"] == b["key"]
    for name, value in a["metrics"].items():  # thread counts differ: float64 round-off only
        assert b["metrics"][name] == pytest.approx(value, rel=1e-7)


def test_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm",
                                           "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1


@pytest.mark.slow
def test_submitit_local_runs_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    finish(sdlab("-m", f"hydra.sweep.dir={sweep}", "hydra/launcher=submitit_local", *SWEEP,
                 cwd=tmp_path))
    assert len(by_key(sweep)) == 4


def test_saved_trajectory_and_outputs(tmp_path):
    from safetensors.torch import load_file

    cfg = compose_cfg(tmp_path, "logger=none", "steps=5", "model.shape=[3,4,4]",
                      "batch_size=3", "save_trajectory=true", "save_outputs=true")
    result = run(cfg, tmp_path)
    traj = torch.load(tmp_path / "trajectory.pt")
    assert traj["i"].tolist() == [0, 1, 2, 3, 4] and traj["denoised"].shape == (5, 3, 4, 4)
    assert (traj["sigma"][:-1] > traj["sigma"][1:]).all()
    saved = [load_file(p) for p in sorted((tmp_path / "outputs").glob("batch_*.safetensors"))]
    assert [b["seeds"].tolist() for b in saved] == [[0, 1, 2], [3]]
    assert result["n_images"] == 4


def test_saved_outputs_accept_strided_images(tmp_path):
    """Decoded images can arrive as a permuted view (channels-last); saving must not fail."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from sdlab.experiment import _cache_outputs

    images = torch.rand(2, 4, 4, 3).permute(0, 3, 1, 2)
    assert not images.is_contiguous()
    _cache_outputs(SimpleNamespace(latents=torch.zeros(2, 1), outputs=images, seeds=[7, 8]),
                   tmp_path)
    saved = load_file(tmp_path / "batch_00000007.safetensors")
    assert torch.equal(saved["outputs"], images) and saved["seeds"].tolist() == [7, 8]
