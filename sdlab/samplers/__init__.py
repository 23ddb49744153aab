"""Sampler registry. Every sampler shares one signature:

    sample(denoiser, x, sigmas, *, noise=None, callback=None, **hparams) -> Tensor

`x` enters at noise level `sigmas[0]`; stochastic samplers draw all randomness through
`noise(sigma, sigma_next)`. Register a new one with `@register(...)`, giving its `order`,
`type` ("ODE" or "SDE"), `steps` ("single", "multi" or "adaptive"), `nfe_per_step` and
`paper`; `stochastic_with` gives hyperparameters that make a sampler that is deterministic
by default random (EDM churn, DDIM's eta).
"""

from typing import Any

from sdlab.registry import Registry

registry = Registry("sampler")
register = registry.register
get = registry.get
names = registry.names


def describe() -> list[dict[str, Any]]:
    """One row per registered sampler: name, order, type, steps, nfe_per_step, paper, summary."""
    return [{"name": e.name, "order": e.info.get("order"), "type": e.info.get("type"),
             "steps": e.info.get("steps"), "nfe_per_step": e.info.get("nfe_per_step"),
             "stochastic_with": e.info.get("stochastic_with"), "paper": e.paper,
             "description": e.description} for e in registry.entries()]


from sdlab.samplers import (  # noqa: E402,F401  (the modules register their samplers)
    adaptive,
    cfg_pp,
    multistep,
    ode,
    sde,
)
