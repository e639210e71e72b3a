"""The one decoder gives exactly what plain `model.generate` gives (tiny model, plain, with LoRA and
with a virtual-token adapter), and its rows really leave the batch when they are done."""

from __future__ import annotations

import functools

import pytest

import tunelab.inference.decoding as D

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model):
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    texts = [f"What colour is the {w} number {i}?" * (1 + i % 3) for i, w in enumerate(["sky", "sun", "sea", "plum"] * 5)]
    prompts = [tok(t)["input_ids"] for t in texts]
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    torch.manual_seed(1)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    torch.manual_seed(2)
    prompt = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                            PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    return tok, prompts, {"plain": plain, "lora": lora, "prompt": prompt}


def plain_generate(model, tok, prompt, max_new_tokens):
    """One prompt at a time, no padding: transformers' own greedy decoding."""
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, len(prompt):].tolist()
    stopped = tok.eos_token_id in new
    new = new[: new.index(tok.eos_token_id)] if stopped else new
    return tok.decode(new, skip_special_tokens=True).strip(), len(new), not stopped


@pytest.mark.parametrize("which", ["plain", "lora", "prompt"])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 20])
def test_decoder_equals_plain_generate(model_and_prompts, which: str, batch_size: int) -> None:
    tok, prompts, models = model_and_prompts
    model = models[which]
    assert D.supports_shrinking(model) == (which != "prompt")
    ours = D.generate_from_ids(model, tok, prompts, max_new_tokens=10, batch_size=batch_size, show_progress=False)
    reference = [plain_generate(model, tok, p, 10) for p in prompts]
    assert [(o.text, o.new_tokens, o.hit_limit) for o in ours] == reference


def test_rows_leave_the_batch_when_done(model_and_prompts, monkeypatch) -> None:
    """An EOS at a chosen step: that row stops there, the others go on to the limit, and the forwards
    after it run on fewer rows (the KV cache drops the finished row)."""
    tok, prompts, models = model_and_prompts
    plain = models["plain"]
    eos = tok.eos_token_id
    calls = []
    real_forward = plain.forward

    @functools.wraps(real_forward)  # keeps the signature the decoder inspects
    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 4:  # third forward after the shared prefix's: the first row of the batch says EOS
            logits = out.logits.clone()
            logits[0, -1, :] = -1e9
            logits[0, -1, eos] = 0
            out.logits = logits
        return out

    monkeypatch.setattr(plain, "forward", forward)
    batch = prompts[:4]
    rows = [D.Sequence(p, D.SamplingOptions(max_new_tokens=6)) for p in batch]
    assert D.supports_shrinking(plain)
    assert D.common_prefix_length(batch) >= D._MIN_SHARED_PREFIX  # "What colour is the": run once, for all rows
    D.decode(plain, tok, rows, batch_size=4)
    first = max(range(4), key=lambda i: len(batch[i]))  # the decoder orders rows longest first
    assert rows[first].finish_reason == "stop" and len(rows[first].token_ids) == 2
    assert all(r.finish_reason == "length" and len(r.token_ids) == 6 for i, r in enumerate(rows) if i != first)
    # the shared prefix (one row), the rest of the prompts, two steps; then the finished row left the batch
    assert calls == [1, 4, 4, 4, 3, 3, 3], calls


def test_common_prefix_length() -> None:
    assert D.common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert D.common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 3
    assert D.common_prefix_length([[7, 2], [1, 2]]) == 0


def test_rows_ride_along_where_cpu_batches_are_cheaper() -> None:
    """On CPU a batch shrinks only to >= 16 rows or <= 3 rows (measured: 4-15 rows cost about as much
    as that many single rows); on other devices it always shrinks."""
    assert D._shrink_to(20, 24, "cpu") and D._shrink_to(3, 10, "cpu")
    assert not D._shrink_to(8, 10, "cpu") and not D._shrink_to(5, 5, "cuda")
    assert D._shrink_to(8, 10, "cuda")


def test_virtual_token_models_decode_without_padding() -> None:
    """peft's generate ignores position ids, so left padding would shift a prompt-tuned model's positions:
    such rows are batched only with rows of the same length."""
    rows = [D.Sequence([1] * n, D.SamplingOptions()) for n in (5, 5, 5, 4, 4, 3)]
    order = list(range(6))
    assert [D._same_length(rows, order, s, 16) for s in (0, 3, 5)] == [3, 2, 1]
    assert D._same_length(rows, order, 0, 2) == 2
