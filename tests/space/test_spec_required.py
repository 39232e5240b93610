"""Reading a spec fills in no defaults: a field memekit has always written is required, and a
spec without it is refused in one line naming the field (a deleted ``base_width`` once built a
network of the default width and passed ``memekit space check``). Specs memekit wrote, with or
without the later optional fields (preconditioning and its statistics), load unchanged."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import TINY_EXPERT, TINY_SPEC

from memekit.search.cli import main as cli_main
from memekit.space import PRESETS, DiffusionSpec, ExpertSpec, MemeSpec, get_preset, load_spec
from memekit.space.errors import SpecError


@pytest.mark.parametrize("field", list(TINY_EXPERT))
def test_an_expert_without_a_field_is_refused(field: str, tmp_path) -> None:
    data = copy.deepcopy(TINY_SPEC)
    del data["experts"][1][field]
    with pytest.raises(SpecError) as info:
        MemeSpec.from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    assert f"expert 1 is missing '{field}'" in message and "add it" in message, message
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match=f"spec.json: expert 1 is missing '{field}'"):
        load_spec(path)
    expert = copy.deepcopy(TINY_EXPERT)
    del expert[field]
    with pytest.raises(SpecError, match=f"expert is missing '{field}'"):
        ExpertSpec.from_dict(expert)


def test_every_missing_field_is_named_at_once() -> None:
    expert = copy.deepcopy(TINY_EXPERT)
    del expert["base_width"], expert["head_dim"]
    with pytest.raises(SpecError, match="expert is missing 'base_width', 'head_dim': add them"):
        ExpertSpec.from_dict(expert)


@pytest.mark.parametrize(("where", "field"), [("diffusion", "timesteps"), ("diffusion", "schedule"),
                                              ("diffusion", "prediction"), ("spec", "diffusion"),
                                              ("spec", "out_of_interval"), ("spec", "experts"),
                                              ("spec", "intervals"), ("spec", "soft_assignment")])
def test_spec_and_diffusion_without_a_field_are_refused(where: str, field: str) -> None:
    data = copy.deepcopy(TINY_SPEC)
    del (data["diffusion"] if where == "diffusion" else data)[field]
    with pytest.raises(SpecError, match=f"{where} is missing '{field}'"):
        MemeSpec.from_dict(data)


def test_space_check_refuses_a_spec_without_base_width(tmp_path, capsys) -> None:
    """The issue's case: a preset's JSON with one expert's base_width deleted."""
    data = get_preset("meme-paper", 32).to_dict()
    del data["experts"][1]["base_width"]
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    assert cli_main(["space", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "memekit: error: edited.json: expert 1 is missing 'base_width': add it (memekit fills in no defaults; "
        "'memekit space show meme-paper' prints a complete spec)"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_specs_memekit_writes_load_unchanged(name: str, tmp_path) -> None:
    spec = get_preset(name, 32)
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert load_spec(path) == spec


def test_optional_diffusion_fields_stay_optional() -> None:
    """A spec of the paper's setting has no preconditioning keys (as before they existed); one with
    edm preconditioning carries them and round-trips."""
    data = copy.deepcopy(TINY_SPEC)
    assert set(data["diffusion"]) == {"timesteps", "schedule", "prediction"}
    assert MemeSpec.from_dict(data).diffusion.preconditioning == "none"
    edm = DiffusionSpec(timesteps=50, schedule="linear-ddpm", prediction="eps", preconditioning="edm", data_std=0.5)
    data["diffusion"] = edm.to_dict()
    assert MemeSpec.from_dict(data).diffusion == edm
    del data["name"], data["format_version"]  # neither changes the network
    assert MemeSpec.from_dict(data).name == ""
