"""What the data changes: the power-law slope, the generic prior of that slope, the derived minimum
interval length and the constraints that bind, against closed forms and brute force."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from memekit.analysis.priors import (
    PriorError,
    binding_constraints,
    generic_prior,
    min_length_for_steps,
    prior_distance,
    prior_spec,
    propose_intervals,
    recut_prior,
)
from memekit.analysis.spectra import SpectralProfile, SpectrumError, power_law_spectrum, radial_bins
from memekit.search import cli
from memekit.space import Diffusion, ExpertSpec, ddim_timesteps, get_preset, load_spec

BASE = get_preset("meme-paper", 32)
ALPHA_BAR = Diffusion(BASE.diffusion).alpha_bar


def power_law_profile(slope: float, scale: float = 0.05, resolution: int = 32, channels: int = 3) -> SpectralProfile:
    """A data set whose radial spectrum is exactly ``scale * f^-slope`` on every ring, corners included."""
    bins = radial_bins(resolution, corners=True)
    power = scale * bins.frequency ** -slope
    k = resolution // 2
    return SpectralProfile(bins.frequency[:k], bins.counts[:k], power[:k], ALPHA_BAR, 100, resolution,
                           corner_power=power[k:], corner_counts=bins.counts[k:],
                           channel_power=np.tile(power[:k], (channels, 1)),
                           channel_corner_power=np.tile(power[k:], (channels, 1)))


# ---- the slope and the generic reference ----------------------------------------------------------------
@pytest.mark.parametrize("slope", [0.0, 1.3, 2.0, 2.8])
def test_fitted_slope_of_a_power_law_is_its_slope(slope):
    assert power_law_profile(slope).slope == pytest.approx(slope, abs=1e-9)


def test_power_law_spectrum_has_the_given_total_power_and_slope():
    bins = radial_bins(16, corners=True)
    power = power_law_spectrum(bins.frequency, bins.counts, 2.5, 7.0)
    assert float((bins.counts * power).sum()) == pytest.approx(7.0, rel=1e-12)
    assert power[1] / power[0] == pytest.approx((bins.frequency[1] / bins.frequency[0]) ** -2.5, rel=1e-12)
    with pytest.raises(SpectrumError, match="positive total power"):
        power_law_spectrum(bins.frequency, bins.counts, 2.0, 0.0)


def test_the_reference_keeps_total_power_rings_and_channels():
    data = power_law_profile(2.0)
    bumped = dataclasses.replace(data, data_power=data.data_power * np.linspace(1, 3, len(data.frequency)))
    reference = bumped.power_law_reference()
    _, counts, power = bumped.all_rings
    _, ref_counts, ref_power = reference.all_rings
    assert np.array_equal(counts, ref_counts)
    assert float((ref_counts * ref_power).sum()) == pytest.approx(float((counts * power).sum()), rel=1e-12)
    assert reference.slope == pytest.approx(bumped.slope, abs=1e-9)
    assert reference.channel_power.shape == bumped.channel_power.shape
    assert np.allclose(reference.channel_power, reference.data_power[None])


def test_the_generic_prior_of_a_power_law_is_its_own_prior():
    data = power_law_profile(2.4)
    own, generic = prior_spec(data, 4, BASE, min_length=62), generic_prior(data, 4, BASE, min_length=62)
    assert own.boundaries == generic.boundaries and own.soft_assignment == generic.soft_assignment
    distance = prior_distance(own, generic)
    assert distance.boundary_steps == 0 and distance.max_p == 0 and distance.max_share == 0


def test_a_spectrum_off_the_power_law_moves_the_prior():
    """A data set with a power law below f = 1/8 and a flat floor above it (noise-like detail): its
    fitted slope is not its spectrum, and the cuts move."""
    data = power_law_profile(2.6)
    frequency, _, power = data.all_rings
    floored = np.maximum(power, power[frequency < 0.125].min())
    k = len(data.frequency)
    data = dataclasses.replace(data, data_power=floored[:k], corner_power=floored[k:])
    own, generic = prior_spec(data, 4, BASE, min_length=20), generic_prior(data, 4, BASE, min_length=20)
    distance = prior_distance(own, generic)
    assert distance.boundary_steps > 0
    assert distance.boundaries == tuple(a - b for a, b in zip(own.boundaries[1:-1], generic.boundaries[1:-1],
                                                              strict=True))


def test_priors_of_different_n_cannot_be_compared():
    data = power_law_profile(2.0)
    with pytest.raises(PriorError, match="cannot be compared"):
        prior_distance(prior_spec(data, 4, BASE), prior_spec(data, 3, BASE))


# ---- the derived minimum length -------------------------------------------------------------------------
def brute_force_min_length(T: int, S: int, k: int) -> int:
    steps = np.zeros(T, dtype=int)
    steps[ddim_timesteps(T, S)] = 1
    counts = np.concatenate([[0], np.cumsum(steps)])
    for length in range(1, T + 1):
        if min(counts[b + length] - counts[b] for b in range(T - length + 1)) >= k:
            return length
    raise AssertionError("no length holds k steps")


@pytest.mark.parametrize(("T", "S", "k"), [(1000, 50, 3), (1000, 200, 3), (1000, 50, 1), (100, 7, 2), (50, 50, 3)])
def test_min_length_is_the_shortest_window_that_always_holds_k_steps(T, S, k):
    assert min_length_for_steps(T, S, k) == brute_force_min_length(T, S, k)


def test_min_length_closed_forms():
    assert min_length_for_steps(1000, 1000, 3) == 3  # every step sampled: k steps need k
    assert min_length_for_steps(1000, 10, 2) == 222  # evenly spaced, 111 apart: 2 x 111
    assert min_length_for_steps(1000, 28, 1) == 37  # 999 / 27 = 37 apart
    with pytest.raises(PriorError, match="raise --sampling-steps"):
        min_length_for_steps(1000, 4, 5)


# ---- binding constraints ----------------------------------------------------------------------------------
def test_a_binding_minimum_length_is_reported_and_a_slack_one_is_not():
    data = power_law_profile(2.8)
    free = propose_intervals(data, 4, 1)
    first = free[0][1]  # the unconstrained first cut
    tight = first + 10
    prior = prior_spec(data, 4, BASE, min_length=tight)
    assert prior.intervals[0] == (0, tight)
    found = [c for c in binding_constraints(data, prior, tight) if c.kind == "min_length"]
    assert [(c.expert, c.value, c.unconstrained) for c in found] == [(0, tight, first)]
    assert str([iv[0] for iv in free] + [1000]) in found[0].text and "binds" in found[0].text
    slack = first - 5
    prior = prior_spec(data, 4, BASE, min_length=slack)
    assert prior.intervals == free
    assert not [c for c in binding_constraints(data, prior, slack) if c.kind == "min_length"]


def paper_mass(lo: int, hi: int) -> float:
    """The paper's density d(t) = p_q / 250 over uniform quarters, summed over [lo, hi) by hand."""
    p = (0.8, 0.4, 0.2, 0.1)
    return sum(p[t // 250] / 250 for t in range(lo, hi))


def test_p_floors_and_cap_that_bind_are_reported():
    data = power_law_profile(2.0)
    prior = prior_spec(data, 4, BASE, min_length=62)
    spec = dataclasses.replace(prior, intervals=((0, 30), (30, 60), (60, 640), (640, 1000)),
                               soft_assignment=(0.8, 0.4, 1.0, 0.188))
    found = {(c.kind, c.expert): c for c in binding_constraints(data, spec, 25) if c.kind.startswith("p_")}
    # density 0.0032 / 0.0016 / 0.0008 / 0.0004 per step over the quarters: [0, 30) and [30, 60) hold
    # 0.096 each (< 0.8, < 0.4); [60, 640): 190 x 0.0032 + 0.4 + 140 x 0.0008 = 1.12 > 1;
    # [640, 1000): 110 x 0.0008 + 0.1 = 0.188 > 0.1 (the density sets it: nothing binds)
    assert set(found) == {("p_fraction_floor", 0), ("p_fraction_floor", 1), ("p_cap", 2)}
    assert found[("p_fraction_floor", 0)].unconstrained == pytest.approx(0.096)
    assert found[("p_cap", 2)].unconstrained == pytest.approx(1.12)
    assert paper_mass(60, 640) == pytest.approx(1.12)


def test_share_order_raise_is_reported_only_where_rounding_alone_differs():
    data = power_law_profile(2.0)  # on meme-paper's head grid one stage needs the raise
    prior = prior_spec(data, 4, BASE, min_length=62)
    found = [c for c in binding_constraints(data, prior, 62) if c.kind == "share_order"]
    assert found
    for c in found:
        shares = prior.experts[c.expert].attention_share
        assert c.stage > 0 and shares[c.stage] == c.value > c.unconstrained
        assert c.value == shares[c.stage - 1]  # raised exactly to the shallower stage's share (same head grid)


# ---- re-cutting a prior to another backbone -----------------------------------------------------------------
def test_recut_keeps_intervals_and_p_and_proposes_shares_on_the_new_backbone():
    data = power_law_profile(2.5)
    prior = prior_spec(data, 4, BASE)
    small = ExpertSpec(resolution=32, base_width=16, channel_mult=(1, 2, 2), blocks_per_stage=(1, 1, 1),
                       attention_share=(0.0, 1.0, 1.0), head_dim=4, attention_pool=(2, 1, 1))
    recut = recut_prior(prior, data, small, BASE.diffusion)
    assert recut.intervals == prior.intervals and recut.soft_assignment == prior.soft_assignment
    direct = prior_spec(data, 4, dataclasses.replace(BASE, experts=(small,) * 4))
    assert [e.attention_share for e in recut.experts] == [e.attention_share for e in direct.experts]
    other = dataclasses.replace(BASE.diffusion, schedule="cosine")
    with pytest.raises(PriorError, match="schedule"):
        recut_prior(prior, data, small, other)


# ---- memekit spectrum writes it ------------------------------------------------------------------------------
def test_spectrum_reports_slope_generic_prior_and_constraints(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["spectrum", "builtin:shapes:24", "--resolution", "16", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "prior_report.json").read_text())
    assert report["prior"]["boundaries"] == list(load_spec(out / "prior_spec.json").boundaries)
    generic = report["generic_prior"]["boundaries"]
    moved = max(abs(a - b) for a, b in zip(report["prior"]["boundaries"], generic, strict=True))
    assert report["distance"]["boundary_steps"] == moved
    assert f"your data moved the cuts by {moved} steps from the generic prior" in text
    assert report["min_length"] == 62 and "3 of the 50 DDIM steps" in report["min_length_rule"]
    assert (out / "prior_report.txt").read_text().strip() == text.split("\nwrote ")[0].strip()
    assert [c["text"] for c in report["constraints"]] == [line.strip()[2:] for line in text.splitlines()
                                                         if line.startswith("  - ")]


def test_spectrum_min_steps_and_sampling_steps_set_the_minimum(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["spectrum", "builtin:shapes:12", "--resolution", "16", "--out", str(out), "--sampling-steps", "200",
            "--min-steps", "4", "--dry-run"]
    assert cli.main(argv) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["min_length"] == brute_force_min_length(1000, 200, 4)
