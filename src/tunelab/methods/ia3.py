"""IA3: learned rescaling vectors on keys, values and feed-forward activations (peft IA3)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.errors import TunelabError
from tunelab.methods.base import Method, adaptable_layers, check_module_names, load_adapter


class Ia3Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    target_modules: list[str] | None = Field(None, description="None: peft's defaults for the architecture")
    feedforward_modules: list[str] | None = Field(None, description="subset of target_modules that are feed-forward")

    @model_validator(mode="after")
    def _feedforward_among_targets(self) -> Ia3Options:
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules is an empty list; expected module names, or no list (peft's defaults)")
        if self.feedforward_modules and self.target_modules is not None:
            extra = [m for m in self.feedforward_modules if m not in self.target_modules]
            if extra:
                raise ValueError(f"feedforward_modules entry {extra[0]!r} is not in target_modules (peft requires "
                                 "feed-forward modules to be targets too)")  # fmt: skip
        return self


def check_modules(skeleton: Any, options: Ia3Options, kind: Any, section: str) -> None:
    """Before any weights load: the targets name linear/conv layers of the model, or peft has defaults for it."""
    model = skeleton()
    if model is None:
        return
    layers = adaptable_layers(("linear", "conv"))
    if options.target_modules is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as DEFAULTS

        model_type = getattr(model.config, "model_type", None)
        if model_type not in DEFAULTS:
            raise TunelabError(f"peft has no default IA3 modules for model type {model_type!r}",
                               field=f"{section}.target_modules", expected="target_modules (and feedforward_modules) "
                               "naming the model's linear layers")  # fmt: skip
    check_module_names(model, options.target_modules, f"{section}.target_modules", layers=layers, what=section)
    check_module_names(model, options.feedforward_modules, f"{section}.feedforward_modules", layers=layers, what=section)


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
    check_modules=check_modules,
)
