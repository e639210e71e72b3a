"""The shrinking greedy loop gives exactly what `model.generate` gives (tiny model, plain and with LoRA)."""

from __future__ import annotations

import pytest

import tunelab.inference.generation as G

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model)
    texts = [f"What colour is the {w} number {i}?" * (1 + i % 3) for i, w in enumerate(["sky", "sun", "sea", "plum"] * 5)]
    prompts = [tok(t)["input_ids"] for t in texts]
    plain = load_model(tiny_model, "causal_lm")
    torch.manual_seed(1)
    lora = get_peft_model(load_model(tiny_model, "causal_lm"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return tok, prompts, plain, lora


@pytest.mark.parametrize("which", ["plain", "lora"])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 20])
def test_shrinking_loop_equals_generate(model_and_prompts, monkeypatch, which: str, batch_size: int) -> None:
    tok, prompts, plain, lora = model_and_prompts
    model = plain if which == "plain" else lora
    assert G._supports_shrinking(model)
    fast = G.generate_from_ids(model, tok, prompts, max_new_tokens=10, batch_size=batch_size, show_progress=False)
    monkeypatch.setattr(G, "_supports_shrinking", lambda m: False)
    slow = G.generate_from_ids(model, tok, prompts, max_new_tokens=10, batch_size=batch_size, show_progress=False)
    assert [(o.text, o.new_tokens, o.hit_limit) for o in fast] == [(o.text, o.new_tokens, o.hit_limit) for o in slow]


def test_rows_leave_the_batch_when_done(model_and_prompts, monkeypatch) -> None:
    """An EOS at a chosen step: that row stops there, and the others keep going to the limit."""
    import torch

    tok, prompts, plain, _ = model_and_prompts
    eos = tok.eos_token_id
    calls = []
    real_forward = plain.forward

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 3:  # third forward: row 0 of the batch says EOS
            logits = out.logits.clone()
            logits[0, -1, :] = -1e9
            logits[0, -1, eos] = 0
            out.logits = logits
        return out

    monkeypatch.setattr(plain, "forward", forward)
    batch = prompts[:4]
    width = max(len(p) for p in batch)
    ids = torch.full((4, width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(batch):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    out = G._greedy_shrinking(plain, ids, mask, 6, eos)
    assert out[0][-1] == eos and len(out[0]) == 3
    assert all(len(row) == 6 or row[-1] == eos for row in out[1:])
    assert calls[0] == 4 and len(calls) <= 6
