"""Schedules: each against its published definition, worked out here from the formula, on
SD1.5's range (training sigmas of the scaled_linear betas, 0.0292-14.6146) at 10 steps;
the structural rules of DESIGN.md for every registered schedule; diffusers' own sigmas
where diffusers ships the same schedule.
"""

from __future__ import annotations

import math
from pathlib import Path

import diffusers
import numpy as np
import pytest
import scipy.stats
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sdlab import schedules
from sdlab.registry import UnknownNameError

BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
ALPHAS_CUMPROD = np.cumprod(1 - BETAS)
TRAIN = np.sqrt((1 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD)  # SD1.5's training sigmas, t = 0..999
SMIN, SMAX = float(TRAIN[0]), float(TRAIN[-1])
N = 10
I = np.arange(N)


def build(name: str, n: int = N, **params) -> np.ndarray:
    sigmas = schedules.build(name, n, sigma_min=SMIN, sigma_max=SMAX,
                             training_sigmas=torch.from_numpy(TRAIN), **params)
    return sigmas.numpy()


def log_interp(t):
    return np.exp(np.interp(t, np.arange(1000), np.log(TRAIN)))


def flow_quadratic(n, thr=0.025):
    k, m = n // 2, n - n // 2  # linear to thr in k steps, then the quadratic reaching t = 1
    a = (1 - thr - thr * m / k) / m**2  # with value thr and slope thr / k at i = k
    i = np.arange(n)
    return np.where(i < k, i * thr / k, thr + thr / k * (i - k) + a * (i - k) ** 2)


def vp_sigmas(beta_d=19.9, beta_min=0.1):
    def t_of(s):
        return (np.sqrt(beta_min**2 + 2 * beta_d * np.log(1 + s**2)) - beta_min) / beta_d
    t = np.linspace(t_of(SMAX), t_of(SMIN), N)
    return np.sqrt(np.exp(beta_d * t**2 / 2 + beta_min * t) - 1)


AYS_SD15 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177,
            1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582]

# Each published definition at 10 steps, without the final 0.
EXPECTED = {
    "karras": lambda: (SMAX ** (1 / 7) + I / 9 * (SMIN ** (1 / 7) - SMAX ** (1 / 7))) ** 7,
    "exponential": lambda: np.geomspace(SMAX, SMIN, N),
    "polyexponential": lambda: np.exp((1 - I / 9) * (math.log(SMAX) - math.log(SMIN))
                                      + math.log(SMIN)),
    "vp": vp_sigmas,
    "logsnr_uniform": lambda: np.exp(-np.linspace(-math.log(SMAX), -math.log(SMIN), N)),
    "kl_optimal": lambda: np.tan(np.linspace(math.atan(SMAX), math.atan(SMIN), N)),
    "beta_sigma": lambda: SMIN + scipy.stats.beta.ppf(1 - I / 9, 0.6, 0.6) * (SMAX - SMIN),
    "linear_quadratic": lambda: (1 - flow_quadratic(N)) * SMAX,
    "ays": lambda: np.array(AYS_SD15[:N]),
    "linspace": lambda: np.interp(np.linspace(999, 0, N), np.arange(1000), TRAIN),
    "leading": lambda: TRAIN[I[::-1] * 100 + 1],
    "trailing": lambda: TRAIN[999 - I * 100],
    "simple": lambda: TRAIN[999 - I * 100],
    "normal": lambda: log_interp(np.linspace(999, 0, N)),
    "sgm_uniform": lambda: log_interp(np.linspace(999, 0, N + 1)[:-1]),
    "ddim_uniform": lambda: TRAIN[1 + I[::-1] * 100],
    "beta": lambda: TRAIN[np.rint(scipy.stats.beta.ppf(1 - I / N, 0.6, 0.6) * 999).astype(int)],
    "custom": lambda: np.array(AYS_SD15[:N]),
    "shift": lambda: 3.0 * EXPECTED["karras"](),
}
PARAMS = {"custom": {"sigmas": AYS_SD15[:N]}}


def test_every_schedule_has_a_published_definition_here():
    assert sorted(EXPECTED) == schedules.names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_matches_published_definition(name):
    got = build(name, **PARAMS.get(name, {}))
    np.testing.assert_allclose(got[:-1], EXPECTED[name](), rtol=1e-12, atol=0)
    assert got[-1] == 0


