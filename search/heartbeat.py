"""Trial bookkeeping below Optuna's study API: heartbeats, stale trials, pauses, retries and the queue.

Every call memekit makes to a study's storage (``optuna.storages.BaseStorage``, whose methods Optuna
documents as not meant for library users) and to Optuna's stale-trial machinery is in this module, so
an Optuna upgrade that changes them touches one file. The workers (:mod:`memekit.search.workers`) use
these functions and the public ``Study`` API only.

- :class:`Heartbeat` stamps the running trial from a thread: Optuna's heartbeat on a storage that has
  one (PostgreSQL: ``RDBStorage.record_heartbeat``; stale trials are failed by ``fail_stale_trials``
  and retried by :class:`StaleRetry`, which records them), else memekit's system attr
  ``memekit:heartbeat`` (journal), which :func:`sweep_stale_trials` reads. The trial also carries its
  worker (``memekit:worker``), so a launcher can fail the trial of a worker it saw die.
- :func:`pause_trial` puts a stopped trial back in the queue, marked ``memekit:paused``.
- :func:`queue_trial` enqueues parameters marked with the user attr ``memekit_queued``, and
  :func:`was_queued` reads the mark (instead of Optuna's internal ``fixed_params`` system attr): a
  queued trial drawn as surplus goes back to the queue (:func:`requeue_surplus`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_KEY = "memekit:heartbeat"  # system attr: when the trial's worker last showed a sign of life
WORKER_KEY = "memekit:worker"  # system attr: "host:pid" of the worker running the trial
PAUSED_KEY = "memekit:paused"  # system attr of a trial a stop set back to WAITING: it resumes from its checkpoint
QUEUED_KEY = "memekit_queued"  # user attr of a trial memekit enqueued (warm start, retry, surplus put back)


def worker_tag(pid: int | None = None) -> str:
    """``host:pid`` of a worker process (this one by default), stamped on the trial it runs."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


