"""Full fine-tuning: every parameter trains; the whole model is saved."""

from __future__ import annotations

from typing import Any

from tunelab.methods.base import Method, load_whole_model


def apply(model: Any, options: Any, kind: Any) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


METHOD = Method(
    name="full",
    summary="retrain all parameters",
    options=None,
    apply=apply,
    load=load_whole_model,
    weights_dir="model",
    saves_whole_model=True,
    training_defaults={"lr": 1e-4},
)
