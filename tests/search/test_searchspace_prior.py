"""A search space centred on the spectral prior: every drawn spec stays within the windows around
the prior, and the prior itself is a point of the space."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from memekit.search.searchspace import (
    SearchSpaceError,
    load_search_space,
    p_range,
    params_for,
    projection_gap,
    share_choices,
    suggest_spec,
)
from memekit.space import get_preset

GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture
def prior():
    spec = get_preset("meme-paper", 32)
    space = load_search_space("cpu32-prior")
    experts = tuple(dataclasses.replace(space.base_expert, attention_share=s)
                    for s in ((0.0, 0.5, 0.75), (0.25, 0.5, 1.0), (0.5, 0.75, 1.0), (1.0, 1.0, 1.0)))
    return dataclasses.replace(spec, experts=experts, intervals=((0, 60), (60, 250), (250, 510), (510, 1000)),
                               soft_assignment=(0.2, 0.6, 0.42, 0.05))


def test_windows_around_the_prior(prior) -> None:
    space = load_search_space("cpu32-prior")
    assert share_choices(space, prior, 0, 0) == [0.0, 0.25]  # at the grid's end: one neighbour
    assert share_choices(space, prior, 1, 1) == [0.25, 0.5, 0.75]
    assert share_choices(space, prior, 3, 2) == [0.75, 1.0]
    assert p_range(space, prior, 1) == pytest.approx((0.45, 0.75))
    assert p_range(space, prior, 3) == pytest.approx((0.05, 0.2))  # clipped at p_low
    free = load_search_space("cpu32")
    assert share_choices(free, prior, 0, 0) == GRID and p_range(free, prior, 0) == (free.p_low, free.p_high)


def test_every_draw_stays_near_the_prior_and_the_prior_is_exact(prior) -> None:
    space = load_search_space("cpu32-prior")
    radius = int(space.prior_radius * 1000 / 4)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        spec = suggest_spec(trial, space, prior)
        study.tell(trial, 0.0)
        for e, (expert, centre) in enumerate(zip(spec.experts, prior.experts, strict=True)):
            for s, share in enumerate(expert.attention_share):
                assert abs(GRID.index(share) - GRID.index(centre.attention_share[s])) <= 1
            assert abs(spec.soft_assignment[e] - prior.soft_assignment[e]) <= space.p_window + 1e-12
        assert all(abs(b - b0) <= radius for b, b0 in zip(spec.boundaries, prior.boundaries, strict=True))
    rebuilt = suggest_spec(optuna.trial.FixedTrial(params_for(prior, space, prior)), space, prior)
    assert projection_gap(prior, rebuilt) == {"share": 0.0, "boundary": 0.0, "p": 0.0}


def test_a_centred_space_needs_the_prior_and_prior_boundaries(prior) -> None:
    with pytest.raises(SearchSpaceError, match="needs a spectral prior"):
        suggest_spec(optuna.trial.FixedTrial({}), load_search_space("cpu32-prior"), None)
    with pytest.raises(SearchSpaceError, match="boundary_mode 'prior'"):
        dataclasses.replace(load_search_space("cpu32"), centre="prior")
