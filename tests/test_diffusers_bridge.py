"""The diffusers bridge on the analytic mixture, and native samplers against their diffusers
counterparts with the same sigmas and the same injected noise.

The native sampler starts from the bridge's first model input (diffusers' starting noise in
VE coordinates; the Euler family with linspace/trailing spacing and the VP schedulers start
at sqrt(sigma_max^2 + 1) z rather than sigma_max z) and steps on the scheduler's own sigmas.
Per-sample generators give both the same noise: diffusers draws a scheduler's noise from the
generator list after the initial latent, as sdlab.noise does.

Diffusers keeps a schedule's sigmas in float32; the cross-checks promote them to float64
after `set_timesteps` (`float64_sigmas`) so they compare the algorithms, not the storage
(in float32 DEIS's coefficients lose up to ~1e-4 to cancellation), and give the model the
scheduler's own training schedule so the bridge's t -> sigma map inverts the scheduler's.
What is left are timesteps diffusers stores in float32 (fractional ones move sigma by up to
~4e-7 relative): measured trajectories agree to <= 6e-7 relative to (|x| + 1) over 20 steps,
so the tolerance is 1e-5 (relative plus absolute). The issue-2 acceptance check (euler vs
EulerDiscreteScheduler with karras sigmas) runs unmodified diffusers.

Where the methods differ by design, the docstring of the case says how and the test
checks that instead of equality:
- diffusers feeds the network rounded timesteps when it uses karras sigmas in KDPM2,
  DPMSolver, UniPC and DEIS (the network sees sigma(round(t)), the solver steps with the
  karras sigma), so those cross-checks use integer-timestep spacings;
- LMS integrates its last step into sigma = 0 with the extrapolating polynomial, UniPC-bh1
  produces NaN there; sdlab's samplers return the denoised estimate;
- DEIS ends its schedule at sigma_min and returns that noisy VP sample; DDIM with
  set_alpha_to_one=False (SD's default) ends at sigma_train[0] the same way;
- with lower_order_final, UniPC-3 drops to order 2 on its second-to-last step;
- diffusers' DPM-Solver++(3M) gives the second-difference term half its exact weight.
"""

from __future__ import annotations

import importlib
import math
import sys
import types

import pytest
import torch

from sdlab import samplers
from sdlab.models.gmm import GaussianMixture, GMMDenoiser
from sdlab.noise import SeededNoise, generators, randn
from sdlab.registry import UnknownNameError
from sdlab.samplers.brownian import brownian_noise
from sdlab.samplers.common import exp_adams_coefficients, lagrange_weights, t_of
from sdlab.samplers.diffusers_bridge import (
    UNFIT,
    fitting_scheduler_names,
    make_scheduler,
    sample_diffusers,
    scheduler_names,
)

torch.set_num_threads(1)  # tensors this small run far slower when split across threads
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
GMM = GaussianMixture.random((4, 2, 2), components=3, seed=0)
SEEDS = [5, 6]
TOL = {"rtol": 1e-5, "atol": 1e-5}


class CountingMixture:
    """The mixture with an independent count of its evaluations."""

    def __init__(self) -> None:
        self.calls = 0

    def denoise(self, x, sigma):
        self.calls += 1
        return GMM.denoise(x, sigma)


def float64_sigmas(scheduler):
    """The scheduler, with its sigmas promoted to float64 whenever it sets its timesteps."""
    set_timesteps = scheduler.set_timesteps

    def promoted(*args, **kwargs):
        set_timesteps(*args, **kwargs)
        for name in ("sigmas", "sigmas_interpol"):
            if isinstance(getattr(scheduler, name, None), torch.Tensor):
                setattr(scheduler, name, getattr(scheduler, name).double())

    scheduler.set_timesteps = promoted
    return scheduler


def run_diffusers(denoiser, scheduler, steps, **step_kwargs):
    """Bridge run from per-sample seeds: (final sample, [callback dicts])."""
    gens = generators(SEEDS)
    z = randn(gens, GMM.shape, dtype=torch.float64)
    calls = []
    out = sample_diffusers(denoiser, z, scheduler, steps, generators=gens,
                           callback=calls.append, step_kwargs=step_kwargs)
    return out, calls


