"""Guidance rules, the CFG wrapper's counting, and the guidance/model config groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from sdlab import guidance
from sdlab.denoisers import Denoiser
from sdlab.guidance import CFGDenoiser, GuidanceRule, IntervalCFG, RescaledCFG
from sdlab.models.loading import ModelLoadError

CONFIGS = Path(__file__).parent.parent / "configs"


class Linear(Denoiser):
    """D(x, sigma, c) = x * c: the conditioning scales the output, so branches differ."""

    sigma_min, sigma_max = 0.1, 10.0

    def denoise(self, x, sigma, *, c):
        return x * c.reshape(-1, *[1] * (x.ndim - 1))


def cfg_denoiser(rule):
    inner = Linear()
    return CFGDenoiser(inner, rule, {"c": torch.tensor([2.0, 3.0])},
                       {"c": torch.tensor([1.0, 1.0])})


def test_cfg_combines_in_one_batched_forward():
    d = cfg_denoiser(GuidanceRule(4.0))
    x = torch.ones(2, 3)
    out = d(x, torch.full((2,), 1.0, dtype=torch.float64))
    assert torch.allclose(out[:, 0], torch.tensor([1 + 4 * (2 - 1), 1 + 4 * (3 - 1.0)]))
    assert d.nfe == 1 and d.uncond_evals == 1


def test_scale_one_skips_the_unconditional_branch():
    d = cfg_denoiser(GuidanceRule(1.0))
    out = d(torch.ones(2, 3), torch.full((2,), 1.0, dtype=torch.float64))
    assert torch.equal(out[:, 0], torch.tensor([2.0, 3.0]))
    assert d.nfe == 1 and d.uncond_evals == 0 and d.last_uncond is None


def test_interval_is_half_open_and_counts_honestly():
    rule = IntervalCFG(3.0, sigma_lo=1.0, sigma_hi=5.0)
    assert [rule.active(s) for s in (0.5, 1.0, 1.01, 5.0, 5.01)] == [False, False, True,
                                                                      True, False]
    d = cfg_denoiser(rule)
    for s in (10.0, 4.0, 2.0, 0.5):
        d(torch.ones(2, 3), torch.full((2,), s, dtype=torch.float64))
    assert d.nfe == 4 and d.uncond_evals == 2


def test_cfg_reads_sigma_back_from_a_device_only_when_the_rule_needs_it():
    """float() of an accelerator tensor stalls the host every step; meta tensors stand in for
    device tensors here: reading one back raises."""
    meta = {"c": torch.ones(2, device="meta")}
    x, sigma = torch.ones(2, 3, device="meta"), torch.ones(2, device="meta")
    for rule in (GuidanceRule(4.0), RescaledCFG(4.0, phi=0.5)):
        out = CFGDenoiser(Linear(), rule, meta, meta)(x, sigma)
        assert out.shape == (2, 3) and out.device.type == "meta"
    assert IntervalCFG.needs_sigma and not GuidanceRule.needs_sigma
    with pytest.raises((RuntimeError, NotImplementedError)):
        CFGDenoiser(Linear(), IntervalCFG(4.0), meta, meta)(x, sigma)


def test_rescale_phi_zero_is_cfg_and_phi_one_matches_the_conditional_std():
    cond, uncond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    plain = GuidanceRule(7.0).combine(cond, uncond, 1.0)
    assert torch.allclose(RescaledCFG(7.0, phi=0.0).combine(cond, uncond, 1.0), plain)
    full = RescaledCFG(7.0, phi=1.0).combine(cond, uncond, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("bad", [lambda: GuidanceRule(-1), lambda: RescaledCFG(5, phi=2),
                                 lambda: IntervalCFG(5, sigma_lo=3, sigma_hi=1)])
def test_bad_rule_parameters(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize("path", sorted((CONFIGS / "guidance").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_guidance_configs_instantiate(path):
    node = OmegaConf.to_container(OmegaConf.load(path))
    assert node.pop("name") == path.stem
    rule = instantiate(node)
    assert isinstance(rule, GuidanceRule)
    if path.stem in guidance.names():
        assert isinstance(rule, guidance.registry.get(path.stem))


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl", "tiny_shapes"])
def test_model_configs_name_a_factory(name):
    node = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    assert node.name == name
    factory = get_method(node._target_)
    assert callable(factory)


def test_tiny_shapes_config_loads_or_says_what_is_missing():
    node = OmegaConf.load(CONFIGS / "model" / "tiny_shapes.yaml")
    fields = OmegaConf.to_container(node)
    fields.pop("name")
    fields["device"] = "cpu"
    factory = get_method(fields.pop("_target_"))
    try:
        model = factory(**fields)
    except ModelLoadError as err:
        assert "tiny_shapes" in str(err) and "\n" not in str(err)
    else:
        assert model.conditional and len(model.latent_shape) == 3


def test_adaptive_sampler_runs_with_per_sample_conditioning():
    """dpm_adaptive steps each sample on its own clock; the guided denoiser must still see
    the whole batch its prompts were made for, and each sample's result is its own."""
    from sdlab import samplers, schedules

    sigmas = schedules.karras(8, sigma_min=0.1, sigma_max=10.0)
    x = torch.tensor([[1.0, -0.5, 0.25], [0.3, 0.7, -1.2]], dtype=torch.float64) * 10
    conds = ({"c": torch.tensor([0.9, 0.2])}, {"c": torch.tensor([1.0, 1.0])})
    both = samplers.get("dpm_adaptive")(CFGDenoiser(Linear(), GuidanceRule(2.0), *conds), x,
                                        sigmas)
    for k in range(2):
        alone = CFGDenoiser(Linear(), GuidanceRule(2.0), *({"c": c["c"][k : k + 1]}
                                                           for c in conds))
        one = samplers.get("dpm_adaptive")(alone, x[k : k + 1], sigmas)
        torch.testing.assert_close(both[k : k + 1], one, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(both).all()
