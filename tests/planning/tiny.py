"""Tiny random-weight decoders of each family (hidden 64 at most), built from transformers' config classes."""

from __future__ import annotations

from typing import Any

VOCAB = 300


def configs() -> dict[str, Any]:
    import transformers as T

    common = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128}  # fmt: skip
    return {
        "llama": T.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True),
        "llama_bias": T.LlamaConfig(**common, attention_bias=True, mlp_bias=True),
        "mistral": T.MistralConfig(**common, num_key_value_heads=2),
        "qwen2": T.Qwen2Config(**common, num_key_value_heads=2),
        "qwen3": T.Qwen3Config(**common, num_key_value_heads=2, head_dim=8),
        "gemma": T.GemmaConfig(**common, num_key_value_heads=2, head_dim=16),
        "phi3": T.Phi3Config(**common, num_key_value_heads=2, pad_token_id=0),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0,
                             eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0),
        "gpt2_dropout": T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0,
                                     eos_token_id=0),
        "gpt_neox": T.GPTNeoXConfig(**common, bos_token_id=0, eos_token_id=0),
        "olmo": T.OlmoConfig(**common, pad_token_id=0, bos_token_id=0, eos_token_id=0),  # no formulas: the skeleton
    }


def build(name: str, seed: int = 0) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(configs()[name], attn_implementation="sdpa")
