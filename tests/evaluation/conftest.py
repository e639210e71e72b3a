"""Fixtures for the evaluation tests: headless Chromium, single-threaded torch for the tiny model,
and one tiny SFT run shared by every test that only reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.helpers import train_tiny_run
from reporting.browser import chromium  # noqa: F401 - the fixture


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    """A finished tiny SFT run (LoRA, 20 steps; base and tuned evaluated on 12 held-out rows). Read
    it, never change it: copy it first (`shutil.copytree`)."""
    return train_tiny_run(tmp_path_factory.mktemp("evalrun"), tiny_model)
