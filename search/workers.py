"""Workers of a study: run trials until the study holds enough, survive dead workers.

:func:`run_search` prepares the study and runs ``workers`` worker processes (``python -m
memekit.search.workers CONFIG INDEX``; in this process when there is one); each
:func:`run_worker` asks the study for trials and runs the objective until the study holds
``n_trials`` finished ones, so workers on several machines can share one study.

Fault tolerance: PostgreSQL studies use Optuna's heartbeat and ``RetryFailedTrialCallback``.
Journal studies get memekit's heartbeat (the worker stamps ``memekit:heartbeat`` on its running
trial every ``heartbeat_interval`` s, through the storage's public API) and a stale-trial sweep
that fails a trial whose stamp is older than ``grace_period`` and re-enqueues its parameters.
Trials that raise an unexpected error are retried up to ``max_retries`` times.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from memekit.analysis.threads import (
    ThreadChoice,
    applied_threads,
    apply_threads,
    choose_threads,
    describe,
)
from memekit.space import load_spec

from .objective import Objective
from .storage import storage_kind
from .study import (
    CONFIG_FILE,
    DEFAULT_SEAMS,
    FINISHED,
    STORAGE_ENV,
    Seams,
    SearchConfig,
    SearchError,
    open_study,
    prepare_study,
    study_space,
    study_storage,
    worker_seed,
)
from .train_errors import TrainingInterrupted

HEARTBEAT_KEY = "memekit:heartbeat"


# ---- heartbeat, stale trials and retries (journal storage) ------------------------------------------
class Heartbeat:
    """Stamp ``memekit:heartbeat`` on the running trial every ``interval`` s from a thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, interval: float) -> None:
        self.storage, self.study_id, self.interval = storage, study_id, interval
        self._trial_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memekit-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def watch(self, trial_number: int | None) -> None:
        """Stamp the trial ``trial_number`` from now on (``None``: none)."""
        self._trial_id = (None if trial_number is None else
                          self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial_number))
        if trial_number is not None:
            self._beat()

    def _beat(self) -> None:
        trial_id = self._trial_id
        if trial_id is None:
            return
        try:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except (RuntimeError, KeyError):  # the trial just finished
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def stop(self) -> None:
        self._stop.set()


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retries: int, reason: str) -> bool:
    """Re-enqueue a failed trial's parameters unless it was retried ``max_retries`` times already."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= max_retries or trial.user_attrs.get("surplus"):
        return False
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("warm_start", "projection_gap")}
    study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number, "retries": retries + 1,
                                                  "retry_reason": reason})
    return True


def sweep_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, grace_period: float,
                       max_retries: int) -> list[int]:
    """Fail RUNNING trials whose heartbeat is older than ``grace_period`` s, and retry them.

    Exactly one sweeper wins each stale trial: failing an already-finished trial raises in Optuna.
    """
    swept = []
    now = time.time()
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.system_attrs.get(HEARTBEAT_KEY)
        if last is None:
            last = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - float(last) <= grace_period:
            continue
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_user_attr(trial_id, "failure_reason", "stale heartbeat: worker died")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except (RuntimeError, KeyError, optuna.exceptions.UpdateFinishedTrialError):
            continue
        retry_trial(study, trial, max_retries, "stale heartbeat")
        swept.append(trial.number)
    return swept


def _retry_failed_callback(config: SearchConfig):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            retry_trial(study, trial, config.max_retries, "raised an error")
        elif trial.user_attrs.get("surplus") and trial.system_attrs.get("fixed_params"):
            # a queued trial drawn as surplus goes back to the queue, so nothing queued is lost
            study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items() if k != "surplus"})
    return callback


# ---- workers ------------------------------------------------------------------------------------------
def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials, surplus trials excluded."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, n_trials: int) -> str:
    """One line per ended trial: state, objective values, warm start, time, and the study's count."""
    names = study.metric_names or [f"value {i}" for i in range(len(trial.values or []))]
    values = ", ".join(f"{name} {v:.5g}" for name, v in zip(names, trial.values or [], strict=False))
    state = trial.state.name.lower()
    reason = trial.user_attrs.get("failure_reason") or trial.user_attrs.get("skipped")
    if trial.state == TrialState.COMPLETE and any(c > 0 for c in trial.constraints.values()):
        state = f"complete, infeasible ({reason or 'a constraint > 0'})"
    elif reason:
        state += f" ({reason})"
    notes = [f"warm start {trial.user_attrs['warm_start']}"] if trial.user_attrs.get("warm_start") else []
    if trial.duration is not None:
        notes.append(f"{trial.duration.total_seconds():.0f} s")
    finished, _ = count_trials(study)
    return (f"trial {trial.number} {state}{': ' + values if values else ''}"
            f"{' (' + '; '.join(notes) + ')' if notes else ''}; {finished}/{n_trials} finished")


