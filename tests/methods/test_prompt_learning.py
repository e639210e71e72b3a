"""Prompt-learning initialisations: from a text, as plain peft does; from random vocabulary tokens (prompt
tuning: their embeddings; prefix tuning: the keys and values the base computes for them)."""

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


def _apply(tiny_model, method, options, monkeypatch=None, ids=None):
    from transformers import AutoModelForCausalLM

    from tunelab.config import config_from_dict
    from tunelab.methods.registry import METHODS
    from tunelab.models.kinds import MODEL_KINDS

    cfg = config_from_dict({"data": {"train": "x.jsonl"}, "method": method, method: options})
    if ids is not None:  # the "random" vocabulary tokens, fixed so the test knows them
        monkeypatch.setattr(torch, "randint", lambda *a, **k: ids)
    return METHODS[method].apply(AutoModelForCausalLM.from_pretrained(tiny_model), cfg.method_options(),
                                 MODEL_KINDS["causal_lm"])  # fmt: skip


def test_prefix_starts_as_the_keys_and_values_of_real_tokens(tiny_model, monkeypatch):
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    model = _apply(tiny_model, "prefix", {"num_virtual_tokens": 5}, monkeypatch, ids)
    with torch.no_grad():  # the reference: the base model's own KV cache for those tokens
        cache = model.get_base_model()(input_ids=ids, use_cache=True).past_key_values
    prefix = model.get_prompt(batch_size=1)  # what peft feeds the model as the prefix
    for ours, real in zip(prefix.layers, cache.layers, strict=True):
        torch.testing.assert_close(ours.keys, real.keys)
        torch.testing.assert_close(ours.values, real.values)


def test_prompt_tuning_starts_from_vocabulary_embeddings_not_noise(tiny_model):
    model = _apply(tiny_model, "prompt", {"num_virtual_tokens": 8})
    prompt = model.prompt_encoder["default"].embedding.weight
    vocab = model.get_base_model().get_input_embeddings().weight
    assert all(any(torch.equal(row, v) for v in vocab) for row in prompt)
    noise = _apply(tiny_model, "prompt", {"num_virtual_tokens": 8, "init": "random"})
    assert not any(torch.equal(noise.prompt_encoder["default"].embedding.weight[0], v) for v in vocab)
