"""Workers of a study: run trials until the study holds enough; a launcher that watches them.

:func:`run_search` prepares the study and runs ``workers`` worker processes (``python -m
memekit.search.workers CONFIG INDEX``; in this process when there is one) under a :class:`Launcher`
that polls them: a worker that dies is noticed within a second, said, its trial is failed and retried
at once, and the worker is restarted while trials remain. Each :func:`run_worker` asks the study for
trials (``study.ask``/``study.tell``) and runs the objective until the study holds ``n_trials``
finished ones, so workers on several machines can share one study.

Stopping: SIGINT or SIGTERM pauses a study. The proxy run writes a checkpoint at its next step, its
trial goes back to the queue (WAITING, marked ``memekit:paused``) instead of failing, and the next run
of the same command resumes it in the same trial folder from that checkpoint: the trial keeps its
number and parameters, and its result is that of an uninterrupted run. A stop outside the training
loop (loading data, validating, sampling) lets the trial finish, then stops the worker.

Fault tolerance: every running trial carries its worker (``memekit:worker``, host and pid) and a
heartbeat (:mod:`memekit.search.heartbeat`, which holds every storage-level call): Optuna's on
PostgreSQL, memekit's on a journal, where a stale-trial sweep fails a trial whose stamp is older than
``grace_period`` and re-enqueues its parameters (for workers of another launcher; a launcher fails
its own dead workers' trials at once).
Trials that raise an unexpected error are retried up to ``max_retries`` times.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType

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
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text
from memekit.space.progress import say_error_line, say_line

from .heartbeat import (
    WORKER_KEY,
    Heartbeat,
    fail_and_retry,
    pause_trial,
    requeue_surplus,
    retry_trial,
    worker_tag,
)
from .objective import Objective, SurplusTrial
from .storage import storage_kind
from .study import (
    CONFIG_FILE,
    DEFAULT_SEAMS,
    FINISHED,
    STORAGE_ENV,
    Seams,
    SearchConfig,
    SearchError,
    StudyPlan,
    StudyProgress,
    open_study,
    prepare_study,
    study_progress,
    study_space,
    study_storage,
    worker_seed,
)
from .train_errors import TrainingInterrupted

MAX_RESTARTS = 3  # a worker slot whose process dies is restarted at most this many times
POLL_S = 0.5  # how often the launcher looks at its workers
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SearchPaused(SearchError):
    """SIGINT/SIGTERM paused the study: rerunning the same command continues it (paused trials from
    their checkpoints). ``exit_code`` is 128 + the signal, as a shell reports a stopped program."""

    def __init__(self, signum: int, progress: StudyProgress) -> None:
        super().__init__(f"paused by {signal.Signals(signum).name}: {progress.text()}; rerun the same command to "
                         "continue")
        self.exit_code = 128 + signum
        self.progress = progress


# ---- stop requests ------------------------------------------------------------------------------------
class StopRequest:
    """SIGINT/SIGTERM, while in its ``with`` block (main thread only), as a request to stop at the next
    safe point; the first signal counts. The proxy training installs its own handlers while it trains
    (:class:`memekit.search.control.StopControl`) and stops at its next step with a checkpoint."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def set(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less once a stop is requested."""
        end = time.monotonic() + seconds
        while not self.requested and time.monotonic() < end:
            time.sleep(min(0.2, max(end - time.monotonic(), 0.0)))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.set(signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def pause_reason(err: TrainingInterrupted) -> str:
    """``stopped at step 40`` from the proxy training's ``SIGTERM at step 40: checkpoint written ...``."""
    head = str(err).split(":", 1)[0]
    return re.sub(r"^SIG[A-Z]+ at", "stopped at", head)


# ---- workers ------------------------------------------------------------------------------------------
def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials, surplus trials excluded."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, n_trials: int) -> str:
    """One line per ended trial: state, objective values, warm start, resume, time, and the study's count."""
    names = study.metric_names or [f"value {i}" for i in range(len(trial.values or []))]
    values = ", ".join(f"{name} {v:.5g}" for name, v in zip(names, trial.values or [], strict=False))
    state = trial.state.name.lower()
    reason = trial.user_attrs.get("failure_reason") or trial.user_attrs.get("skipped")
    if trial.state == TrialState.COMPLETE and any(c > 0 for c in trial.constraints.values()):
        state = f"complete, infeasible ({reason or 'a constraint > 0'})"
    elif reason:
        state += f" ({reason})"
    notes = [f"warm start {trial.user_attrs['warm_start']}"] if trial.user_attrs.get("warm_start") else []
    if trial.user_attrs.get("proxy_resumed_from_step") is not None:
        notes.append(f"resumed from step {trial.user_attrs['proxy_resumed_from_step']:,}")
    if trial.duration is not None:
        notes.append(f"{trial.duration.total_seconds():.0f} s")
    finished, _ = count_trials(study)
    return (f"trial {trial.number} {state}{': ' + values if values else ''}"
            f"{' (' + '; '.join(notes) + ')' if notes else ''}; {finished}/{n_trials} finished")


@dataclasses.dataclass
class _Worker:
    """What one worker needs to run trials of its study."""

    config: SearchConfig
    study: optuna.Study
    storage: optuna.storages.BaseStorage
    objective: Objective
    heartbeat: Heartbeat
    say: Callable[[str], None]
    stop: StopRequest

    def recover(self) -> None:
        """Fail (and retry) the trials of dead workers of other launchers: stale heartbeats."""
        journal = storage_kind(self.config.storage) == "journal"
        for number, retried in self.heartbeat.sweep(self.study, self.config.grace_period, self.config.max_retries,
                                                    journal):
            self.say(f"trial {number} failed: no heartbeat from its worker for over {self.config.grace_period} s "
                     f"(it died?): {'retried as a new trial' if retried else 'not retried (retried enough times)'}")

    def run_trial(self) -> None:
        """Ask the study for a trial (a paused one first), run the objective and tell the result; a stop
        during the proxy training puts the trial back in the queue, paused at its checkpoint."""
        with warnings.catch_warnings():  # memekit beats the heartbeat itself (Heartbeat), outside optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = self.study.ask()
        trial_id = self.heartbeat.watch(trial.number)
        self.heartbeat.resumed(trial_id)
        values, state = None, None
        try:
            values = self.objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except TrainingInterrupted as err:  # SIGINT/SIGTERM: the checkpoint is written, the trial waits for a rerun
            self.heartbeat.watch(None)
            pause_trial(self.storage, trial_id, pause_reason(err))
            self.stop.set(err.exit_code - 128 if err.exit_code > 128 else signal.SIGTERM)
            return
        except SurplusTrial:
            state = TrialState.FAIL
        except Exception as err:  # noqa: BLE001 - any error of one trial fails that trial, not the study
            state = TrialState.FAIL
            self._record_error(trial, err)
        finally:
            self.heartbeat.watch(None)
        ended = self.heartbeat.stored(trial_id)
        if ended.state.is_finished():  # a sweep failed it as stale while it ran (a long stall)
            self.say(f"trial {trial.number} was failed while it ran ({ended.user_attrs.get('failure_reason')}): its "
                     "result is dropped")
            return
        self._after(self.study.tell(trial, values, state=state, skip_if_finished=True))

    def _record_error(self, trial: optuna.Trial, err: Exception) -> None:
        first = (str(err).strip().splitlines() or [""])[0][:300]
        folder = Path(self.config.study_dir) / "trials" / f"trial-{trial.number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "error.txt", "".join(traceback.format_exception(err)))
        trial.set_user_attr("failure_reason", f"{type(err).__name__}: {first} (traceback in {folder.name}/error.txt)")

    def _after(self, trial: optuna.trial.FrozenTrial) -> None:
        surplus = trial.user_attrs.get("surplus")
        if trial.state == TrialState.FAIL and not surplus:
            retry_trial(self.study, trial, self.config.max_retries, "raised an error")
        elif surplus:
            requeue_surplus(self.study, trial)
        if not surplus:
            self.say(trial_line(self.study, trial, self.config.n_trials))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_worker(config: SearchConfig, index: int = 0, progress: bool = True, seams: Seams = DEFAULT_SEAMS,
               stop: StopRequest | None = None, say: Callable[[str], None] | None = None) -> int | None:
    """Run trials until the study holds ``n_trials`` finished ones (several workers may share it);
    ``progress``: one line per ended trial (:func:`trial_line`) and per trial failed for another
    worker, to ``say`` (default: stdout). SIGINT/SIGTERM (or ``stop``) stop the worker at the next safe
    point, the running trial paused at its checkpoint: returns that signal, or None when the study holds
    its trials."""
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
    heartbeat = Heartbeat(storage, study.study_name, config.heartbeat_interval)
    said = (say or say_line) if progress else (lambda line: None)
    worker = _Worker(config, study, storage, objective, heartbeat.start(), said, stop or StopRequest())
    with worker.stop:
        try:
            while not worker.stop.requested:
                worker.recover()
                finished, running = count_trials(study)
                if finished >= config.n_trials:
                    break
                if finished + running >= config.n_trials:  # wait: a running trial may still die
                    worker.stop.wait(min(5.0, config.heartbeat_interval))
                    continue
                worker.run_trial()
        finally:
            heartbeat.stop()
    return worker.stop.signal


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- the launcher -----------------------------------------------------------------------------------------
def cpu_threads_per_worker(config: SearchConfig) -> ThreadChoice:
    """Torch threads of each of the ``config.workers`` local workers, so that together they use the free
    cores once (oversubscribed torch threads slow every worker down several times): the user's
    (``--threads``, ``OMP_NUM_THREADS``) or :func:`memekit.analysis.threads.choose_threads`'s."""
    return choose_threads(config.workers)


def exit_text(code: int) -> str:
    """``killed by SIGKILL`` or ``exited with code 1``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Launcher:
    """The ``config.workers`` worker processes of one study on this machine, watched: each is polled
    every :data:`POLL_S` s (so none stays a zombie); one that dies is said at once, its running trial
    failed and retried (the trial's ``memekit:worker`` names it), and it is restarted (at most
    :data:`MAX_RESTARTS` times) while the study needs trials. SIGINT/SIGTERM to the launcher is passed to
    every worker as SIGTERM (workers run in their own process group, so a terminal's Ctrl-C reaches them
    only this way, once): they pause their trials and exit."""

    def __init__(self, config: SearchConfig, threads: ThreadChoice, progress: bool, say: Callable[[str], None],
                 seams: Seams = DEFAULT_SEAMS) -> None:
        self.config, self.threads, self.progress, self.say, self.seams = config, threads, progress, say, seams
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.BaseStorage | None = None
        self.procs: dict[int, subprocess.Popen] = {}
        self.restarts = dict.fromkeys(range(config.workers), 0)
        self.problems: list[tuple[int, str]] = []  # (worker, what): workers that ended unhappily, not restarted

    @property
    def study(self) -> optuna.Study:
        """The study, opened when first needed (a worker died): the launcher fails trials through it."""
        if self._study is None:
            self._storage = study_storage(self.config, self.seams)
            self._study = optuna.load_study(study_name=self.config.study_name, storage=self._storage,
                                            sampler=optuna.samplers.RandomSampler())
        return self._study

    def start(self, index: int) -> subprocess.Popen:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads.threads)
        if self.config.storage:  # the password travels in the environment, never in a file
            env[STORAGE_ENV] = self.config.storage
        if self.config.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.config.gpus[index % len(self.config.gpus)]
        cmd = [sys.executable, "-m", "memekit.search.workers", str(Path(self.config.study_dir) / CONFIG_FILE),
               str(index)]
        cmd += [] if self.progress else ["--quiet"]
        self.procs[index] = subprocess.Popen(cmd, env=env, process_group=0)
        return self.procs[index]

    def run(self) -> int | None:
        """Start the workers and watch them until all have exited; the signal that stopped them, or None."""
        stop = StopRequest()
        try:
            with stop:
                for index in range(self.config.workers):
                    self.start(index)
                forwarded = False
                while self.procs:
                    if stop.requested and not forwarded:
                        self._signal_all(signal.SIGTERM)
                        forwarded = True
                    for index, proc in list(self.procs.items()):
                        code = proc.poll()  # reaps an exited worker
                        if code is not None:
                            del self.procs[index]
                            self._ended(index, proc, code, stopping=stop.requested)
                    if self.procs:
                        time.sleep(POLL_S)
        finally:
            self._stop_all()
        return stop.signal

    def _ended(self, index: int, proc: subprocess.Popen, code: int, stopping: bool) -> None:
        """Say what a worker's exit means, fail its trial when it died, restart it when trials remain."""
        if code == 0:
            return
        if code in (128 + signal.SIGINT, 128 + signal.SIGTERM) or (stopping and code == -signal.SIGTERM):
            if not stopping:  # someone stopped this one worker: its paused trial goes to another worker
                self.say(f"worker {index} (pid {proc.pid}) was stopped by {signal.Signals(code & 127).name}: its "
                         "trial is paused for the next worker")
                self.problems.append((index, f"worker {index} was stopped"))
            return
        what = exit_text(code)
        failed = self._fail_trials_of(proc.pid, f"its worker {what}")
        line = f"worker {index} (pid {proc.pid}) {what}" + "".join(
            f"; trial {n} failed and {'retried as a new trial' if retried else 'not retried (retried enough times)'}"
            for n, retried in failed)
        if stopping or study_progress(self.study, self.config.n_trials).done:
            self.say(line)
        elif code > 0:
            self.say(f"{line}; not restarted: its error is above")
            self.problems.append((index, f"worker {index} {what}"))
        elif self.restarts[index] >= MAX_RESTARTS:
            self.say(f"{line}; not restarted: it died {self.restarts[index] + 1} times")
            self.problems.append((index, f"worker {index} died {self.restarts[index] + 1} times"))
        else:
            self.restarts[index] += 1
            self.say(f"{line}; restarted as pid {self.start(index).pid}")

    def _fail_trials_of(self, pid: int, reason: str) -> list[tuple[int, bool]]:
        tag = worker_tag(pid)
        failed = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.system_attrs.get(WORKER_KEY) == tag:
                retried = fail_and_retry(self.study, self._storage, trial, reason, self.config.max_retries,
                                         "worker died")
                if retried is not None:
                    failed.append((trial.number, retried))
        return failed

    def _signal_all(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _stop_all(self, grace_s: float = 60.0) -> None:
        """Workers still running when the launcher leaves (an error of its own): pause them, then kill
        what is left after ``grace_s``."""
        if not self.procs:
            return
        self._signal_all(signal.SIGTERM)
        end = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = {}


def run_search(config: SearchConfig, progress: bool = True, seams: Seams = DEFAULT_SEAMS, update: bool = False,
               say: Callable[[str], None] | None = None, plan: StudyPlan | None = None) -> optuna.Study:
    """Prepare the study (:func:`~memekit.search.study.prepare_study`, checked by ``plan`` or
    :func:`~memekit.search.study.plan_study`: ``update`` allows changing the settings of an existing
    study, ``say`` hears what changed), then run ``workers`` worker processes (in this process when 1;
    ``progress``: one line per ended trial) until the study holds its trials. The trials' lines and the
    launcher's (a worker that died) go to ``say``, default stdout. Raises
    :class:`SearchPaused` when SIGINT/SIGTERM paused it and :class:`SearchError` when its workers
    stopped before it was done, both saying what is left."""
    study = prepare_study(config, seams, update=update, say=say, plan=plan)
    threads = (applied_threads() if config.workers == 1 else None) or cpu_threads_per_worker(config)
    said = say or (lambda line: None)
    said(describe(threads))
    if config.workers == 1:  # the worker runs in this process
        apply_threads(threads)
        if config.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = config.gpus[0]
        signum = run_worker(config, 0, progress, seams, say=say)
        problems: list[str] = []
    else:
        launcher = Launcher(config, threads, progress, say or say_line, seams)
        signum = launcher.run()
        problems = [what for _, what in sorted(launcher.problems, key=lambda p: p[0])]  # worker order
    if signum is None and not problems:  # every worker ended because the study holds its trials
        return study
    state = study_progress(study, config.n_trials)
    if signum is not None and not state.done:
        raise SearchPaused(signum, state)
    if not state.done:
        raise SearchError(f"the study stopped with {state.text()} ({'; '.join(problems) or 'no worker left'}): rerun "
                          "the same command to continue")
    return study


def worker_main(argv: list[str], seams: Seams = DEFAULT_SEAMS) -> int:
    """``python -m memekit.search.workers CONFIG INDEX [--quiet]``: worker INDEX of the study of
    ``CONFIG`` (its ``search_config.json``; a storage password comes in ``$MEMEKIT_STORAGE``), one
    line per ended trial unless ``--quiet``. Exit code 0 once the study holds its trials, 128 + the
    signal when SIGINT/SIGTERM paused it, 2 with a one-line error."""
    config = SearchConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    if os.environ.get(STORAGE_ENV):
        config = dataclasses.replace(config, storage=os.environ[STORAGE_ENV])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        signum = run_worker(config, int(argv[1]), progress="--quiet" not in argv[2:], seams=seams)
    except MemekitError as err:
        say_error_line(f"memekit: error: worker {argv[1]}: {err}")
        return 2
    return 0 if signum is None else 128 + signum


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
