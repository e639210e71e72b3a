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


def _apply_prompt(model: Any, options: PromptOptions, kind: Any) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    kwargs: dict[str, Any] = {}
    if options.init_text:
        kwargs = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": options.init_text,
            "tokenizer_name_or_path": model.config._name_or_path,
        }
    config = PromptTuningConfig(task_type=kind.peft_task_type, num_virtual_tokens=options.num_virtual_tokens, **kwargs)
    return get_peft_model(model, config)


def _apply_ptuning(model: Any, options: PtuningOptions, kind: Any) -> Any:
    from peft import PromptEncoderConfig, get_peft_model

    config = PromptEncoderConfig(
        task_type=kind.peft_task_type,
        num_virtual_tokens=options.num_virtual_tokens,
        encoder_hidden_size=options.encoder_hidden_size,
        encoder_reparameterization_type=options.encoder_type,
    )
    return get_peft_model(model, config)


def _apply_prefix(model: Any, options: PrefixOptions, kind: Any) -> Any:
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        task_type=kind.peft_task_type,
        num_virtual_tokens=options.num_virtual_tokens,
        prefix_projection=options.prefix_projection,
        encoder_hidden_size=options.encoder_hidden_size,
    )
    return get_peft_model(model, config)


def _method(name: str, summary: str, options: type[BaseModel], apply: Any) -> Method:
    return Method(
        name=name,
        summary=summary,
        options=options,
        apply=apply,
        load=load_adapter,
        weights_dir="adapter",
        virtual_tokens=True,
        mergeable=False,
    )


PROMPT = _method("prompt", "prompt tuning: trainable virtual token embeddings", PromptOptions, _apply_prompt)
PTUNING = _method("ptuning", "P-tuning: virtual tokens from a prompt encoder", PtuningOptions, _apply_ptuning)
PREFIX = _method("prefix", "prefix tuning: trainable attention key/value prefixes", PrefixOptions, _apply_prefix)
