"""sdlab: a laboratory for diffusion samplers and noise schedules."""

__version__ = "0.1.0"