class Heartbeat:
    """Stamp the running trial every ``interval`` s from a thread (see the module docstring)."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.study_id = storage.get_study_id_from_name(study_name)
        self.optuna_heartbeat = (isinstance(storage, optuna.storages.RDBStorage)
                                 and storage.get_heartbeat_interval() is not None)
        self._trial_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memekit-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def watch(self, trial_number: int | None) -> int | None:
        """Stamp the trial ``trial_number`` from now on (``None``: none); its trial id."""
        self._trial_id = (None if trial_number is None else
                          self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial_number))
        if self._trial_id is not None:
            self._beat()
            self.storage.set_trial_system_attr(self._trial_id, WORKER_KEY, worker_tag())
        return self._trial_id

    def _beat(self) -> None:
        trial_id = self._trial_id
        if trial_id is None:
            return
        try:
            if self.optuna_heartbeat:
                self.storage.record_heartbeat(trial_id)
            else:
                self.storage.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except (RuntimeError, KeyError):  # the trial just finished
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def stop(self) -> None:
        self._stop.set()

    def stored(self, trial_id: int) -> FrozenTrial:
        """The trial as the storage holds it now (another worker or a sweep may have ended it)."""
        return self.storage.get_trial(trial_id)

    def resumed(self, trial_id: int) -> None:
        """A paused trial a worker took from the queue is no longer paused."""
        if self.stored(trial_id).system_attrs.get(PAUSED_KEY):
            self.storage.set_trial_system_attr(trial_id, PAUSED_KEY, None)

    def sweep(self, study: optuna.Study, grace_period: float, max_retries: int,
              journal: bool) -> list[tuple[int, bool]]:
        """Fail (and retry) the trials of dead workers of other launchers; ``[(trial number, retried)]``:
        Optuna's stale trials on a storage with its heartbeat (retried by :class:`StaleRetry`), else on
        a ``journal`` :func:`sweep_stale_trials` (SQLite: one worker, nobody else's trials)."""
        if self.optuna_heartbeat:
            optuna.storages.fail_stale_trials(study)
            callback = self.storage.get_heartbeat_stale_trial_callback()
            return callback.drain() if isinstance(callback, StaleRetry) else []
        return sweep_stale_trials(study, self.storage, grace_period, max_retries) if journal else []


class StaleRetry(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial failed for a stale heartbeat (PostgreSQL), which also records what it
    failed, ``(trial number, retried)``, until :meth:`drain`: the worker whose sweep failed them says
    so, as for a journal (Optuna fails them in silence)."""

    def __init__(self, max_retry: int) -> None:
        super().__init__(max_retry=max_retry)
        self.max_retry = max_retry
        self.ended: list[tuple[int, bool]] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        super().__call__(study, trial)
        self.ended.append((trial.number, len(self.retry_history(trial)) + 1 <= self.max_retry))

    def drain(self) -> list[tuple[int, bool]]:
        """The trials failed since the last call."""
        ended, self.ended = self.ended, []
        return ended


# ---- the queue: retries and trials put back -----------------------------------------------------------
def queue_trial(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any],
                skip_if_exists: bool = False) -> None:
    """``study.enqueue_trial`` with the user attr :data:`QUEUED_KEY`, which :func:`was_queued` reads."""
    study.enqueue_trial(params, user_attrs={**user_attrs, QUEUED_KEY: True}, skip_if_exists=skip_if_exists)


def was_queued(trial: FrozenTrial) -> bool:
    """Whether ``trial`` came from the study's queue with fixed parameters (:func:`queue_trial`).
    Studies made before memekit marked its queued trials lack :data:`QUEUED_KEY`: then memekit had
    enqueued only warm starts and retries (and surplus trials put back with their attrs), whose
    ``warm_start`` / ``retry_of`` attrs say so, so a resumed old study keeps its queue."""
    attrs = trial.user_attrs
    if QUEUED_KEY in attrs:
        return bool(attrs[QUEUED_KEY])
    return "warm_start" in attrs or "retry_of" in attrs


def requeue_surplus(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Put a trial drawn as surplus back in the queue when it came from there (:func:`was_queued`), its
    attrs kept but ``surplus``, so nothing queued is lost; whether it did."""
    if not was_queued(trial):
        return False
    queue_trial(study, trial.params, {k: v for k, v in trial.user_attrs.items() if k != "surplus"})
    return True


def retry_trial(study: optuna.Study, trial: FrozenTrial, max_retries: int, reason: str) -> bool:
    """Re-enqueue a failed trial's parameters unless it was retried ``max_retries`` times already."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= max_retries or trial.user_attrs.get("surplus"):
        return False
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("warm_start", "projection_gap")}
    queue_trial(study, trial.params, {**attrs, "retry_of": trial.number, "retries": retries + 1,
                                      "retry_reason": reason})
    return True


def fail_and_retry(study: optuna.Study, storage: optuna.storages.BaseStorage, trial: FrozenTrial,
                   reason: str, max_retries: int, retry_reason: str) -> bool | None:
    """Fail the running ``trial`` with ``failure_reason`` ``reason`` and retry it (:func:`retry_trial`,
    ``retry_reason``): whether it was retried, or None when it had ended already (another worker or
    sweep won)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (RuntimeError, KeyError, optuna.exceptions.UpdateFinishedTrialError):
        return None
    return retry_trial(study, trial, max_retries, retry_reason)


def sweep_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, grace_period: float,
                       max_retries: int) -> list[tuple[int, bool]]:
    """Fail RUNNING trials whose heartbeat is older than ``grace_period`` s, and retry them;
    ``[(trial number, retried)]``. Exactly one sweeper wins each stale trial: failing an
    already-finished trial raises in Optuna."""
    swept = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # a paused trial that resumes keeps its old stamp until its first beat: its (new) start counts too
        stamps = [trial.system_attrs.get(HEARTBEAT_KEY),
                  trial.datetime_start.timestamp() if trial.datetime_start else now]
        if now - max(float(s) for s in stamps if s is not None) <= grace_period:
            continue
        retried = fail_and_retry(study, storage, trial, f"stale heartbeat: no sign of its worker for over "
                                 f"{grace_period:g} s (it died?)", max_retries, "stale heartbeat")
        if retried is not None:
            swept.append((trial.number, retried))
    return swept


def pause_trial(storage: optuna.storages.BaseStorage, trial_id: int, why: str) -> None:
    """Put a running trial back in the queue, marked paused with ``why``: the next worker that asks the
    study for a trial takes it (Optuna's queue hands each waiting trial to one worker) and its proxy run
    resumes from its checkpoint."""
    storage.set_trial_system_attr(trial_id, PAUSED_KEY, why)
    storage.set_trial_state_values(trial_id, TrialState.WAITING)
