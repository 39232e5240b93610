"""The expert U-Net and the multi-expert model as diffusers models (memekit.space.diffusers_models).

A tiny 16 px spec (the paper's preset on a base width 8 backbone), with a preconditioned variant
(wiener skip, v prediction, cosine schedule) so that the measured statistics must travel in the
config. Skipped without diffusers.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from memekit.space import Diffusion, DiffusionSpec, ExpertSpec, ExpertUNet, MultiExpert  # noqa: E402
from memekit.space.diffusers_models import MemeExpertModel, MemeMultiExpertModel  # noqa: E402
from memekit.space.errors import SpecError  # noqa: E402
from memekit.space.precondition import ring_count  # noqa: E402
from memekit.space.presets import backbone_presets  # noqa: E402

BACKBONE = ExpertSpec(resolution=16, base_width=8, channel_mult=(1, 2), blocks_per_stage=(1, 1),
                      attention_share=(0.0, 1.0), head_dim=8, attention_pool=(2, 1))


def tiny_spec(preconditioned: bool = False):
    """``meme-paper`` (4 experts, T = 1000) on the tiny backbone; ``preconditioned``: wiener, v, cosine."""
    spec = backbone_presets(BACKBONE)["meme-paper"]
    if not preconditioned:
        return spec
    rings = np.arange(ring_count(16))
    spectrum = [list(256.0 / (1.0 + rings) ** 2 * (c + 1)) for c in range(3)]  # any positive ring powers
    return dataclasses.replace(spec, diffusion=DiffusionSpec(schedule="cosine", prediction="v",
                                                             preconditioning="wiener", data_std=0.45,
                                                             data_spectrum=spectrum))


def _inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 16, 16, generator=gen), torch.tensor([3, 400, 999][:batch])


@pytest.mark.parametrize("preconditioned", [False, True])
def test_an_expert_round_trips_alone_with_its_statistics(tmp_path, preconditioned) -> None:
    spec = tiny_spec(preconditioned)
    torch.manual_seed(0)
    expert = MemeExpertModel.from_spec(spec, 2).eval()
    expert.save_pretrained(tmp_path / "expert_2")
    assert sorted(p.name for p in (tmp_path / "expert_2").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((tmp_path / "expert_2" / "config.json").read_text())
    assert config["diffusion"] == spec.diffusion.to_dict()  # preconditioning, data_std, data_spectrum exactly
    assert config["expert"] == spec.experts[2].to_dict() and config["interval"] == list(spec.intervals[2])

    loaded = MemeExpertModel.from_pretrained(tmp_path / "expert_2")
    x, t = _inputs()
    assert torch.equal(loaded(x, t).sample, expert(x, t).sample)
    assert loaded.interval == spec.intervals[2] and loaded.diffusion.spec == spec.diffusion


@pytest.mark.parametrize("preconditioned", [False, True])
def test_forward_is_memekit_prediction_of_the_same_network(preconditioned) -> None:
    spec = tiny_spec(preconditioned)
    torch.manual_seed(0)
    model = MemeExpertModel.from_spec(spec, 0).eval()
    network = ExpertUNet(spec.experts[0]).eval()
    network.load_state_dict(model.state_dict())  # the keys of memekit's network, unchanged
    x, t = _inputs()
    expected = Diffusion(spec.diffusion).predict(network, x, t)
    assert torch.equal(model(x, t).sample, expected)
    if preconditioned:  # the skip is part of the prediction, not left to the caller
        assert not torch.allclose(model(x, t).sample, network(x, t), atol=1e-3)


def test_building_is_memekit_building_bit_for_bit() -> None:
    """Same parameters, in the same order, with the same initial values: training stays reproducible."""
    spec = tiny_spec()
    torch.manual_seed(0)
    memekit_model = MultiExpert(spec)
    torch.manual_seed(0)
    diffusers_model = MemeMultiExpertModel.from_spec(spec)
    a, b = memekit_model.state_dict(), diffusers_model.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    unet = ExpertUNet(spec.experts[1])
    torch.manual_seed(0)
    expert = MemeExpertModel.from_spec(spec, 1)
    assert ([(k, v.shape) for k, v in unet.state_dict().items()]
            == [(k, v.shape) for k, v in expert.state_dict().items()])
    assert all(torch.equal(u, e) for u, e in zip(unet.state_dict().values(), expert.state_dict().values(), strict=True))


def test_the_routed_model_loads_a_checkpoint_state_and_round_trips(tmp_path) -> None:
    spec = tiny_spec(preconditioned=True)
    torch.manual_seed(3)
    trained = MultiExpert(spec).eval()  # stands for a checkpoint's "ema" state dict
    model = MemeMultiExpertModel.from_spec(spec).eval()
    model.load_state_dict(trained.state_dict(), strict=True)
    model.save_pretrained(tmp_path / "meme")
    assert json.loads((tmp_path / "meme" / "config.json").read_text())["spec"] == spec.to_dict()
    loaded = MemeMultiExpertModel.from_pretrained(tmp_path / "meme")
    x, t = _inputs()  # three samples owned by three different experts
    expected = Diffusion(spec.diffusion).predict(trained, x, t)
    assert torch.equal(loaded(x, t).sample, expected)
    assert loaded.spec == spec


def test_timestep_forms_and_fractional_steps() -> None:
    spec = tiny_spec(preconditioned=True)
    torch.manual_seed(0)
    model = MemeExpertModel.from_spec(spec, 1).eval()
    x = _inputs()[0]
    by_batch = model(x, torch.full((3,), 300)).sample
    assert torch.equal(model(x, 300).sample, by_batch)
    assert torch.equal(model(x, torch.tensor(300)).sample, by_batch)
    assert torch.equal(model(x, torch.tensor(300.0)).sample, by_batch)  # integer-valued floats are time-steps
    with pytest.raises(SpecError, match="integer time-steps"):
        model(x, 300.5)
    with pytest.raises(SpecError, match="one value per sample"):
        model(x, torch.tensor([1, 2]))


def test_a_bad_config_is_a_spec_error() -> None:
    spec = tiny_spec()
    with pytest.raises(SpecError, match="interval"):
        MemeExpertModel(expert=spec.experts[0].to_dict(), diffusion=spec.diffusion.to_dict(), interval=[500, 1200])
    with pytest.raises(SpecError, match="attention_share"):
        MemeExpertModel(expert={**spec.experts[0].to_dict(), "attention_share": [2.0, 0.0]})
