"""Experiment trackers (`training.report_to`): the Trainer's own integrations, pointed inside the run.

metrics.jsonl and the plots are written whatever is chosen; a tracker is an extra copy for the tool a
team already uses. Each writes locally unless the user's environment says otherwise:

- tensorboard: event files in RUN/tensorboard (`tensorboard --logdir RUN/tensorboard`)
- mlflow: a file store in RUN/mlruns, experiment "tunelab" (MLFLOW_TRACKING_URI overrides; reading it
  back needs MLFLOW_ALLOW_FILE_STORE=true, as MLflow 3 keeps file stores in maintenance mode)
- wandb: offline mode in RUN/wandb (WANDB_MODE / WANDB_API_KEY set by the user override)
- trackio: trackio's local store, project "tunelab" (TRACKIO_PROJECT overrides)
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# name → (module to import, pip extra that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


def missing_tracker(names: Sequence[str]) -> tuple[str, str] | None:
    """(tracker, pip command) of the first chosen tracker whose package is not installed."""
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            return name, f"pip install 'tunelab[{extra}]'"
    return None


def tracker_environment_for(names: Sequence[str], run_dir: Path) -> dict[str, str]:
    """The environment variables that keep each chosen tracker local to the run (the user's own win)."""
    env: dict[str, str] = {}
    if "tensorboard" in names:
        env["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if "mlflow" in names:
        env["MLFLOW_TRACKING_URI"] = (run_dir / "mlruns").resolve().as_uri()
        env["MLFLOW_EXPERIMENT_NAME"] = "tunelab"
        # MLflow 3 prefers a database, but a folder of plain files needs no server or SQL package
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if "wandb" in names:
        if not os.environ.get("WANDB_API_KEY"):
            env["WANDB_MODE"] = "offline"
        env["WANDB_DIR"] = str(run_dir)
        env["WANDB_PROJECT"] = "tunelab"
    if "trackio" in names:
        env["TRACKIO_PROJECT"] = "tunelab"
    return {k: v for k, v in env.items() if k not in os.environ}


@contextmanager
def tracker_environment(names: Sequence[str], run_dir: Path) -> Iterator[None]:
    """Set those variables while the Trainer is built and trains, then put the environment back."""
    env = tracker_environment_for(names, run_dir)
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
