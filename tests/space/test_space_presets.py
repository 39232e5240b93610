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