def run_worker(config: SearchConfig, index: int = 0, progress: bool = True, seams: Seams = DEFAULT_SEAMS) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (several workers may share it);
    ``progress``: print one line per ended trial (:func:`trial_line`)."""
    study_dir = Path(config.study_dir)
    storage = study_storage(config, seams)
    study = open_study(config, worker_seed(config, index), seams=seams, storage=storage)
    done = len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL)))
    sampler_seed = worker_seed(config, index) + 100_003 * done
    if done:  # a resumed worker must not replay the proposals its seed made before the restart
        study.sampler = seams.make_sampler(config.sampler, sampler_seed)
    space = study_space(config, study_dir)
    prior = load_spec(study_dir / "prior_spec.json") if (study_dir / "prior_spec.json").is_file() else None
    store = optuna.artifacts.FileSystemArtifactStore(str(_mkdir(study_dir / "artifacts")))
    objective = Objective(config, space, prior, study_dir, store, sampler_seed, seams)
    journal = storage_kind(config.storage) == "journal"
    heartbeat = None
    if journal:
        heartbeat = Heartbeat(storage, storage.get_study_id_from_name(study.study_name),
                              config.heartbeat_interval).start()
    callbacks = [_retry_failed_callback(config)]
    if heartbeat is not None:
        callbacks.append(lambda s, t: heartbeat.watch(None))
    if progress:
        callbacks.append(lambda s, t: t.user_attrs.get("surplus") or print(trial_line(s, t, config.n_trials),
                                                                            flush=True))

    interrupted: list[TrainingInterrupted] = []

    def watched(trial: optuna.Trial):
        if heartbeat is not None:
            heartbeat.watch(trial.number)
        try:
            return objective(trial)
        except TrainingInterrupted as err:  # SIGINT/SIGTERM or a deadline: Optuna fails the trial, which
            interrupted.append(err)  # is retried on resume, and the worker stops instead of going on
            raise

    try:
        while True:
            if journal:
                sweep_stale_trials(study, storage, config.grace_period, config.max_retries)
            finished, running = count_trials(study)
            if finished >= config.n_trials:
                break
            if finished + running >= config.n_trials:  # wait: a running trial may still die
                if not journal:  # Optuna fails (and retries) heartbeat-stale RDB trials only on request
                    optuna.storages.fail_stale_trials(study)
                time.sleep(min(5.0, config.heartbeat_interval))
                continue
            study.optimize(watched, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True)
            if interrupted:
                raise interrupted[0]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def cpu_threads_per_worker(config: SearchConfig) -> ThreadChoice:
    """Torch threads of each of the ``config.workers`` local workers, so that together they use the free
    cores once (oversubscribed torch threads slow every worker down several times): the user's
    (``--threads``, ``OMP_NUM_THREADS``) or :func:`memekit.analysis.threads.choose_threads`'s."""
    return choose_threads(config.workers)


def run_search(config: SearchConfig, progress: bool = True, seams: Seams = DEFAULT_SEAMS, update: bool = False,
               say: Callable[[str], None] | None = None) -> optuna.Study:
    """Prepare the study (:func:`~memekit.search.study.prepare_study`: ``update`` allows changing
    the settings of an existing study, ``say`` hears what changed), then run ``workers`` worker
    processes (in this process when 1; ``progress``: one line per ended trial)."""
    study = prepare_study(config, seams, update=update, say=say)
    threads = (applied_threads() if config.workers == 1 else None) or cpu_threads_per_worker(config)
    if say is not None:
        say(describe(threads))
    if config.workers == 1:  # the worker runs in this process
        apply_threads(threads)
        if config.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = config.gpus[0]
        run_worker(config, 0, progress, seams)
        return study
    procs = []
    config_file = Path(config.study_dir) / CONFIG_FILE
    for i in range(config.workers):
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads.threads)
        if config.storage:  # the password travels in the environment, never in a file
            env[STORAGE_ENV] = config.storage
        if config.gpus:
            env["CUDA_VISIBLE_DEVICES"] = config.gpus[i % len(config.gpus)]
        cmd = [sys.executable, "-m", "memekit.search.workers", str(config_file), str(i)]
        cmd += [] if progress else ["--quiet"]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SearchError(f"worker(s) exited with codes {codes}: see their output above; rerun the same command "
                          "to resume the study")
    return study


def worker_main(argv: list[str], seams: Seams = DEFAULT_SEAMS) -> int:
    """``python -m memekit.search.workers CONFIG INDEX [--quiet]``: worker INDEX of the study of
    ``CONFIG`` (its ``search_config.json``; a storage password comes in ``$MEMEKIT_STORAGE``), one
    line per ended trial unless ``--quiet``."""
    config = SearchConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    if os.environ.get(STORAGE_ENV):
        config = dataclasses.replace(config, storage=os.environ[STORAGE_ENV])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(config, int(argv[1]), progress="--quiet" not in argv[2:], seams=seams)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
