"""Every preset builds and runs a forward at 32 and 64 px."""

from __future__ import annotations

import pytest
import torch

from memekit.space import PRESETS, MultiExpert, SpecError, get_preset

CASES = [(name, resolution) for name in PRESETS for resolution in (32, 64)]


@pytest.mark.parametrize(("name", "resolution"), CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_preset_builds_and_runs_forward(name, resolution):
    spec = PRESETS[name][resolution]
    assert spec is get_preset(name, resolution)
    assert all(e.resolution == resolution for e in spec.experts)
    torch.manual_seed(0)
    model = MultiExpert(spec).eval()
    x = torch.randn(2, spec.experts[0].image_channels, resolution, resolution)
    with torch.no_grad():
        # one batch per expert, at both ends of its interval, so that every expert runs
        for lo, hi in spec.intervals:
            y = model(x, torch.tensor([lo, hi - 1]))
            assert y.shape == x.shape
            assert torch.isfinite(y).all()


def test_unknown_preset_is_a_spec_error():
    with pytest.raises(SpecError, match=r"unknown preset 'huge'"):
        get_preset("huge")


def test_backbone_presets_rebuild_the_presets_on_their_own_backbone() -> None:
    from memekit.space.presets import backbone_presets

    for res in (32, 64):
        rebuilt = backbone_presets(get_preset("meme-paper", res).experts[0])
        assert all(rebuilt[name] == get_preset(name, res) for name in rebuilt)


def test_backbone_presets_on_a_cpu_backbone_keep_the_papers_cost_ratio() -> None:
    from memekit.space import ExpertSpec, spec_cost
    from memekit.space.presets import backbone_presets

    expert = ExpertSpec(resolution=32, base_width=16, channel_mult=(1, 2, 2), blocks_per_stage=(1, 1, 1),
                        attention_share=(0.0, 1.0, 1.0), head_dim=4, attention_pool=(2, 1, 1))
    presets = backbone_presets(expert)
    macs = {name: spec_cost(spec).mean_macs_per_step for name, spec in presets.items()}
    assert 2.5 < macs["single-large"] / macs["single-small"] < 3.5  # LDM-L / LDM-S: 3.06
    assert presets["single-large"].experts[0].base_width == 28
    for spec in presets.values():
        for e in spec.experts:  # one backbone: only width and shares differ
            assert (e.resolution, e.channel_mult, e.blocks_per_stage, e.head_dim, e.attention_pool) == (
                32, (1, 2, 2), (1, 1, 1), 4, (2, 1, 1))
    # the paper's 4-stage shares on 3 stages: first and last stage kept, the middle one from stage 2
    assert presets["meme-paper"].experts[0].attention_share == (0.25, 0.75, 0.75)
    assert presets["meme-paper"].experts[3].attention_share == (0.5, 0.875, 1.0)