@pytest.mark.parametrize("name", schedules.names())
@pytest.mark.parametrize("n", [1, 2, 10, 25])
def test_structure(name, n):
    params = {"sigmas": np.geomspace(10, 0.1, n).tolist()} if name == "custom" else {}
    sigmas = schedules.build(name, n, sigma_min=SMIN, sigma_max=SMAX,
                             training_sigmas=torch.from_numpy(TRAIN), **params)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (n + 1,)
    assert sigmas[-1].item() == 0.0 and bool((sigmas[:-1] > sigmas[1:]).all())
    kind = schedules.registry.entry(name).info["kind"]
    if kind == "sigma":  # the model's range, both ends
        assert sigmas[0].item() == pytest.approx(SMAX, rel=1e-12)
        assert sigmas[-2].item() == pytest.approx(SMAX if n == 1 else SMIN, rel=1e-12)
    if kind == "timestep":  # training sigmas, within the training range
        assert SMIN - 1e-12 <= sigmas[-2].item() and sigmas[0].item() <= SMAX + 1e-12


def test_ays_interpolates_log_linearly():
    t = AYS_SD15
    np.testing.assert_allclose(build("ays", 5)[:-1], t[0:10:2], rtol=1e-12)
    mid = np.sqrt(np.array(t[:-1]) * np.array(t[1:]))  # halfway in log sigma
    got = build("ays", 20)
    np.testing.assert_allclose(got[0:19:2], t[:10], rtol=1e-12)
    np.testing.assert_allclose(got[1:20:2], mid, rtol=1e-12)
    assert build("ays", 10, model="sdxl")[1] == pytest.approx(6.3184485287, rel=1e-12)


def test_shift_is_the_flow_time_map_and_dynamic_shift_follows_flux():
    base = build("karras")[:-1]
    for s, params in [(3.0, {}), (math.exp(1.15), {"seq_len": 4096}),
                      (math.exp(0.5), {"seq_len": 256})]:
        t = base / (1 + base)  # flow time of each sigma
        shifted = s * t / (1 + (s - 1) * t)
        np.testing.assert_allclose(build("shift", **params)[:-1], shifted / (1 - shifted),
                                   rtol=1e-12)


def test_custom_timesteps_use_the_models_sigmas():
    got = build("custom", 3, timesteps=[999, 500, 20])
    np.testing.assert_allclose(got, [TRAIN[999], TRAIN[500], TRAIN[20], 0.0], rtol=1e-12)


@pytest.mark.parametrize(("name", "option"), [
    ("karras", {"use_karras_sigmas": True}), ("exponential", {"use_exponential_sigmas": True}),
    ("beta_sigma", {"use_beta_sigmas": True}), ("linspace", {"timestep_spacing": "linspace"}),
    ("leading", {"timestep_spacing": "leading"}), ("trailing", {"timestep_spacing": "trailing"}),
])
def test_matches_diffusers_euler_sigmas(name, option):
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        **option)
    scheduler.set_timesteps(N)
    # diffusers derives its training sigmas from float32 betas and keeps sigmas in float32:
    # the same inputs here, and agreement to float32 precision
    ac = scheduler.alphas_cumprod.double()
    train = ((1 - ac) / ac).sqrt()
    ours = schedules.build(name, N, sigma_min=float(train[0]), sigma_max=float(train[-1]),
                           training_sigmas=train)
    np.testing.assert_allclose(ours.numpy(), scheduler.sigmas.double().numpy(), rtol=1e-6)


def test_bad_input_errors():
    with pytest.raises(UnknownNameError, match="valid schedules: .*karras"):
        schedules.get("karas")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        build("karras", 0)
    with pytest.raises(ValueError, match="training timesteps of a discrete model"):
        schedules.build("leading", 4, sigma_min=SMIN, sigma_max=SMAX)
    with pytest.raises(ValueError, match="custom schedule has 2 steps but steps=3"):
        build("custom", 3, sigmas=[5.0, 1.0])
    with pytest.raises(ValueError, match="ays has tables for"):
        build("ays", model="sd3")


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "schedule"


def test_every_schedule_has_a_config():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(schedules.names())


@pytest.mark.parametrize("name", schedules.names())
def test_schedule_config_builds_through_build(name):
    node = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert node.pop("name") == name
    schedule = instantiate(node)
    assert schedule.func is schedules.get(name)
    sigmas = schedules.build(schedule, N, sigma_min=SMIN, sigma_max=SMAX,
                             training_sigmas=torch.from_numpy(TRAIN))
    assert sigmas.shape == (N + 1,)
