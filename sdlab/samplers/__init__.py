"""Sampler registry. Every sampler shares one signature:

    sample(denoiser, x, sigmas, *, noise=None, callback=None, **hparams) -> Tensor

`x` enters at noise level `sigmas[0]`; stochastic samplers draw all randomness through
`noise(sigma, sigma_next)`. Register a new one with `@register(...)`.
"""

from sdlab.registry import Registry

registry = Registry("sampler")
register = registry.register
get = registry.get
names = registry.names

from sdlab.samplers import ode, sde  # noqa: E402,F401  (modules register their samplers)
