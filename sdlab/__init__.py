"""sdlab: a laboratory for diffusion samplers and noise schedules."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

ASSETS = Path(__file__).resolve().parent / "assets"

# Config resolvers: a job directory name for runs without overrides, and paths of the
# files shipped with the package, whatever the working directory.
OmegaConf.register_new_resolver("sdlab_jobdir", lambda overrides: overrides or "default",
                                replace=True)
OmegaConf.register_new_resolver("sdlab_asset", lambda rel: str(ASSETS / rel), replace=True)
