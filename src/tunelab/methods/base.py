"""What every training method provides: its options, how to apply it to a model, how to load it back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    options: type[BaseModel] | None  # the method's own config section (`lora:`), None when it has no knobs
    apply: Callable[..., Any]  # (model, options, task) -> model ready to train
    load: Callable[..., Any]  # (base_model, weights_dir: Path, task) -> model with trained weights
    weights_dir: str  # where the trained weights go inside the run directory
    save: Callable[[Any, Path], None] | None = None  # default: model.save_pretrained(dir, safe_serialization=True)
    # the model's forward keeps token positions (not true for methods that prepend virtual tokens),
    # so logits can be computed for the trained positions only
    sliced_logits: bool = True
    # rows may be packed into one sequence; methods that prepend virtual tokens per row cannot be
    padding_free: bool = True
    # extra from_pretrained kwargs for the base model (e.g. 4-bit quantization): (options, precision) -> dict
    model_kwargs: Callable[[Any, str], dict[str, Any]] | None = None
    # whole model saved (full, freeze): the saved directory replaces the base at load time
    saves_whole_model: bool = False


def save_weights(method: Method, model: Any, directory: Path) -> None:
    """Save with safetensors only; never pickle."""
    if method.save is not None:
        method.save(model, directory)
    else:
        model.save_pretrained(directory, safe_serialization=True)


def load_adapter(base_model: Any, weights_dir: Path, task: Any) -> Any:
    """Any peft adapter (LoRA, DoRA, QLoRA, IA3, prompt methods) loads the same way."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(weights_dir))


def load_whole_model(base_model: Any, weights_dir: Path, task: Any) -> Any:
    """For methods that save a complete model: it is the base (see Method.saves_whole_model)."""
    return base_model
