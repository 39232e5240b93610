"""Shared tiny specs for the memekit.space tests (8 px, widths 16, 1 block per stage, 2 heads).

Fixtures return factories so that each test can vary one field of an otherwise valid spec.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from memekit.space import DiffusionSpec, ExpertSpec, MemeSpec, intervals_from_boundaries

# A valid tiny expert: 2 stages of width 16 at 8 and 4 px; head_dim 8, so share 1 is 2 heads.
TINY_EXPERT: dict[str, Any] = {
    "image_channels": 3,
    "resolution": 8,
    "base_width": 16,
    "channel_mult": [1, 1],
    "blocks_per_stage": [1, 1],
    "attention_share": [0.5, 1.0],
    "head_dim": 8,
    "attention_pool": [2, 1],
    "dropout": 0.0,
}

# A valid tiny two-expert spec over T = 50 (linear-ddpm is scaled for small T).
TINY_SPEC: dict[str, Any] = {
    "format_version": 1,
    "name": "tiny",
    "diffusion": {"timesteps": 50, "schedule": "linear-ddpm", "prediction": "eps"},
    "intervals": [[0, 20], [20, 50]],
    "soft_assignment": [0.8, 0.4],
    "out_of_interval": "uniform-complement",
    "experts": [copy.deepcopy(TINY_EXPERT), copy.deepcopy(TINY_EXPERT)],
}


@pytest.fixture
def tiny_expert_dict() -> dict[str, Any]:
    """A fresh, mutable copy of the tiny expert's JSON object."""
    return copy.deepcopy(TINY_EXPERT)


@pytest.fixture
def tiny_spec_dict() -> dict[str, Any]:
    """A fresh, mutable copy of the tiny two-expert MemeSpec JSON object."""
    return copy.deepcopy(TINY_SPEC)


@pytest.fixture
def make_expert() -> Callable[..., ExpertSpec]:
    """``make_expert(share=None, **fields)``: the tiny expert, with every stage at ``share`` if given."""

    def make(share: float | None = None, **fields: Any) -> ExpertSpec:
        data = copy.deepcopy(TINY_EXPERT)
        if share is not None:
            data["attention_share"] = [share] * len(data["channel_mult"])
        data.update(fields)
        return ExpertSpec.from_dict(data)

    return make


@pytest.fixture
def make_spec(make_expert: Callable[..., ExpertSpec]) -> Callable[..., MemeSpec]:
    """``make_spec(boundaries, soft_assignment=None, experts=None, **fields)``: a tiny MemeSpec with
    one tiny expert per interval ``[b_k, b_{k+1})``; T is the last boundary."""

    def make(boundaries: tuple[int, ...], soft_assignment: tuple[float, ...] | None = None,
             experts: tuple[ExpertSpec, ...] | None = None, schedule: str = "linear-ddpm",
             prediction: str = "eps", **fields: Any) -> MemeSpec:
        n = len(boundaries) - 1
        return MemeSpec(
            experts=experts if experts is not None else tuple(make_expert() for _ in range(n)),
            intervals=intervals_from_boundaries(boundaries),
            soft_assignment=soft_assignment if soft_assignment is not None else (1.0,) * n,
            diffusion=DiffusionSpec(timesteps=boundaries[-1], schedule=schedule, prediction=prediction),
            **fields,
        )

    return make


@pytest.fixture(autouse=True, scope="session")
def _single_intra_op_thread():
    """Tiny CPU configs gain nothing from intra-op threads, and on a busy 2-core machine the
    thread pool's waiting makes them many times slower; run them on one thread, then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
