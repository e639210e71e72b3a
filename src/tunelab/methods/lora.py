"""LoRA via peft: low-rank adapters beside frozen weights; saved as a peft `adapter/` directory."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.methods.base import Method, adaptable_layers, check_module_names, load_adapter


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    r: int = Field(8, gt=0, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling numerator (update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="peft's default; 0.05 costs ~20% speed on CPU")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or module names, e.g. [q_proj, k_proj, v_proj, o_proj]"
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, v: str | list[str]) -> str | list[str]:
        if not v or (isinstance(v, list) and not all(name.strip() for name in v)) or (isinstance(v, str) and not v.strip()):
            raise ValueError("names no module; expected 'all-linear', module names, e.g. [q_proj, v_proj], or a regex")
        return v


def check_modules(skeleton: Any, options: LoraOptions, kind: Any, section: str) -> None:
    """Before any weights load: every target (and module to save) names modules of the model that peft can adapt."""
    if options.target_modules != "all-linear":
        layers = adaptable_layers(("linear", "conv", "embedding", "attention"))
        check_module_names(skeleton(), options.target_modules, f"{section}.target_modules", layers=layers, what=section)
    if options.modules_to_save:
        check_module_names(skeleton(), options.modules_to_save, f"{section}.modules_to_save", layers=None, what=section)


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
    check_modules=check_modules,
)
