"""Suite-wide settings: one intra-op thread per process.

The suite runs tiny models on 2 cores; several tests start worker subprocesses. With torch's
default (one thread per core) those processes oversubscribe the cores and tiny CPU training runs
up to 8x slower, so every process of the suite (subprocesses inherit OMP_NUM_THREADS) uses one.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def taef2_folder(tmp_path):
    """A randomly initialised autoencoder of the TAEF2 layout (tests/latent_helpers.py)."""
    from latent_helpers import save_tiny_taef2

    return save_tiny_taef2(tmp_path / "taef2")
