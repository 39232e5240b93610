"""Spec JSON round trips, one clear error per bad spec, and ``memekit space check``."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from memekit.search.cli import main as cli_main
from memekit.space import (
    DiffusionSpec,
    ExpertSpec,
    MemeSpec,
    SpecError,
    intervals_from_boundaries,
    load_spec,
    save_spec,
    uniform_intervals,
)


# --------------------------------------------------------------------------------------------
# JSON round trips
# --------------------------------------------------------------------------------------------
@pytest.fixture
def rich_spec(make_expert) -> MemeSpec:
    """Every field away from its default, so that a field dropped by the JSON would show."""
    experts = (
        make_expert(attention_share=(0.0, 0.5), attention_pool=(1, 1), dropout=0.1),
        make_expert(base_width=8, channel_mult=(2, 4), attention_share=(0.25, 1.0), head_dim=4),
        make_expert(share=1.0, blocks_per_stage=(2, 3), attention_pool=(4, 2)),
    )
    return MemeSpec(
        experts=experts,
        intervals=intervals_from_boundaries((0, 10, 40, 64)),
        soft_assignment=(1.0, 0.5, 0.25),
        diffusion=DiffusionSpec(timesteps=64, schedule="cosine", prediction="v"),
        out_of_interval="uniform-all",
        name="round-trip",
    )


def test_expert_spec_json_round_trip(rich_spec):
    for expert in rich_spec.experts:
        data = expert.to_dict()
        assert set(data) == {f.name for f in dataclasses.fields(ExpertSpec)}
        again = ExpertSpec.from_dict(json.loads(json.dumps(data)))
        assert again == expert
        assert isinstance(again.channel_mult, tuple)  # lists from JSON become tuples again


def test_diffusion_spec_json_round_trip(rich_spec):
    diffusion = rich_spec.diffusion
    data = diffusion.to_dict()
    assert data == {"timesteps": 64, "schedule": "cosine", "prediction": "v"}
    assert DiffusionSpec.from_dict(json.loads(json.dumps(data))) == diffusion


def test_meme_spec_json_round_trip(rich_spec):
    text = rich_spec.to_json()
    data = json.loads(text)  # plain JSON
    assert set(data) == {f.name for f in dataclasses.fields(MemeSpec)}
    assert data["intervals"] == [[0, 10], [10, 40], [40, 64]]
    assert MemeSpec.from_json(text) == rich_spec
    assert MemeSpec.from_dict(data) == rich_spec
    assert MemeSpec.from_json(rich_spec.to_json(indent=None)) == rich_spec


def test_save_and_load_spec_round_trip(rich_spec, tmp_path):
    path = save_spec(rich_spec, tmp_path / "nested" / "spec.json")
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file
    assert load_spec(path) == rich_spec
    assert load_spec(str(path)) == rich_spec


@pytest.mark.parametrize(
    ("where", "pattern"),
    [
        ("spec", r"unknown spec field 'colour'"),
        ("expert", r"unknown expert field 'colour'"),
        ("diffusion", r"unknown diffusion field 'colour'"),
    ],
)
def test_unknown_field_is_rejected(tiny_spec_dict, tmp_path, where, pattern):
    target = {"spec": tiny_spec_dict, "expert": tiny_spec_dict["experts"][1],
              "diffusion": tiny_spec_dict["diffusion"]}[where]
    target["colour"] = "red"
    with pytest.raises(SpecError, match=pattern):
        MemeSpec.from_dict(tiny_spec_dict)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_spec_dict))
    with pytest.raises(SpecError, match=r"spec\.json: " + pattern):
        load_spec(path)


def test_tiny_spec_dict_is_valid(tiny_spec_dict):
    """The base of every bad-spec case below is itself valid (so each case isolates one problem)."""
    spec = MemeSpec.from_dict(tiny_spec_dict)
    assert spec.intervals == ((0, 20), (20, 50))
    assert spec.boundaries == (0, 20, 50)


def test_uniform_intervals_closed_form():
    # interval n is [n T // N, (n+1) T // N)
    assert uniform_intervals(1000, 4) == ((0, 250), (250, 500), (500, 750), (750, 1000))
    assert uniform_intervals(10, 3) == ((0, 3), (3, 6), (6, 10))
    assert intervals_from_boundaries((0, 7, 20, 50)) == ((0, 7), (7, 20), (20, 50))


@pytest.mark.parametrize(
    ("share", "width", "head_dim", "channels"),
    [(0.0, 16, 8, 0), (1.0, 16, 8, 16), (0.5, 16, 8, 8), (0.3, 16, 8, 8), (0.2, 16, 8, 0),
     (0.75, 32, 8, 24), (0.6, 32, 8, 16)],
)
def test_attention_channels_are_nearest_whole_heads(make_expert, share, width, head_dim, channels):
    # heads = floor(share * width / head_dim + 1/2); e.g. 0.3 * 16 / 8 = 0.6 -> 1 head
    expert = make_expert(share=share, base_width=width, head_dim=head_dim)
    assert expert.attention_channels(0) == channels
    assert expert.effective_attention_share()[0] == channels / width


# --------------------------------------------------------------------------------------------
# One clear error per bad spec
# --------------------------------------------------------------------------------------------
def _set(path: tuple, value):
    def mutate(d):
        *parents, last = path
        for key in parents:
            d = d[key]
        d[last] = value
    return mutate


def _three_stage_expert_at(resolution: int):
    def mutate(d):
        e = d["experts"][0]
        e.update(resolution=resolution, channel_mult=[1, 1, 1], blocks_per_stage=[1, 1, 1],
                 attention_share=[0.5, 1.0, 1.0], attention_pool=[1, 1, 1])
    return mutate


# (case id, problem, mutation of TINY_SPEC, pattern the one-line message must match)
BAD_SPECS = [
    ("gap", "gap", _set(("intervals",), [[0, 20], [25, 50]]),
     r"gap between intervals: t in \[20, 25\) belongs to no expert"),
    ("overlap", "overlap", _set(("intervals",), [[0, 30], [20, 50]]),
     r"overlapping intervals: interval 1 starts at 20"),
    ("short-of-T", "end", _set(("intervals",), [[0, 20], [20, 40]]),
     r"intervals end at 40 but must cover \[0, T\) with T = 50"),
    ("past-T", "end", _set(("intervals",), [[0, 20], [20, 60]]),
     r"intervals end at 60 but must cover \[0, T\) with T = 50"),
    ("share-negative", "share", _set(("experts", 1, "attention_share"), [-0.1, 1.0]),
     r"attention_share of stage 0 must lie in \[0, 1\], got -0\.1"),
    ("share-above-one", "share", _set(("experts", 0, "attention_share"), [0.5, 1.5]),
     r"attention_share of stage 1 must lie in \[0, 1\], got 1\.5"),
    ("head-dim", "head_dim", _set(("experts", 0, "base_width"), 12),
     r"stage 0 width 12 .*not divisible by head_dim 8"),
    ("expert-count", "n_intervals", _set(("intervals",), [[0, 10], [10, 20], [20, 50]]),
     r"2 experts but 3 intervals"),
    ("soft-count", "n_soft", _set(("soft_assignment",), [0.8]),
     r"2 experts but 1 soft_assignment probabilities"),
    ("p-zero", "p", _set(("soft_assignment",), [0.8, 0]),
     r"soft_assignment p_1 must lie in \(0, 1\], got 0"),
    ("p-above-one", "p", _set(("soft_assignment",), [1.2, 0.4]),
     r"soft_assignment p_0 must lie in \(0, 1\], got 1\.2"),
    ("schedule", "schedule", _set(("diffusion", "schedule"), "quadratic"),
     r"unknown schedule 'quadratic'"),
    ("resolution", "resolution", _three_stage_expert_at(10),
     r"resolution 10 is not divisible by 2\^\(stages-1\) = 4"),
    ("attention-pool", "pool", _set(("experts", 0, "attention_pool"), [2, 3]),
     r"stage 1 resolution 4 is not divisible by its attention_pool 3"),
]
BAD_IDS = [case[0] for case in BAD_SPECS]


@pytest.mark.parametrize(("case", "problem", "mutate", "pattern"), BAD_SPECS, ids=BAD_IDS)
def test_bad_spec_gets_its_own_one_line_error(tiny_spec_dict, case, problem, mutate, pattern):
    mutate(tiny_spec_dict)
    with pytest.raises(SpecError) as info:
        MemeSpec.from_dict(tiny_spec_dict)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    # its own error: no pattern of a different problem matches this message
    others = [p for (_, prob, _, p) in BAD_SPECS if prob != problem]
    assert not any(re.search(p, message) for p in others), message


def test_resolution_that_is_valid_with_fewer_stages_passes(tiny_spec_dict):
    """The resolution case above fails because of the stage count, not the number 10 itself."""
    _three_stage_expert_at(12)(tiny_spec_dict)
    tiny_spec_dict["experts"][1]["resolution"] = 12
    assert MemeSpec.from_dict(tiny_spec_dict).experts[0].resolution == 12


# --------------------------------------------------------------------------------------------
# memekit space check
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "problem", "mutate", "pattern"), BAD_SPECS, ids=BAD_IDS)
def test_cli_check_bad_spec_exits_2_with_one_line(tiny_spec_dict, tmp_path, capsys, case, problem, mutate,
                                                  pattern):
    mutate(tiny_spec_dict)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(tiny_spec_dict))
    assert cli_main(["space", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("memekit: error: bad.json: ")
    assert re.search(pattern, lines[0])
    assert "Traceback" not in err


def test_cli_check_good_spec_exits_0(tiny_spec_dict, tmp_path, capsys):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(tiny_spec_dict))
    assert cli_main(["space", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("ok: ") and "2 expert(s) at 8 px, T=50" in out


def test_cli_check_process_exit_code(tiny_spec_dict, tmp_path):
    """The real process: exit status 2 and exactly one stderr line, no traceback."""
    tiny_spec_dict["intervals"] = [[0, 20], [25, 50]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tiny_spec_dict))
    result = subprocess.run([sys.executable, "-m", "memekit.search.cli", "space", "check", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "gap between intervals" in result.stderr and "Traceback" not in result.stderr
