"""A tiny trained checkpoint shared by the watch tests (trained once per session: real model, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.engine.trainer import train


@pytest.fixture(scope="session")
def watch_checkpoint(synth3d, tiny, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("watch_run")
    return train(tiny(synth3d, run_dir, "train.epochs=1"), progress=False).best_checkpoint
