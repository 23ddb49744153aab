"""Every native sampler and every bridged diffusers scheduler on a CUDA device, against the CPU.

    python benchmarks/cuda_smoke.py [--steps 6] [--images 4] [--out benchmarks/results/...]

The test suite runs on the CPU only, so device-placement mistakes (a CPU tensor meeting a
CUDA one) can hide there. This script runs each sampler (karras schedule) and each scheduler
the bridge drives on the bundled tiny_shapes model, fp32, CFG 3, the same seeds on both
devices, and reports the max |difference| of the decoded images (CUDA kernels round
differently, cuDNN convolutions may use TF32: expect 1e-3, not 1e-7) or the error it met.
Exit status 1 when any sampler failed or produced non-finite images.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

from sdlab import samplers, schedules
from sdlab.guidance import GuidanceRule
from sdlab.models.sd import bundled
from sdlab.pipeline import DiffusersSampling, NativeSampling, generate
from sdlab.samplers.diffusers_bridge import fitting_scheduler_names
from sdlab.shapes.dataset import get_batch


def images(model, sampling, steps: int, n: int) -> torch.Tensor:
    prompts = get_batch(range(n), "heldout", 0)[1]
    batch = next(generate(model, sampling, steps, list(range(n)), prompts=prompts,
                          guidance=GuidanceRule(3.0), batch_size=n))
    return batch.outputs.float().cpu()


def setups() -> list[tuple[str, object]]:
    out = [(name, NativeSampling(samplers.get(name), schedules.karras, name, "karras"))
           for name in samplers.names()]
    out += [(name, DiffusersSampling(name)) for name in fitting_scheduler_names()]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 0
    cpu, gpu = bundled(device="cpu"), bundled(device="cuda")
    rows, failed = [], 0
    for name, sampling in setups():
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                ref = images(cpu, sampling, args.steps, args.images)
                out = images(gpu, sampling, args.steps, args.images)
            finite = bool(torch.isfinite(out).all())
            diff = (out - ref).abs().max().item()
            status = "ok" if finite else "non-finite"
            failed += not finite
            rows.append(f"| {name} | {status} | {diff:.2e} | {time.perf_counter() - start:.1f} |")
        except Exception as err:  # noqa: BLE001 (the report lists every failure)
            failed += 1
            where = traceback.extract_tb(err.__traceback__)[-1]
            rows.append(f"| {name} | {type(err).__name__}: {err} ({Path(where.filename).name}:"
                        f"{where.lineno}) | - | - |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"# CUDA vs CPU, every sampler ({torch.cuda.get_device_name()}, torch {torch.__version__})",
        "",
        f"Bundled tiny_shapes model, fp32, {args.images} images, {args.steps} steps, CFG 3, "
        "karras schedule for native samplers. Command: `python benchmarks/cuda_smoke.py`.",
        "",
        "| sampler | status | max abs diff vs CPU (images in [0, 1]) | seconds |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"{failed} of {len(rows)} failed.",
    ])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
