"""Console entry points: `sdlab` (the Hydra app) and `sdlab-list`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    from hydra.errors import InstantiationException

    from sdlab import distributed
    from sdlab.experiment import run

    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
        distributed.finish()
    except (ValueError, FileNotFoundError, InstantiationException) as err:
        # a config's factory failing reaches us wrapped by Hydra: report its own message
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if not isinstance(cause, ValueError | FileNotFoundError):
            raise
        print(f"sdlab: error: {cause}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    app()


def list_main(argv: list[str] | None = None) -> None:
    """Print every sampler, schedule, diffusers scheduler, guidance rule, model and metric."""
    from sdlab import guidance, samplers, schedules
    from sdlab.samplers.diffusers_bridge import UNFIT, scheduler_names

    groups = ("samplers", "schedules", "schedulers", "guidance", "models", "metrics")
    parser = argparse.ArgumentParser(prog="sdlab-list", description=list_main.__doc__)
    parser.add_argument("what", nargs="?", choices=groups, help="list only this group")
    args = parser.parse_args(argv)

    def show(title: str, rows: list[tuple[str, str]]) -> None:
        print(f"{title}:")
        for name, text in rows:
            print(f"  {name:28s} {text}")

    def registry_rows(reg) -> list[tuple[str, str]]:
        rows = []
        for e in reg.entries():
            info = " ".join(f"{k}={v}" for k, v in e.info.items())
            rows.append((e.name, " | ".join(p for p in (e.description, info, e.paper) if p)))
        return rows

    def config_rows(group: str) -> list[tuple[str, str]]:
        rows = []
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            first = path.read_text().splitlines()[0] if path.read_text() else ""
            rows.append((path.stem, first.lstrip("# ") if first.startswith("#") else ""))
        return rows

    tables = {
        "samplers": lambda: registry_rows(samplers.registry),
        "schedules": lambda: registry_rows(schedules.registry),
        "schedulers": lambda: [(n, f"not bridged: {UNFIT[n]}" if n in UNFIT else
                                "sampler=diffusers sampler.scheduler=" + n)
                               for n in scheduler_names()],
        "guidance": lambda: registry_rows(guidance.registry),
        "models": lambda: config_rows("model"),
        "metrics": lambda: config_rows("metrics"),
    }
    for group in [args.what] if args.what else groups:
        show(group, tables[group]())
