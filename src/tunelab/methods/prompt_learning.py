"""Prompt-learning methods (peft): trainable virtual tokens in front of every input, base frozen.

- prompt: prompt tuning — virtual token embeddings, optionally initialised from a text;
- ptuning: P-tuning — virtual tokens produced by a small prompt encoder (MLP or LSTM);
- prefix: prefix tuning — trainable key/value prefixes in every attention layer.

They share their mechanism, so they live in one module as three registry entries. Virtual tokens
are per row, so these methods train on padded batches (no row packing) and full-sequence logits.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.methods.base import Method, load_adapter


class PromptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_virtual_tokens: int = Field(20, gt=0)
    init_text: str | None = Field(None, description="initialise the virtual tokens from this text (else random)")


class PtuningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_virtual_tokens: int = Field(20, gt=0)
    encoder_hidden_size: int = Field(128, gt=0)
    encoder_type: Literal["MLP", "LSTM"] = "MLP"


class PrefixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_virtual_tokens: int = Field(20, gt=0)
    prefix_projection: bool = Field(False, description="reparameterise the prefix through an MLP")
    encoder_hidden_size: int = Field(128, gt=0)


def _peft_config(options: Any, kind: Any, model_path: str) -> Any:
    """The peft prompt-learning config for one method's options (each option maps onto peft's name)."""
    import peft

    common = {"task_type": kind.peft_task_type, "num_virtual_tokens": options.num_virtual_tokens}
    if isinstance(options, PromptOptions):
        if not options.init_text:
            return peft.PromptTuningConfig(**common)
        # peft tokenizes the init text with the model's own tokenizer
        return peft.PromptTuningConfig(**common, prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                       prompt_tuning_init_text=options.init_text, tokenizer_name_or_path=model_path)
    if isinstance(options, PtuningOptions):
        return peft.PromptEncoderConfig(**common, encoder_hidden_size=options.encoder_hidden_size,
                                        encoder_reparameterization_type=options.encoder_type)  # fmt: skip
    return peft.PrefixTuningConfig(**common, prefix_projection=options.prefix_projection,
                                   encoder_hidden_size=options.encoder_hidden_size)  # fmt: skip


def _apply(model: Any, options: Any, kind: Any) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, _peft_config(options, kind, model.config._name_or_path))


def _method(name: str, summary: str, options: type[BaseModel]) -> Method:
    return Method(name=name, summary=summary, options=options, apply=_apply, load=load_adapter, weights_dir="adapter",
                  virtual_tokens=True, mergeable=False)  # fmt: skip


PROMPT = _method("prompt", "prompt tuning: trainable virtual token embeddings", PromptOptions)
PTUNING = _method("ptuning", "P-tuning: virtual tokens from a prompt encoder", PtuningOptions)
PREFIX = _method("prefix", "prefix tuning: trainable attention key/value prefixes", PrefixOptions)
