"""Full fine-tuning: every parameter trains; the whole model is saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.methods.base import Method


def apply(model: Any, options: Any, task: Any) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def load(base_model: Any, weights_dir: Path, task: Any) -> Any:
    # the saved directory is a complete model: load it instead of the base
    return task.load_model(weights_dir, dtype=base_model.dtype)


METHOD = Method(
    name="full",
    summary="retrain all parameters",
    options=None,
    apply=apply,
    load=load,
    weights_dir="model",
)