def run_native(denoiser, name, start, sigmas, **hparams):
    """Native run from `start` with the per-sample noise that follows the same latents."""
    gens = generators(SEEDS)
    randn(gens, GMM.shape, dtype=torch.float64)  # the initial latent the bridge drew
    calls = []
    out = samplers.get(name)(denoiser, start.clone(), sigmas, noise=SeededNoise(gens, start),
                             callback=calls.append, **hparams)
    return out, calls


def step_sigmas(scheduler):
    """The distinct sigmas of a diffusers schedule, then 0, in float64."""
    if hasattr(scheduler, "sigmas"):
        sigmas = torch.unique_consecutive(scheduler.sigmas.double())
    else:
        ac = scheduler.alphas_cumprod.double()[scheduler.timesteps]
        sigmas = ((1 - ac) / ac).sqrt()
    return sigmas if sigmas[-1] == 0 else torch.cat([sigmas, sigmas.new_zeros(1)])


def cross_check(native, hparams, scheduler, steps, every=1, step_kwargs=None):
    """Both runs: finals, model inputs per step (first-order stages), native callbacks.

    The model's training schedule is the scheduler's own (alphas_cumprod from float32
    betas), so the bridge's t -> sigma map is the exact inverse of the scheduler's.
    """
    denoiser = GMMDenoiser(GMM, alphas_cumprod=scheduler.alphas_cumprod.double())
    out_d, calls_d = run_diffusers(denoiser, scheduler, steps, **(step_kwargs or {}))
    out_n, calls_n = run_native(denoiser, native, calls_d[0]["x"], step_sigmas(scheduler),
                                **hparams)
    xs_d = torch.stack([c["x"] for c in calls_d[::every]])
    xs_n = torch.stack([c["x"] for c in calls_n])
    return out_n, out_d, xs_n, xs_d, calls_n


TRAILING = {"timestep_spacing": "trailing"}
SAME = [  # (native, hparams, scheduler, overrides, step kwargs, model calls per step)
    ("euler", {}, "EulerDiscreteScheduler", {"use_karras_sigmas": True}, {}, 1),
    ("euler_ancestral", {}, "EulerAncestralDiscreteScheduler", TRAILING, {}, 1),
    ("heun", {}, "HeunDiscreteScheduler", {"use_karras_sigmas": True}, {}, 2),
    ("dpm_2", {}, "KDPM2DiscreteScheduler", TRAILING, {}, 2),
    ("ddim", {}, "DDIMScheduler", {"set_alpha_to_one": True}, {}, 1),
    ("ddim", {"eta": 1.0}, "DDIMScheduler", {"set_alpha_to_one": True}, {"eta": 1.0}, 1),
    ("dpmpp_2m", {}, "DPMSolverMultistepScheduler",
     {"algorithm_type": "dpmsolver++", "solver_order": 2}, {}, 1),
    ("unipc", {"order": 2, "variant": "bh2"}, "UniPCMultistepScheduler",
     {"solver_order": 2, "solver_type": "bh2"}, {}, 1),
]


@pytest.mark.parametrize(("native", "hparams", "scheduler", "overrides", "step_kwargs", "every"),
                         SAME, ids=[f"{c[0]}-{c[2]}" for c in SAME])
def test_same_trajectory_and_result_as_diffusers(native, hparams, scheduler, overrides,
                                                 step_kwargs, every):
    out_n, out_d, xs_n, xs_d, _ = cross_check(
        native, hparams, float64_sigmas(make_scheduler(scheduler, **overrides)), 20, every,
        step_kwargs)
    torch.testing.assert_close(xs_n, xs_d, **TOL)
    torch.testing.assert_close(out_n, out_d, **TOL)


@pytest.mark.parametrize(("native", "hparams", "scheduler", "overrides"), [
    ("lms", {}, "LMSDiscreteScheduler", TRAILING),
    ("unipc", {"order": 2, "variant": "bh1"}, "UniPCMultistepScheduler",
     {"solver_order": 2, "solver_type": "bh1"}),
])
def test_same_trajectory_different_last_step(native, hparams, scheduler, overrides):
    """LMS integrates the step into sigma = 0 with its polynomial, and diffusers' UniPC-bh1
    multiplies B(h) = -h = -inf by a zero residual there (NaN); sdlab's samplers return the
    denoised estimate at the last nonzero sigma."""
    out_n, _, xs_n, xs_d, calls = cross_check(
        native, hparams, float64_sigmas(make_scheduler(scheduler, **overrides)), 20)
    torch.testing.assert_close(xs_n, xs_d, **TOL)
    assert torch.equal(out_n, calls[-1]["denoised"])


