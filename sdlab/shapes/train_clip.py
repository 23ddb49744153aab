"""Stage 2: a tiny CLIP (transformers CLIPModel), trained contrastively on image-caption pairs.

    python -m sdlab.shapes.train_clip --tokenizer .train/tokenizer --out .train/clip

Images enter the vision tower in [-1, 1] (`image * 2 - 1`); captions are padded to the
tokenizer's model_max_length with no attention mask, exactly as SD pipelines call the text tower.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from sdlab.shapes.dataset import get_batch
from sdlab.shapes.training import Run, image_pool, lr_at, stage_parser, to_model_range


def clip_config(tokenizer: CLIPTokenizer, hidden: int = 128, layers: int = 3) -> CLIPConfig:
    """Two small towers: a ViT on 8x8 patches (16 tokens) and a causal text transformer."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    tower = {
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
    }
    text = {"vocab_size": len(tokenizer), "max_position_embeddings": tokenizer.model_max_length}
    vision = {"image_size": 32, "patch_size": 8}
    return CLIPConfig(
        text_config=tower | text | ids, vision_config=tower | vision, projection_dim=hidden
    )


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids [N, model_max_length], padded as SD pipelines pad them."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def retrieval_top1(
    model: CLIPModel,
    tokenizer: CLIPTokenizer,
    images: torch.Tensor,
    captions: list[str],
    group: int = 32,
) -> float:
    """Text->image top-1 accuracy, each caption against the `group` images of its own chunk."""
    if len(captions) < group:
        raise ValueError(
            f"retrieval among {group} needs at least {group} images, got {len(captions)}"
        )
    model.eval()
    hits = []
    for start in range(0, len(captions) - group + 1, group):
        pixels = to_model_range(images[start : start + group])
        img = model.get_image_features(pixel_values=pixels).pooler_output
        ids = tokenize(tokenizer, captions[start : start + group])
        txt = model.get_text_features(input_ids=ids).pooler_output
        sims = F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T
        hits.append(sims.argmax(1) == torch.arange(group))
    model.train()
    return torch.cat(hits).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(
        __doc__, ".train/clip", steps=2000, batch_size=128, lr=1e-3, num_images=100_000
    )
    parser.add_argument("--tokenizer", type=Path, default=Path(".train/tokenizer"))
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--eval-images", type=int, default=1024)
    args = parser.parse_args(argv)
    run = Run(args)
    tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer)
    images, captions = image_pool(args.num_images, args.seed, args.cache)
    unique = sorted(set(captions))
    token_ids = tokenize(tokenizer, unique)
    lookup = {c: i for i, c in enumerate(unique)}
    caption_index = torch.tensor([lookup[c] for c in captions])
    eval_images, eval_captions, _ = get_batch(range(args.eval_images), "heldout", args.seed)

    model = CLIPModel(clip_config(tokenizer, args.hidden, args.layers))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    state = {"model": model, "opt": opt}
    run.resume(state)
    model.train()
    while run.step < args.steps:
        idx = torch.randint(len(images), (args.batch_size,), generator=run.generator)
        for g in opt.param_groups:
            g["lr"] = lr_at(run.step, args, warmup=100)
        out = model(
            input_ids=token_ids[caption_index[idx]],
            pixel_values=to_model_range(images[idx]),
            return_loss=True,
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        run.step += 1
        if run.step % args.log_every == 0:
            run.log(loss=round(out.loss.item(), 4))
        if run.step % args.ckpt_every == 0 or run.step == args.steps:
            run.checkpoint(state)
            run.log(heldout_top1=retrieval_top1(model, tokenizer, eval_images, eval_captions))
    final = args.out / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    CLIPImageProcessor(
        do_resize=False, do_center_crop=False, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(final)
    run.finish(heldout_top1=retrieval_top1(model, tokenizer, eval_images, eval_captions))


if __name__ == "__main__":
    main()
