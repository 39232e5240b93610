"""The trial bookkeeping of :mod:`memekit.search.heartbeat`: the queue mark that replaces Optuna's
internal ``fixed_params``, and that no other module of ``search/`` calls the storage directly."""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

import memekit.search
from memekit.search.heartbeat import (
    QUEUED_KEY,
    queue_trial,
    requeue_surplus,
    retry_trial,
    was_queued,
)

SEARCH = Path(memekit.search.__file__).parent
PARAMS = {"x": 0.25}


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study()


def drawn(study: optuna.Study, state: TrialState = TrialState.FAIL, **attrs: object) -> FrozenTrial:
    """The next trial the study hands out, with ``x`` suggested (the queued value when queued), ended
    in ``state`` with the user attrs ``attrs``."""
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return study.tell(trial, None if state == TrialState.FAIL else 1.0, state=state)


def waiting(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def test_a_queued_surplus_trial_goes_back_to_the_queue_with_its_attrs(study: optuna.Study) -> None:
    queue_trial(study, PARAMS, {"warm_start": "meme-paper"})
    trial = drawn(study, surplus=True)
    assert trial.params == PARAMS and was_queued(trial)
    assert requeue_surplus(study, trial)
    (back,) = waiting(study)
    assert back.user_attrs == {"warm_start": "meme-paper", QUEUED_KEY: True}  # surplus dropped, mark kept
    assert drawn(study, TrialState.COMPLETE).params == PARAMS


def test_a_sampled_surplus_trial_is_not_queued(study: optuna.Study) -> None:
    trial = drawn(study, surplus=True)
    assert not was_queued(trial)
    assert not requeue_surplus(study, trial)
    assert waiting(study) == []


@pytest.mark.parametrize("attrs", [{"warm_start": "prior", "projection_gap": {}}, {"retry_of": 3, "retries": 1}])
def test_trials_queued_before_the_mark_existed_count_as_queued(study: optuna.Study, attrs: dict) -> None:
    """A study made by an older memekit: its warm starts and retries were enqueued without the mark."""
    study.enqueue_trial(PARAMS, user_attrs=attrs)
    trial = drawn(study, surplus=True)
    assert QUEUED_KEY not in trial.user_attrs and was_queued(trial)
    assert requeue_surplus(study, trial) and len(waiting(study)) == 1


def test_a_retry_is_queued_and_marked(study: optuna.Study) -> None:
    failed = drawn(study, warm_start="multi-same")
    assert retry_trial(study, failed, max_retries=2, reason="raised an error")
    (retry,) = waiting(study)
    assert retry.user_attrs[QUEUED_KEY] is True and retry.user_attrs["retry_of"] == failed.number
    assert was_queued(drawn(study, TrialState.COMPLETE))


STORAGE_ONLY = ({n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")}
                - {n for cls in (optuna.Study, optuna.Trial, FrozenTrial) for n in dir(cls)}
                ) | {"record_heartbeat", "get_heartbeat_interval", "fail_stale_trials"}


def test_only_the_heartbeat_module_calls_the_storage() -> None:
    """``BaseStorage`` methods (not for library users, says Optuna), its heartbeat and stale-trial
    calls, and Optuna's internal ``fixed_params`` appear in ``search/heartbeat.py`` only."""
    assert {"set_trial_system_attr", "get_trial_id_from_study_id_trial_number"} <= STORAGE_ONLY
    found = []
    for path in sorted(SEARCH.rglob("*.py")):
        if path.name == "heartbeat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (node.attr if isinstance(node, ast.Attribute) else node.name if isinstance(node, ast.alias)
                    else node.value if isinstance(node, ast.Constant) else None)
            if name in STORAGE_ONLY or name == "fixed_params":
                found.append(f"{path.relative_to(SEARCH)}:{node.lineno}: {name}")
    assert found == []