@pytest.mark.parametrize("order", [2, 3])
def test_deis_same_trajectory_diffusers_stops_at_sigma_min(order):
    """Diffusers' DEIS takes its last step to sigma_min and returns the VP sample there,
    x / sqrt(1 + sigma_min^2); sdlab's deis goes on from sigma_min to 0, i.e. denoises."""
    scheduler = float64_sigmas(make_scheduler("DEISMultistepScheduler", solver_order=order))
    out_n, out_d, xs_n, xs_d, calls = cross_check("deis", {"order": order}, scheduler, 20)
    torch.testing.assert_close(xs_n[:-1], xs_d, **TOL)
    sigma_min = calls[-1]["sigma"]
    torch.testing.assert_close(out_d * (1 + sigma_min**2) ** 0.5, xs_n[-1], **TOL)
    assert torch.equal(out_n, calls[-1]["denoised"])


def test_lms_last_step_is_adams_bashforth_into_zero_in_diffusers():
    out_n, out_d, _, _, calls = cross_check(
        "lms", {}, float64_sigmas(make_scheduler("LMSDiscreteScheduler", **TRAILING)), 20)
    sig = [c["sigma"] for c in calls[-4:]][::-1]  # newest first
    ds = [(c["x"] - c["denoised"]) / c["sigma"] for c in calls[-4:]][::-1]
    weights = lagrange_weights(sig, sig[0], 0.0)
    expected = calls[-1]["x"] + sum(w * d for w, d in zip(weights, ds, strict=True))
    torch.testing.assert_close(out_d, expected, **TOL)
    assert not torch.allclose(out_d, out_n, **TOL)


