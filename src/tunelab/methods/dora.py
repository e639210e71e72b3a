"""DoRA: LoRA with the update split into magnitude and direction (peft `use_dora`)."""

from __future__ import annotations

from typing import Any

from tunelab.methods.base import Method, load_adapter
from tunelab.methods.lora import LoraOptions, check_modules, peft_lora_config


class DoraOptions(LoraOptions):
    pass


def apply(model: Any, options: DoraOptions, kind: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(options, kind, use_dora=True))


METHOD = Method(
    name="dora",
    summary="weight-decomposed low-rank adapters (peft DoRA)",
    options=DoraOptions,
    apply=apply,
    load=load_adapter,
    weights_dir="adapter",
    training_defaults={"lr": 5e-4},
    check_modules=check_modules,
    frozen_weights_in_half=False,
)
