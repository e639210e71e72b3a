"""Transfer learning: freeze the backbone; train the task head, optionally the last N layers and
named modules. Saves the whole model (the trained part is small, but a plain HF directory is what
every downstream tool reads)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.methods.base import Method, check_module_names, load_whole_model


class FreezeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    trainable_layers: int = Field(2, ge=0, description="also train the last N transformer layers")
    train_head: bool = Field(True, description="train the task head (lm_head / classifier)")
    modules: list[str] = Field(default_factory=list, description="extra module-name substrings to train, e.g. [norm]")


def layer_stack(model: Any) -> list[Any]:
    """The transformer blocks: the longest nn.ModuleList in the model (model.layers, encoder.layer …)."""
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(stacks, key=len)) if stacks else []


def check_modules(skeleton: Any, options: FreezeOptions, kind: Any, section: str = "freeze") -> None:
    """Before any weights load (on the meta-device skeleton): the layers and modules the options name
    exist, and something is left to train (`apply` checks the same on the loaded model)."""
    if not options.trainable_layers and not options.modules and not options.train_head:
        raise TunelabError("nothing left to train", field=section, expected="trainable_layers > 0, train_head, or modules")
    model = skeleton()
    if model is None:
        return
    layers = layer_stack(model)
    if options.trainable_layers > len(layers):
        raise TunelabError(
            f"trainable_layers is {options.trainable_layers} but the model has {len(layers)} layers",
            field=f"{section}.trainable_layers",
            expected=f"at most {len(layers)}",
        )
    check_module_names(model, list(options.modules), f"{section}.modules", layers=None, what=section)


def apply(model: Any, options: FreezeOptions, kind: Any) -> Any:
    for p in model.parameters():
        p.requires_grad_(False)
    layers = layer_stack(model)
    if options.trainable_layers > len(layers):
        raise TunelabError(
            f"trainable_layers is {options.trainable_layers} but the model has {len(layers)} layers",
            field="freeze.trainable_layers",
            expected=f"at most {len(layers)}",
        )
    for layer in layers[len(layers) - options.trainable_layers :] if options.trainable_layers else []:
        for p in layer.parameters():
            p.requires_grad_(True)
    names = list(options.modules) + (list(kind.head_modules) if options.train_head else [])
    matched = set()
    for name, module in model.named_modules():
        for wanted in names:
            if name == wanted or name.endswith("." + wanted):
                matched.add(wanted)
                for p in module.parameters():
                    p.requires_grad_(True)
    missing = [m for m in options.modules if m not in matched]
    if missing:
        raise TunelabError(
            f"no module named {missing[0]!r} in the model", field="freeze.modules", expected="module names as in model.named_modules()"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise TunelabError("nothing left to train", field="freeze", expected="trainable_layers > 0, train_head, or modules")
    return model


METHOD = Method(
    name="freeze",
    summary="transfer learning: frozen backbone, train the head (+ last N layers)",
    options=FreezeOptions,
    apply=apply,
    load=load_whole_model,
    weights_dir="model",
    saves_whole_model=True,
    training_defaults={"lr": 3e-4},
    check_modules=check_modules,
)
