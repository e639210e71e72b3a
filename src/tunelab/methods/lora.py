"""LoRA via peft: low-rank adapters beside frozen weights; saved as a peft `adapter/` directory."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.methods.base import Method, load_adapter


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, gt=0, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling numerator (update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="peft's default; 0.05 costs ~20% speed on CPU")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or module names, e.g. [q_proj, k_proj, v_proj, o_proj]"
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None


def peft_lora_config(options: LoraOptions, kind: Any, *, use_dora: bool = False) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        bias=options.bias,
        modules_to_save=options.modules_to_save,
        task_type=kind.peft_task_type,
        use_dora=use_dora,
    )


def apply(model: Any, options: LoraOptions, kind: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(options, kind))


METHOD = Method(
    name="lora",
    summary="low-rank adapters (peft LoRA) on frozen weights",
    options=LoraOptions,
    apply=apply,
    load=load_adapter,
    weights_dir="adapter",
    training_defaults={"lr": 5e-4},
)
