"""Models: the analytic Gaussian mixture and latent diffusion models, each behind a Denoiser."""
