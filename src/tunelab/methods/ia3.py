"""IA3: learned rescaling vectors on keys, values and feed-forward activations (peft IA3)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.methods.base import Method, load_adapter


class Ia3Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_modules: list[str] | None = Field(None, description="None: peft's defaults for the architecture")
    feedforward_modules: list[str] | None = Field(None, description="subset of target_modules that are feed-forward")


def apply(model: Any, options: Ia3Options, kind: Any) -> Any:
    from peft import IA3Config, get_peft_model

    config = IA3Config(
        task_type=kind.peft_task_type,
        target_modules=options.target_modules,
        feedforward_modules=options.feedforward_modules,
    )
    return get_peft_model(model, config)


METHOD = Method(
    name="ia3",
    summary="learned activation scaling vectors (peft IA3)",
    options=Ia3Options,
    apply=apply,
    load=load_adapter,
    weights_dir="adapter",
    training_defaults={"lr": 1e-2},
)
