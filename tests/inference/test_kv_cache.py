"""The reserved KV cache gives attention exactly the keys and values transformers' own cache gives:
bit-identical logits over a prefill, decoding steps, dropped rows and repeated rows."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reserved_cache_equals_dynamic_cache(tiny_model) -> None:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from tunelab.inference.kv_cache import ReservedLayer, reserved_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    torch.manual_seed(0)
    prompt = torch.randint(3, model.config.vocab_size, (1, 7))
    room = 4  # less room than the steps below: the last steps fall back to concatenation
    ours, plain = reserved_cache(model, room), DynamicCache(config=model.config)
    assert all(isinstance(layer, ReservedLayer) for layer in ours.layers)

    def step(cache, ids, mask):
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits

    mask = torch.ones(1, 7, dtype=torch.long)
    assert torch.equal(step(ours, prompt, mask), step(plain, prompt, mask))
    for cache in (ours, plain):
        cache.batch_repeat_interleave(3)  # one shared prefix → three rows
    tokens = torch.randint(3, model.config.vocab_size, (3, 1))
    mask = torch.ones(3, 8, dtype=torch.long)
    for i in range(6):
        if i == 2:  # a finished row leaves the batch
            for cache in (ours, plain):
                cache.batch_select_indices(torch.tensor([0, 2]))
            tokens, mask = tokens[[0, 2]], mask[[0, 2]]
        a, b = step(ours, tokens, mask), step(plain, tokens, mask)
        assert torch.equal(a, b), f"step {i}"
        tokens = a[:, -1:].argmax(-1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    assert ours.get_seq_length() == plain.get_seq_length() == 7 + 6
    assert ours.layers[0].buffers is None  # ran out of room on the way, and said so by concatenating
