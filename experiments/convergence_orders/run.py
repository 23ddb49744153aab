"""Measure the convergence order of every deterministic sampler on the analytic mixture.

Error = RMS distance to the exact counterpart `GaussianMixture.reference_sample` (exact
PF-ODE solution at sigma_min, denoised) from the same starting noise; the order between
n and 2n steps is log2(err_n / err_2n). Two schedules on the model's range (SD1.5's
0.0292-14.6146): plain `karras` (rho = 7), and karras with a quadratic start (ramp
u = (i / (n - 1))^2), whose first steps are O(h^2) long so the lower-order warm-up of
multistep methods no longer limits the order measured.

    python experiments/convergence_orders/run.py [--max-steps 512]

writes reports/convergence_orders/orders.md and orders.csv.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch

from sdlab import samplers, schedules
from sdlab.models.gmm import GaussianMixture, GMMDenoiser
from sdlab.samplers.common import denoise, steps, t_of

OUT = Path(__file__).resolve().parents[2] / "reports" / "convergence_orders"

# (sampler, hyperparameters, theoretical order); every deterministic registered sampler,
# with the configurable orders spelled out.
CASES = [
    ("euler", {}, 1), ("heun", {}, 2), ("dpm_2", {}, 2), ("heunpp2", {}, 1), ("ddim", {}, 1),
    *[("lms", {"order": p}, p) for p in (1, 2, 3, 4)],
    # fixed equal-step weights: second order on any non-uniform schedule (see ipndm_v)
    *[("ipndm", {"order": p}, min(p, 2)) for p in (1, 2, 3, 4)],
    ("ipndm_v", {}, 4),
    *[("deis", {"order": p}, p) for p in (1, 2, 3)],
    ("dpmpp_2m", {}, 2), ("dpmpp_3m", {}, 3), ("res_multistep", {}, 2),
    # UniPC-p: UniP-p predictor of order p, raised to p + 1 by the UniC corrector
    *[("unipc", {"order": p, "variant": v}, p + 1) for v in ("bh1", "bh2") for p in (1, 2, 3)],
    ("unipc", {"order": 2, "corrector": False}, 2),
    ("euler_cfg_pp", {}, 1), ("dpmpp_2m_cfg_pp", {}, 2),
]


def paper_dpmpp_3m(denoiser, x, sigmas):
    """DPM-Solver++(3M) with the paper's closed-form weights, as diffusers'
    DPMSolverMultistepScheduler(solver_order=3) computes them; for comparison only."""
    hist, hs = [], []
    for _, sigma, sigma_next in steps(sigmas):
        denoised = denoise(denoiser, x, sigma)
        if sigma_next == 0:
            return denoised
        h = t_of(sigma_next) - t_of(sigma)
        hist = [denoised, *hist][:3]
        x_next = (sigma_next / sigma) * x - math.expm1(-h) * denoised
        if len(hist) == 2:  # 2M warm-up step (midpoint form)
            x_next = x_next - 0.5 * math.expm1(-h) * (hist[0] - hist[1]) * h / hs[0]
        if len(hist) == 3:
            r0, r1 = hs[0] / h, hs[1] / h
            d1_0, d1_1 = (hist[0] - hist[1]) / r0, (hist[1] - hist[2]) / r1
            d1, d2 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)
            x_next = (x_next + (math.expm1(-h) / h + 1) * d1
                      - ((math.expm1(-h) + h) / h**2 - 0.5) * d2)
        x, hs = x_next, [h, *hs][:2]
    return x


def karras_quadratic_start(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """Karras sigmas at ramp points u_i = (i / (n - 1))^2, then 0."""
    u = torch.linspace(0, 1, n, dtype=torch.float64) ** 2
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return schedules.append_zero((hi + u * (lo - hi)) ** rho)


def problem(seed: int = 0, batch: int = 4):
    """The mixture, its denoiser, starting noise x = sigma_max z and the exact reference."""
    gmm = GaussianMixture.random((4, 4, 4), components=4, seed=seed)
    denoiser = GMMDenoiser(gmm)
    z = torch.randn(batch, *gmm.shape, generator=torch.Generator().manual_seed(seed + 1),
                    dtype=torch.float64)
    x = denoiser.sigma_max * z
    return gmm, denoiser, x, gmm.reference_sample(x, denoiser.sigma_max, denoiser.sigma_min)


def errors(denoiser, x, ref, sample, hparams, schedule, ns) -> list[float]:
    out = []
    for n in ns:
        result = sample(denoiser, x.clone(), schedule(n), **hparams)
        out.append(float((result - ref).pow(2).mean().sqrt()))
    return out


def orders(errs: list[float]) -> list[float]:
    return [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tensors this small run slower when split across threads
    ns = [2**k for k in range(3, int(math.log2(args.max_steps)) + 1)]
    _, denoiser, x, ref = problem()
    lo, hi = denoiser.sigma_min, denoiser.sigma_max
    grids = {"karras": lambda n: schedules.karras(n, sigma_min=lo, sigma_max=hi),
             "karras_qs": lambda n: karras_quadratic_start(n, lo, hi)}
    rows = []
    # the published closed form of 3M (not a registered sampler), for comparison
    cases = [(name, samplers.get(name), hp, theory) for name, hp, theory in CASES]
    for name, sample, hparams, theory in [*cases, ("paper_dpmpp_3m", paper_dpmpp_3m, {}, 3)]:
        for grid, schedule in grids.items():
            errs = errors(denoiser, x, ref, sample, hparams, schedule, ns)
            rows.append({"sampler": name, "hparams": hparams, "theory": theory, "grid": grid,
                         "errors": errs, "orders": orders(errs)})
            print(name, hparams, grid, " ".join(f"{o:.2f}" for o in rows[-1]["orders"]),
                  flush=True)
    write(rows, ns)


def write(rows: list[dict], ns: list[int]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = [f"{a}->{b}" for a, b in zip(ns, ns[1:], strict=False)]
    with open(OUT / "orders.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sampler", "hparams", "grid", "theory", *[f"err@{n}" for n in ns],
                    *[f"order {p}" for p in pairs]])
        for r in rows:
            w.writerow([r["sampler"], r["hparams"] or "", r["grid"], r["theory"],
                        *[f"{e:.4e}" for e in r["errors"]], *[f"{o:.3f}" for o in r["orders"]]])
    lines = ["# Convergence orders on the analytic mixture", "",
             "Generated by `python experiments/convergence_orders/run.py`; do not edit.",
             "Order between n and 2n steps = log2(err_n / err_2n); error = RMS distance to the",
             "exact reference (`GaussianMixture.reference_sample`). `karras`: rho = 7 on",
             "0.0292-14.6146; `karras_qs`: same with a quadratic start (first steps O(h^2)).", "",
             "| sampler | hparams | grid | theory | " + " | ".join(pairs) + " |",
             "|---" * (4 + len(pairs)) + "|"]
    for r in rows:
        hp = ", ".join(f"{k}={v}" for k, v in r["hparams"].items())
        lines.append(f"| {r['sampler']} | {hp} | {r['grid']} | {r['theory']} | "
                     + " | ".join(f"{o:.2f}" for o in r["orders"]) + " |")
    (OUT / "orders.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
