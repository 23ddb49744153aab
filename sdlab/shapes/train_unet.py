"""Stage 4: a tiny UNet2DConditionModel on VAE latents, conditioned on the frozen CLIP text tower.

    python -m sdlab.shapes.train_unet --vae .train/vae/final --clip .train/clip/final

Stable Diffusion's recipe at toy scale: latents scaled by the VAE's `scaling_factor`, SD's
`scaled_linear` betas (0.00085 -> 0.012, 1000 steps), epsilon prediction, the text tower's last
hidden state as context, and the empty caption's context for `--p-uncond` of the samples so
classifier-free guidance works. Latent posteriors and caption contexts are computed once
(OUT/precomputed.pt); the exported weights are the EMA of the trained ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from sdlab.shapes.train_clip import tokenize
from sdlab.shapes.training import Run, atomic_save, image_pool, lr_at, stage_parser, to_model_range

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def unet_model(
    cross_attention_dim: int, channels: tuple[int, ...] = (64, 96), layers_per_block: int = 1
) -> UNet2DConditionModel:
    """Plain residual blocks at 8x8, cross-attention at 4x4 and in the middle block."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=min(32, channels[0]),
    )


def text_encoder_from_clip(clip_dir: Path) -> CLIPTextModel:
    """The text tower of a saved CLIPModel as the CLIPTextModel SD pipelines load."""
    clip = CLIPModel.from_pretrained(clip_dir)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval()


@torch.no_grad()
def precompute(args, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer) -> dict:
    """Latent posterior mean/std of the pool and the context of each distinct caption."""
    path = args.out / "precomputed.pt"
    if path.exists():
        return torch.load(path)
    images, captions = image_pool(args.num_images, args.seed, args.cache)
    means, stds = [], []
    for chunk in images.split(512):
        posterior = vae.encode(to_model_range(chunk)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    unique = ["", *sorted(set(captions))]  # index 0: the empty caption of CFG's uncond branch
    lookup = {c: i for i, c in enumerate(unique)}
    contexts = torch.cat(
        [text_encoder(ids).last_hidden_state for ids in tokenize(tokenizer, unique).split(512)]
    )
    data = {
        "mean": torch.cat(means),
        "std": torch.cat(stds),
        "caption_index": torch.tensor([lookup[c] for c in captions]),
        "contexts": contexts,
    }
    atomic_save(data, path)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        __doc__, ".train/unet", steps=3000, batch_size=64, lr=1e-3, num_images=40_000
    )
    parser.add_argument("--vae", type=Path, default=Path(".train/vae/final"))
    parser.add_argument("--clip", type=Path, default=Path(".train/clip/final"))
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--p-uncond", type=float, default=0.1)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    args = parser.parse_args(argv)
    run = Run(args)
    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    text_encoder = text_encoder_from_clip(args.clip)
    data = precompute(args, vae, text_encoder, CLIPTokenizer.from_pretrained(args.clip))
    scaling_factor = vae.config.scaling_factor
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)

    unet = unet_model(text_encoder.config.hidden_size, tuple(args.channels), args.layers_per_block)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    state = {"model": unet, "ema": ema, "opt": opt}
    run.resume(state)
    unet.train()
    g = run.generator
    while run.step < args.steps:
        idx = torch.randint(len(data["mean"]), (args.batch_size,), generator=g)
        eps_latent = torch.randn(data["mean"][idx].shape, generator=g)
        latents = (data["mean"][idx] + data["std"][idx] * eps_latent) * scaling_factor
        keep = torch.rand(args.batch_size, generator=g) >= args.p_uncond
        context = data["contexts"][data["caption_index"][idx] * keep]
        t = torch.randint(scheduler.config.num_train_timesteps, (args.batch_size,), generator=g)
        noise = torch.randn(latents.shape, generator=g)
        pred = unet(scheduler.add_noise(latents, noise, t), t, context).sample
        loss = F.mse_loss(pred, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(run.step, args, warmup=200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema_decay, (1 + run.step) / (10 + run.step))
        torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1 - decay)
        run.step += 1
        if run.step % args.log_every == 0:
            run.log(loss=round(loss.item(), 4))
        if run.step % args.ckpt_every == 0 or run.step == args.steps:
            run.checkpoint(state)
            ema.save_pretrained(args.out / "ema")
    ema.save_pretrained(args.out / "final")
    run.finish(scaling_factor=scaling_factor)


if __name__ == "__main__":
    main()