@pytest.mark.parametrize("steps", [5, 10, 14])
def test_dpmpp_2m_matches_below_15_steps(steps):
    """Below 15 steps diffusers' lower_order_final only lowers 2M's last step to first order,
    which into sigma = 0 is the denoised estimate: the runs still agree throughout."""
    out_n, out_d, xs_n, xs_d, _ = cross_check(
        "dpmpp_2m", {}, float64_sigmas(make_scheduler(
            "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2)), steps)
    torch.testing.assert_close(xs_n, xs_d, **TOL)
    torch.testing.assert_close(out_n, out_d, **TOL)


def test_unipc_order_3_with_lower_order_final():
    """UniPC-3: diffusers lowers the order of the second-to-last step to 2."""
    _, _, xs_n, xs_d, _ = cross_check("unipc", {"order": 3, "variant": "bh1"}, float64_sigmas(
        make_scheduler("UniPCMultistepScheduler", solver_order=3, solver_type="bh1")), 20)
    torch.testing.assert_close(xs_n[:-1], xs_d[:-1], **TOL)
    assert not torch.allclose(xs_n[-1], xs_d[-1], **TOL)


def test_ddim_without_alpha_to_one_stops_at_the_first_training_sigma():
    """SD's DDIM config (set_alpha_to_one=False) ends at sigma_train[0] = 0.0292, not at 0:
    its result is the last x0 estimate re-noised with the last eps to that level, as a VP
    sample (divided by sqrt(1 + sigma^2))."""
    scheduler = float64_sigmas(make_scheduler("DDIMScheduler"))
    _, out_d, xs_n, xs_d, calls = cross_check("ddim", {}, scheduler, 20)
    torch.testing.assert_close(xs_n, xs_d, **TOL)
    last = calls[-1]
    ac = float(scheduler.alphas_cumprod[0])
    sigma_0 = ((1 - ac) / ac) ** 0.5
    eps = (last["x"] - last["denoised"]) / last["sigma"]
    torch.testing.assert_close(out_d * (1 + sigma_0**2) ** 0.5, last["denoised"] + sigma_0 * eps,
                               **TOL)


def test_dpmpp_sde_matches_dpm_solver_sde(monkeypatch):
    """DPMSolverSDEScheduler imports torchsde (not installed) for its Brownian tree; with a
    stand-in module it imports, and its noise sampler becomes the Brownian tree dpmpp_sde
    builds from the same per-sample noise stream."""
    monkeypatch.setitem(sys.modules, "torchsde", types.ModuleType("torchsde"))
    module = importlib.import_module("diffusers.schedulers.scheduling_dpmsolver_sde")

    def tree(sample, sigma_min, sigma_max, seed):
        gens = generators(SEEDS)
        randn(gens, GMM.shape, dtype=torch.float64)  # the initial latent
        ends = torch.tensor([float(sigma_max), float(sigma_min)], dtype=torch.float64)
        return brownian_noise(sample, ends, SeededNoise(gens, sample))

    monkeypatch.setattr(module, "BrownianTreeNoiseSampler", tree)
    scheduler = module.DPMSolverSDEScheduler(beta_start=0.00085, beta_end=0.012,
                                             beta_schedule="scaled_linear",
                                             use_karras_sigmas=True)
    out_n, out_d, xs_n, xs_d, _ = cross_check("dpmpp_sde", {}, float64_sigmas(scheduler), 20, 2)
    torch.testing.assert_close(xs_n, xs_d, **TOL)
    torch.testing.assert_close(out_n, out_d, **TOL)


def test_dpmpp_3m_third_order_step_vs_diffusers():
    """From the same three data predictions, diffusers' 3M step (the paper's closed form)
    equals sdlab's exact quadratic integral minus half its second-difference term,
    2 h^3 phi_3(-h) b with b the second divided difference of D in t."""
    scheduler = float64_sigmas(make_scheduler("DPMSolverMultistepScheduler",
                                              algorithm_type="dpmsolver++", solver_order=3))
    denoiser = GMMDenoiser(GMM, alphas_cumprod=scheduler.alphas_cumprod.double())
    _, calls = run_diffusers(denoiser, scheduler, 20)
    for k in (4, 7, 10):
        (x, d0), t = (calls[k]["x"], calls[k]["denoised"]), t_of(calls[k]["sigma"])
        d1, d2 = calls[k - 1]["denoised"], calls[k - 2]["denoised"]
        t1, t2, t_next = (t_of(calls[j]["sigma"]) for j in (k - 1, k - 2, k + 1))
        h = t_next - t
        exact = math.exp(-h) * x + sum(c * d for c, d in zip(
            exp_adams_coefficients([t, t1, t2], h), (d0, d1, d2), strict=True))
        b = ((d0 - d1) / (t - t1) - (d1 - d2) / (t1 - t2)) / (t - t2)
        half_term = (math.expm1(-h) + h - h**2 / 2) * b  # = -h^3 phi_3(-h) b
        torch.testing.assert_close(calls[k + 1]["x"], exact + half_term, **TOL)
        assert not torch.allclose(calls[k + 1]["x"], exact, **TOL)


def test_euler_karras_matches_diffusers_to_1e5_relative():
    """The issue-2 acceptance check, on unmodified (float32-sigma) diffusers."""
    scheduler = make_scheduler("EulerDiscreteScheduler", use_karras_sigmas=True)
    for steps in (10, 25):
        out_n, out_d, *_ = cross_check("euler", {}, scheduler, steps)
        assert float((out_n - out_d).norm() / out_d.norm()) < 1e-5


@pytest.mark.parametrize("name", fitting_scheduler_names())
def test_every_fitting_scheduler_runs_on_the_mixture(name):
    counting = CountingMixture()
    denoiser = GMMDenoiser(counting)
    gens = generators(SEEDS)
    z = randn(gens, GMM.shape, dtype=torch.float64)
    out = sample_diffusers(denoiser, z, make_scheduler(name), 12, generators=gens)
    assert out.shape == z.shape and bool(out.isfinite().all())
    assert denoiser.nfe == counting.calls >= 12
    # the samples land near the data: far likelier under the mixture than the noise was
    noise_level = GMM.log_prob(z * 0.5).mean()
    assert GMM.log_prob(out.to(torch.float64), sigma=0.1).mean() > noise_level + 20


@pytest.mark.parametrize("name", sorted(UNFIT))
def test_unfit_schedulers_are_refused_with_their_reason(name):
    assert name in scheduler_names()  # no stale entries
    with pytest.raises(ValueError, match=f"{name} does not fit the bridge: "):
        make_scheduler(name)


def test_unknown_scheduler_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: .*EulerDiscreteScheduler"):
        make_scheduler("EulerScheduler")
