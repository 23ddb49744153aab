"""Loading latent diffusion models: folders, single files, hub ids, and every clear refusal."""
# ruff: noqa: F811  (pytest fixtures are imported, then named as arguments)

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_models import (  # noqa: F401  (tiny_dirs, tiny_model: fixtures)
    SIZE,
    save_single_file,
    tiny_dirs,
    tiny_model,
)

from sdlab.guidance import GuidanceRule
from sdlab.models.loading import ModelLoadError
from sdlab.models.sd import build
from sdlab.pipeline import DiffusersSampling, generate


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.fixture(scope="session")
def single_files(tiny_dirs, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("single_files")
    return {f: save_single_file(d, root / f"{f}.safetensors") for f, d in tiny_dirs.items()}


def test_folder_families_and_prediction_types(tiny_model):
    assert tiny_model("sd1").parts.prediction_type == "epsilon"
    assert tiny_model("sd2").denoiser().prediction_type == "v_prediction"
    xl = tiny_model("sdxl")
    assert xl.parts.family == "sdxl" and len(xl.parts.text_encoders) == 2
    assert xl.latent_shape == (4, SIZE // 2, SIZE // 2)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_loads_the_same_weights(tiny_model, tiny_dirs, single_files, family):
    """Original-layout single files, loaded offline with the architecture given by `config`."""
    folder = tiny_model(family).parts
    single = build(str(single_files[family]), config=str(tiny_dirs[family]),
                   local_files_only=True, device="cpu", height=SIZE, width=SIZE).parts
    assert single.family == folder.family
    assert single.prediction_type == folder.prediction_type
    for a, b in [(folder.unet, single.unet), (folder.vae, single.vae),
                 *zip(folder.text_encoders, single.text_encoders, strict=True)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_single_file_without_config_offline_says_what_to_pass(single_files):
    with pytest.raises(ModelLoadError) as err:
        build(str(single_files["sd1"]), local_files_only=True, device="cpu")
    assert "config" in one_line_error(err)


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        build(str(tmp_path / "no_such_model"))
    assert "does not exist" in one_line_error(err)


def test_hub_id_not_cached_offline():
    with pytest.raises(ModelLoadError) as err:
        build("sdlab-tests/no-such-model", local_files_only=True)
    assert "local_files_only" in one_line_error(err)


def test_pickle_checkpoint_needs_allow_pickle(single_files, tiny_dirs, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(single_files["sd1"]))}, ckpt)
    with pytest.raises(ModelLoadError) as err:
        build(str(ckpt), config=str(tiny_dirs["sd1"]), local_files_only=True)
    assert "allow_pickle" in one_line_error(err)
    model = build(str(ckpt), config=str(tiny_dirs["sd1"]), local_files_only=True,
                  allow_pickle=True, device="cpu")
    assert model.parts.family == "sd"


def test_pickle_only_folder_component_needs_allow_pickle(tiny_dirs, tiny_model, tmp_path):
    folder = shutil.copytree(tiny_dirs["sd1"], tmp_path / "sd1")
    shutil.rmtree(folder / "unet")
    tiny_model("sd1").parts.unet.save_pretrained(folder / "unet", safe_serialization=False)
    with pytest.raises(ModelLoadError) as err:
        build(str(folder))
    assert "allow_pickle" in one_line_error(err) and "unet" in str(err.value)
    assert build(str(folder), allow_pickle=True, device="cpu").parts.family == "sd"


def test_corrupt_safetensors(tiny_dirs, single_files, tmp_path):
    folder = shutil.copytree(tiny_dirs["sd1"], tmp_path / "sd1")
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as err:
        build(str(folder))
    assert "corrupt" in one_line_error(err)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(ModelLoadError) as err:
        build(str(bad), config=str(tiny_dirs["sd1"]))
    assert "corrupt" in one_line_error(err)


def test_size_not_divisible_by_the_vae_factor(tiny_dirs):
    with pytest.raises(ValueError) as err:
        build(str(tiny_dirs["sd1"]), height=SIZE + 1, width=SIZE, device="cpu")
    assert "VAE factor" in one_line_error(err)


def test_empty_prompt_list_fails_before_generating(tiny_model):
    model = tiny_model("sd1")
    with pytest.raises(ValueError) as err:
        generate(model, DiffusersSampling("EulerDiscreteScheduler"), 4, [0], prompts=[])
    assert "empty" in one_line_error(err)


@pytest.mark.parametrize("options", [{"dtype": "bf16"}, {"channels_last": True},
                                     {"vae_tiling": True, "vae_batch_size": 1}])
def test_options_generate_images(tiny_model, options):
    reference = next(generate(tiny_model("sd1"), DiffusersSampling("DDIMScheduler"), 3, [0, 1],
                              prompts=["a", "b"], guidance=GuidanceRule(3.0))).outputs
    batch = next(generate(tiny_model("sd1", **options), DiffusersSampling("DDIMScheduler"), 3,
                          [0, 1], prompts=["a", "b"], guidance=GuidanceRule(3.0)))
    assert batch.outputs.shape == reference.shape
    tol = 0.1 if options.get("dtype") == "bf16" else 1e-5
    assert (batch.outputs.float() - reference).abs().max() <= tol


@pytest.mark.slow
def test_compiled_unet_gives_the_same_images(tiny_model):
    """torch.compile (minutes on a small CPU: kept out of the default suite)."""
    args = (DiffusersSampling("DDIMScheduler"), 3, [0, 1])
    kw = dict(prompts=["a", "b"], guidance=GuidanceRule(3.0))
    reference = next(generate(tiny_model("sd1"), *args, **kw)).outputs
    compiled = next(generate(tiny_model("sd1", compile=True), *args, **kw)).outputs
    assert (compiled - reference).abs().max() <= 1e-5
