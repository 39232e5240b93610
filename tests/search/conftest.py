"""Shared tiny specs, configs and helpers for the memekit.search tests.

Every spec here is 8 px, one stage of width 8, head_dim 8 (one attention head) over T = 50, so a
training step takes milliseconds on one CPU thread. ``$MEMEKIT_CACHE`` points at one temporary
folder per test session (autouse), so the built-in data set is rendered once and nothing is
written to the user's cache.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from memekit.search.cli import main as cli_main
from memekit.search.train import TrainConfig, Trainer
from memekit.space import DiffusionSpec, ExpertSpec, MemeSpec

# 160 dead-leaves images: 143 in the train split and 17 in the reference (validation) split
DATA = "builtin:shapes:160"
TIMESTEPS = 50
RESOLUTION = 8


def tiny_expert(dropout: float = 0.0) -> ExpertSpec:
    """One 8 px stage of width 8: half the mixer channels would be 4, rounded to one head of 8."""
    return ExpertSpec(image_channels=3, resolution=RESOLUTION, base_width=8, channel_mult=(1,),
                      blocks_per_stage=(1,), attention_share=(0.5,), head_dim=8, attention_pool=(1,),
                      dropout=dropout)


def tiny_spec(boundaries: tuple[int, ...] = (0, 20, TIMESTEPS), soft_assignment: tuple[float, ...] = (0.8, 0.3),
              out_of_interval: str = "uniform-complement", dropout: float = 0.0) -> MemeSpec:
    """A tiny MemeSpec with one tiny expert per interval ``[b_k, b_{k+1})``."""
    n = len(boundaries) - 1
    return MemeSpec(experts=tuple(tiny_expert(dropout) for _ in range(n)),
                    intervals=tuple((boundaries[k], boundaries[k + 1]) for k in range(n)),
                    soft_assignment=soft_assignment,
                    diffusion=DiffusionSpec(timesteps=boundaries[-1], schedule="linear-ddpm", prediction="eps"),
                    out_of_interval=out_of_interval, name="tiny")


def tiny_config(**fields: Any) -> TrainConfig:
    """A TrainConfig for a few CPU steps: validation and sample grid only at the end, tiny."""
    base: dict[str, Any] = dict(data=DATA, images=8 * 4, batch=8, lr=1e-3, warmup_images=0, device="cpu",
                                log_every=1, val_every=0, val_images=16, val_timesteps=4, sample_every=0,
                                sample_count=2, sample_steps=2, checkpoint_every=0, keep_last=3)
    base.update(fields)
    return TrainConfig(**base)


def tiny_trainer(run_dir: Path, spec: MemeSpec | None = None, **fields: Any) -> Trainer:
    return Trainer(spec or tiny_spec(), tiny_config(**fields), run_dir, progress=False)


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def error_lines(stderr: str) -> list[str]:
    """``memekit: error: ...`` (our errors) and ``memekit CMD: error: ...`` (usage errors) lines."""
    return [line for line in stderr.splitlines() if re.match(r"memekit( [\w-]+)*: error: ", line)]


def assert_one_line_error(code: int, stderr: str, expected_code: int = 2, contains: str = "") -> str:
    """Exit ``expected_code``, exactly one ``memekit: error:`` line, it ends stderr, no traceback."""
    assert code == expected_code, f"exit {code}, stderr:\n{stderr}"
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    assert stderr.rstrip("\n").splitlines()[-1] == errors[0], stderr
    assert contains in errors[0], errors[0]
    return errors[0]


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def memekit_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("memekit-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(memekit_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``$MEMEKIT_CACHE`` in a temp folder; one CPU thread (the CPU is shared, sizes are tiny)."""
    monkeypatch.setenv("MEMEKIT_CACHE", str(memekit_cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spec_file(tmp_path: Path) -> Callable[..., Path]:
    """``spec_file(**tiny_spec kwargs)``: the tiny spec written as JSON, its path."""

    def write(**kwargs: Any) -> Path:
        path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*.json')))}.json"
        path.write_text(tiny_spec(**kwargs).to_json())
        return path

    return write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``cli(*args) -> (exit code, stdout, stderr)`` of ``memekit.search.cli.main`` in-process."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def subprocess_env() -> dict[str, str]:
    """The current environment (with the test's ``$MEMEKIT_CACHE``), one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_memekit(*args: str | Path, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m memekit.search.cli ARGS`` as a subprocess (the real entry point and exit code)."""
    return subprocess.run([sys.executable, "-m", "memekit.search.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env(), cwd=cwd)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, memekit_cache: Path) -> Path:
    """A tiny 2-expert run folder trained for 4 steps (checkpoint every step, keep the last 2)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the autouse one
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEMEKIT_CACHE", str(memekit_cache))
            tiny_trainer(run_dir, images=4 * 8, checkpoint_every=1, keep_last=2).run()
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture
def workers(tmp_path: Path):
    """A pool of study worker processes with a fake proxy training (see test_workers.Workers),
    killed at the end of the test; shared by the journal and PostgreSQL worker tests."""
    import optuna
    from test_workers import Workers

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pool = Workers(tmp_path)
    yield pool
    pool.close()
