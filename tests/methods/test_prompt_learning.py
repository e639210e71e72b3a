"""Prompt tuning initialised from a text starts from that text's token embeddings, as plain peft does."""

import torch


def test_init_text_gives_the_embeddings_plain_peft_gives(tiny_model):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.config import config_from_dict
    from tunelab.methods.registry import METHODS
    from tunelab.models.kinds import MODEL_KINDS

    cfg = config_from_dict({"data": {"train": "x.jsonl"}, "method": "prompt",
                            "prompt": {"num_virtual_tokens": 6, "init_text": "What colour is the sky"}})  # fmt: skip
    ours = METHODS["prompt"].apply(AutoModelForCausalLM.from_pretrained(tiny_model), cfg.method_options(),
                                   MODEL_KINDS["causal_lm"])  # fmt: skip
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=6, prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text="What colour is the sky", tokenizer_name_or_path=str(tiny_model)))  # fmt: skip
    a = ours.prompt_encoder["default"].embedding.weight
    b = plain.prompt_encoder["default"].embedding.weight
    assert torch.equal(a, b) and not torch.equal(a, torch.zeros_like(a))
