"""``memekit space check`` prints what a spec costs and refuses one that no machine could build.

:func:`memekit.space.check_spec` counts on PyTorch's meta device; its counts must equal those of
the experts really built on the CPU (:func:`memekit.space.spec_cost`, the independent reference).
"""

from __future__ import annotations

import json

import pytest

from memekit.search.cli import main as cli_main
from memekit.space import PRESETS, MemeSpec, check_spec, get_preset, spec_cost
from memekit.space.cost import MAX_PARAMS, PRESET_EXPERT_COSTS
from memekit.space.errors import SpecError


@pytest.mark.parametrize(("name", "resolution"), [(n, r) for n in PRESETS for r in PRESETS[n]])
def test_preset_counts_equal_the_built_networks(name: str, resolution: int) -> None:
    # check_spec reads a preset's experts from PRESET_EXPERT_COSTS (so that ``space check PRESET``
    # needs no torch); the networks really built on the CPU recount every entry of that table
    spec = get_preset(name, resolution)
    assert (name, resolution) in PRESET_EXPERT_COSTS
    meta, built = check_spec(spec, 50), spec_cost(spec, 50)
    assert meta == built
    assert meta.params > 0 and meta.trajectory_macs > 0


def test_the_preset_table_holds_only_presets() -> None:
    assert set(PRESET_EXPERT_COSTS) == {(n, r) for n in PRESETS for r in PRESETS[n]}


def test_tiny_spec_counts_equal_the_built_network(tiny_spec_dict) -> None:
    spec = MemeSpec.from_dict(tiny_spec_dict)
    assert check_spec(spec, 20) == spec_cost(spec, 20)


def _huge(tiny_spec_dict: dict) -> dict:
    for expert in tiny_spec_dict["experts"]:
        expert["base_width"] = 200_000  # about 10^14 parameters: only countable on the meta device
    return tiny_spec_dict


def test_a_spec_beyond_ten_billion_parameters_is_refused(tiny_spec_dict) -> None:
    spec = MemeSpec.from_dict(_huge(tiny_spec_dict))
    with pytest.raises(SpecError, match="exceed 10\\^10: no machine could build this network") as info:
        check_spec(spec)
    assert "\n" not in str(info.value)
    assert spec_cost(spec, 50, device="meta").params > MAX_PARAMS


def test_cli_check_prints_params_and_macs(tiny_spec_dict, tmp_path, capsys) -> None:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(tiny_spec_dict))
    assert cli_main(["space", "check", str(path), "--steps", "20"]) == 0
    out = capsys.readouterr().out
    cost = spec_cost(MemeSpec.from_dict(tiny_spec_dict), 20)
    assert f"{cost.params:,} parameters" in out
    assert f"{cost.mean_macs_per_step / 1e6:,.1f} MMACs per sampling step" in out
    assert f"{cost.trajectory_macs / 1e9:,.2f} GMACs per 20-step DDIM trajectory" in out


def test_cli_check_refuses_a_huge_spec_with_one_line(tiny_spec_dict, tmp_path, capsys) -> None:
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(_huge(tiny_spec_dict)))
    assert cli_main(["space", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("memekit: error: huge.json: ") and "10^10" in err
