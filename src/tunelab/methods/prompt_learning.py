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
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_virtual_tokens: int = Field(20, gt=0)
    init_text: str | None = Field(None, description="initialise the virtual tokens from this text's embeddings")
    # peft's own default, N(0, 1) vectors, sits far from every real token embedding (SmolLM2's have a
    # scale near 0.1) and learned a third as well on the chatterbot-topics check (benchmarks/learning.py)
    init: Literal["vocab", "random"] = Field(
        "vocab", description="without init_text: embeddings of random vocabulary tokens, or peft's N(0, 1)"
    )


class PtuningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_virtual_tokens: int = Field(20, gt=0)
    encoder_hidden_size: int = Field(128, gt=0)
    encoder_type: Literal["MLP", "LSTM"] = "MLP"


class PrefixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_virtual_tokens: int = Field(20, gt=0)
    prefix_projection: bool = Field(False, description="reparameterise the prefix through an MLP")
    encoder_hidden_size: int = Field(128, gt=0)
    # peft starts the prefix's keys and values as N(0, 1) noise: on Shakespeare that made a 30-step
    # run's perplexity 2.6× worse than the untrained model's; real tokens' keys and values do not
    init: Literal["vocab", "random"] = Field(
        "vocab", description="start from the keys/values of random vocabulary tokens (decoders), or peft's N(0, 1)"
    )


def _peft_config(options: Any, kind: Any, model_path: str) -> Any:
    """The peft prompt-learning config for one method's options (each option maps onto peft's name)."""
    import peft

    common = {"task_type": kind.peft_task_type, "num_virtual_tokens": options.num_virtual_tokens}
    if isinstance(options, PromptOptions):
        if not options.init_text:
            init = peft.PromptTuningInit.SAMPLE_VOCAB if options.init == "vocab" else peft.PromptTuningInit.RANDOM
            return peft.PromptTuningConfig(**common, prompt_tuning_init=init)
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

    peft_model = get_peft_model(model, _peft_config(options, kind, model.config._name_or_path))
    if isinstance(options, PrefixOptions) and options.init == "vocab" and not options.prefix_projection:
        _prefix_from_vocabulary(peft_model)
    return peft_model


def _prefix_from_vocabulary(model: Any) -> None:
    """Set the prefix to the keys and values the base computes for random vocabulary tokens (the
    prefix-tuning paper's initialisation from real words' activations), in peft's layout: a row per
    virtual token of [layer 0 key, layer 0 value, layer 1 key, …], each heads × head_dim.
    Encoders (no KV cache) keep peft's initialisation."""
    import torch

    config = model.peft_config[model.active_adapter]
    base = model.get_base_model()
    embedding = model.prompt_encoder[model.active_adapter].embedding
    ids = torch.randint(0, base.config.vocab_size, (1, config.num_virtual_tokens), device=embedding.weight.device)
    with torch.no_grad():
        cache = getattr(base(input_ids=ids, use_cache=True), "past_key_values", None)
    if cache is None or not hasattr(cache, "layers") or len(cache.layers) != config.num_layers:
        return
    kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]  # each (1, heads, tokens, head_dim)
    if any(t.shape[1] * t.shape[3] != config.token_dim for t in kv):
        return
    rows = torch.stack([t[0] for t in kv]).permute(2, 0, 1, 3).reshape(config.num_virtual_tokens, -1)
    with torch.no_grad():
        embedding.weight.copy_(rows.to(embedding.weight.dtype))


def _method(name: str, summary: str, options: type[BaseModel], lr: float) -> Method:
    return Method(name=name, summary=summary, options=options, apply=_apply, load=load_adapter, weights_dir="adapter",
                  virtual_tokens=True, mergeable=False, training_defaults={"lr": lr})  # fmt: skip


PROMPT = _method("prompt", "prompt tuning: trainable virtual token embeddings", PromptOptions, lr=3e-2)
PTUNING = _method("ptuning", "P-tuning: virtual tokens from a prompt encoder", PtuningOptions, lr=1e-2)
PREFIX = _method("prefix", "prefix tuning: trainable attention key/value prefixes", PrefixOptions, lr=3e-2)
