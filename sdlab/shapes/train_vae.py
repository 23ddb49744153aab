"""Stage 3: a tiny diffusers AutoencoderKL, 32x32x3 images <-> 8x8x4 latents.

    python -m sdlab.shapes.train_vae --out .train/vae

Loss as in latent diffusion's KL autoencoder, without the perceptual and adversarial terms:
squared error summed over pixels plus 1e-6 x KL, divided by the pixel count. At the end
`scaling_factor` = 1 / std of sampled latents is written into the VAE config, like SD's 0.18215.

    python -m sdlab.shapes.train_vae --finetune-decoder .train/vae/final --out .train/vae_decoder

continues the decoder alone with the encoder frozen, as SD's ft-MSE decoders were made: the
latents, and so the scaling factor and a UNet trained on them, stay valid.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from sdlab.shapes.dataset import get_batch
from sdlab.shapes.training import Run, image_pool, lr_at, stage_parser, to_model_range

KL_WEIGHT = 1e-6


def vae_model(channels: tuple[int, ...] = (32, 64, 64)) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Images in [0, 1] through encode (posterior mode) and decode, clamped to [0, 1]."""
    was_training = vae.training
    vae.eval()
    out = [
        (vae.decode(vae.encode(to_model_range(c)).latent_dist.mode()).sample / 2 + 0.5).clamp(0, 1)
        for c in images.split(batch)
    ]
    vae.train(was_training)
    return torch.cat(out)


def reconstruction_psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean over images in [0, 1] of the PSNR (dB) of their reconstruction."""
    mse = (reconstruct(vae, images) - images).pow(2).flatten(1).mean(1)
    return (-10 * torch.log10(mse)).mean().item()


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, batch: int = 256) -> float:
    """1 / std of latents sampled from the posterior of `images` (uint8 or [0, 1])."""
    latents = [vae.encode(to_model_range(c)).latent_dist.sample() for c in images.split(batch)]
    return 1.0 / torch.cat(latents).std().item()


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        __doc__, ".train/vae", steps=1200, batch_size=64, lr=1e-3, num_images=100_000
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--eval-images", type=int, default=512)
    parser.add_argument("--finetune-decoder", type=Path, help="trained VAE whose decoder to train")
    args = parser.parse_args(argv)
    run = Run(args)
    images, _ = image_pool(args.num_images, args.seed, args.cache)
    eval_images = get_batch(range(args.eval_images), "heldout", args.seed)[0]

    if args.finetune_decoder:
        vae = AutoencoderKL.from_pretrained(args.finetune_decoder)
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    else:
        vae = vae_model(tuple(args.channels))
    trained = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    state = {"model": vae, "opt": opt}
    run.resume(state)
    vae.train()
    while run.step < args.steps:
        idx = torch.randint(len(images), (args.batch_size,), generator=run.generator)
        for g in opt.param_groups:
            g["lr"] = lr_at(run.step, args, warmup=100)
        x = to_model_range(images[idx])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=run.generator)).sample
        rec = F.mse_loss(recon, x, reduction="sum") / len(x)
        loss = (rec + KL_WEIGHT * posterior.kl().mean()) / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.step += 1
        if run.step % args.log_every == 0:
            run.log(loss=round(loss.item(), 6))
        if run.step % args.ckpt_every == 0 or run.step == args.steps:
            run.checkpoint(state)
            run.log(heldout_psnr=round(reconstruction_psnr(vae, eval_images), 2))
    vae.eval()
    if not args.finetune_decoder:
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, images[:4096]))
    vae.save_pretrained(args.out / "final")
    run.finish(
        heldout_psnr=reconstruction_psnr(vae, eval_images), scaling_factor=vae.config.scaling_factor
    )


if __name__ == "__main__":
    main()
