"""The shapes dataset, its checker, the training stages end to end, and the shipped model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur
from transformers import CLIPTokenizer

from sdlab.shapes import evaluate, export, train_clip, train_tokenizer, train_unet, train_vae
from sdlab.shapes.checker import detect, shapes_accuracy, shapes_report
from sdlab.shapes.dataset import (
    COLORS,
    SHAPES,
    ShapesDataset,
    get_batch,
    get_item,
    parse_caption,
    render,
    vocabulary,
)

ASSET = export.ASSET_DIR


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_items_do_not_depend_on_batching_or_order():
    images, captions, objects = get_batch([7, 2, 11])
    for j, i in enumerate([7, 2, 11]):
        item = get_item(i)
        assert torch.equal(item.image, images[j])
        assert (item.caption, item.objects) == (captions[j], objects[j])
    dataset = ShapesDataset(12)
    assert torch.equal(dataset[11][0], images[2])
    assert not torch.equal(get_item(2, "heldout").image, get_item(2, "train").image)
    assert not torch.equal(get_item(2, seed=1).image, get_item(2, seed=0).image)


def test_items_are_images_in_unit_range_with_varied_content():
    images, captions, _ = get_batch(range(200), "heldout")
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert len(set(captions)) > 150
    words = {w for c in captions for w in c.split()}
    assert set(COLORS) | set(SHAPES) <= words


def test_captions_parse_back_to_attributes():
    _, captions, objects = get_batch(range(300))
    assert [parse_caption(c) for c in captions] == objects
    with pytest.raises(ValueError, match="not a shapes caption"):
        parse_caption("a small red dog on the left")


def test_tokenizer_gives_each_grammar_word_one_token(tmp_path):
    train_tokenizer.build_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    caption = get_item(0).caption
    ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 32 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.unk_token_id not in ids[1 : ids.index(tokenizer.eos_token_id)]
    assert tokenizer.decode(ids, skip_special_tokens=True) == caption


def test_checker_accepts_real_heldout_images():
    images, captions, _ = get_batch(range(300), "heldout")
    report = shapes_report(images, captions)
    assert report["correct"].mean() >= 0.98, {k: v.mean().item() for k, v in report.items()}
    # generated images are soft: blurred real images still pass
    blurred = shapes_report(gaussian_blur(images, 7, 1.0), captions)["correct"]
    assert blurred.mean() >= 0.98
    # upsampled images are scored the same way (the checker works at 32x32)
    big = torch.nn.functional.interpolate(images[:20], scale_factor=2, mode="nearest")
    assert torch.equal(shapes_accuracy(big, captions[:20]), report["correct"][:20])


def _wrong(objects, field, values):
    first = objects[0]
    other = next(v for v in values if v != getattr(first, field))
    return (dataclasses.replace(first, **{field: other}), *objects[1:])


@pytest.mark.parametrize("blur", [0.0, 1.0])
@pytest.mark.parametrize(
    "field,values",
    [("color", list(COLORS)), ("shape", SHAPES), ("size", ["small", "large"])],
)
def test_checker_rejects_a_wrong_attribute(field, values, blur):
    for i in range(20):
        item = get_item(i, "heldout")
        wrong = _wrong(item.objects, field, values)
        image = torch.from_numpy(render(wrong, np.random.default_rng(i)))
        if blur:
            image = gaussian_blur(image, 7, blur)
        report = shapes_report(image[None], [item.caption])
        assert report["correct"].item() == 0 and report[field].item() == 0, item.caption


def test_checker_rejects_wrong_position_and_count():
    items = [get_item(i) for i in range(100)]
    item = next(
        it for it in items if len(it.objects) == 2 and it.objects[0].color != it.objects[1].color
    )
    first, second = item.objects
    swapped = (
        dataclasses.replace(first, position=second.position),
        dataclasses.replace(second, position=first.position),
    )
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy(render(o, rng)) for o in (swapped, item.objects[:1])])
    report = shapes_report(images, [item.caption] * 2)
    assert report["correct"].tolist() == [0, 0]
    assert report["count"].tolist() == [1, 0]
    assert detect(torch.full((3, 32, 32), 0.5)) == []


def test_every_stage_trains_resumes_exports_and_loads(tmp_path, restore_threads, monkeypatch):
    import json

    from diffusers import StableDiffusionPipeline

    t = tmp_path
    common = f"--cache {t}/cache --num-images 32 --batch-size 8 --log-every 1 --ckpt-every 2"
    train_tokenizer.main(f"--out {t}/tokenizer".split())
    train_clip.main(
        f"--out {t}/clip --tokenizer {t}/tokenizer --steps 2 --hidden 32 --layers 1 "
        f"--eval-images 32 {common}".split()
    )
    train_vae.main(f"--out {t}/vae --steps 2 --channels 16 16 16 --eval-images 8 {common}".split())
    train_vae.main(
        f"--out {t}/vae_decoder --finetune-decoder {t}/vae/final --steps 2 --eval-images 8 "
        f"{common}".split()
    )
    unet = f"--out {t}/unet --vae {t}/vae/final --clip {t}/clip/final --channels 32 32 {common}"
    train_unet.main(f"{unet} --steps 2".split())
    train_unet.main(f"{unet} --steps 3 --resume".split())
    assert (t / "unet" / "log.jsonl").read_text().count('"resumed_from": 2') == 1

    export.export(tmp_path, tmp_path / "model")
    assert "## Measured" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(get_item(0).caption, num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 3, 32, 32) and torch.isfinite(out.images).all()

    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "sdlab_cache"))
    evaluate.main(
        f"--model {tmp_path}/model --n-real 32 --n-generated 6 --steps 2 --guidance 1 2 "
        "--euler-steps 1 2 --euler-images 8 --reference-n 16".split()
    )
    rows = {r["name"]: r for r in json.loads((tmp_path / "model" / "metrics.json").read_text())[
        "rows"]}
    floor = rows["fd_clip_tokens data-vs-data floor, 6 images"]
    assert floor["value"] > 0 and "items 16-39" in floor["setting"]  # 4 sets of 6 after the ref
    assert "items 16-47" in rows["fd_clip_tokens data-vs-data floor, 8 images"]["setting"]
    assert "x the 8-image floor" in rows["fd_clip_tokens, Euler karras 2 steps (cfg 3)"]["setting"]
    assert {"fd_clip, generated (cfg 2)", "fd_clip_tokens, Euler karras 2 steps (cfg 3)"} <= set(
        rows)
    assert "x the data-vs-data floor" in rows["fd_clip_tokens, generated (cfg 1)"]["setting"]
    paired = rows["fd_clip_tokens, Euler 1 steps minus 2 steps"]
    assert "paired basic bootstrap 95% interval" in paired["setting"]
    assert "fd_clip_tokens data-vs-data floor, 6 images" in (
        tmp_path / "model" / "MODEL_CARD.md"
    ).read_text()


@pytest.mark.skipif(not (ASSET / "model_index.json").exists(), reason="model not exported yet")
def test_shipped_model_draws_what_its_prompts_ask_for(restore_threads):
    from diffusers import StableDiffusionPipeline

    from sdlab.shapes.evaluate import dpmpp_2m_karras, generate

    pipe = dpmpp_2m_karras(StableDiffusionPipeline.from_pretrained(ASSET))
    pipe.set_progress_bar_config(disable=True)
    captions = get_batch(range(16), "heldout", seed=1)[1]
    images = generate(pipe, captions, steps=15, guidance=4.0)
    assert images.shape == (16, 3, 32, 32)
    assert shapes_accuracy(images, captions).mean() >= 0.75
