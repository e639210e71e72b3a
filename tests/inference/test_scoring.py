"""The one scorer's teacher-forced NLL equals a plain per-row forward and cross-entropy (tiny model,
plain, with LoRA and with a virtual-token adapter), also when the rows share a prefix that runs once."""

from __future__ import annotations

import functools

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny_model):
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(1)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))  # fmt: skip
    prompt = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                            PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))  # fmt: skip
    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    return tok, {"plain": plain.eval(), "lora": lora.eval(), "prompt": prompt.eval()}


def plain_nll(model, row):
    """One row, no padding, no cache: the model's logits and torch's cross-entropy."""
    import torch

    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -ids.shape[1] :].float()
    labels = torch.tensor(row["labels"][1:])
    keep = labels != -100
    nll = torch.nn.functional.cross_entropy(logits[:-1][keep], labels[keep], reduction="sum")
    return float(nll), int(keep.sum())


@pytest.mark.parametrize("which", ["plain", "lora", "prompt"])
def test_sequence_nll_equals_plain_forward(models, which: str) -> None:
    from tunelab.inference.scoring import sequence_nll

    tok, all_models = models
    model = all_models[which]
    system = tok("You are a careful assistant. Answer briefly.")["input_ids"]  # every row starts with it
    rows = []
    for q, a in [("Why is the sky blue?", "Light scatters."), ("Name a sea.", "The North Sea."),
                 ("Two plus two?", "Four, of course, and always four."), ("Hi", "Hello")]:  # fmt: skip
        prompt, answer = system + tok(q)["input_ids"], tok(a)["input_ids"]
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    # a row scored from its second token on: the shared prefix may not swallow a scored position
    rows.append({"input_ids": system[:3] + [5, 6], "labels": [-100, *system[1:3], 5, 6]})
    batches = []
    real_forward = model.forward

    @functools.wraps(real_forward)  # keeps the signature the scorer inspects
    def forward(*args, **kwargs):
        batches.append(tuple(kwargs["input_ids"].shape))
        return real_forward(*args, **kwargs)

    model.forward = forward
    try:
        ours = sequence_nll(model, tok, rows[:4], batch_size=8) + sequence_nll(model, tok, rows[4:] + rows[:1])[:1]
    finally:
        del model.forward
    if which != "prompt":  # the system prompt ran once, as one row; then the rest of each row
        assert batches[0] == (1, len(system)) and batches[1][0] == 4, batches
    for (nll, n), row in zip(ours, rows, strict=True):
        ref_nll, ref_n = plain_nll(model, row)
        assert n == ref_n
        assert nll == pytest.approx(ref_nll, rel=1e-5, abs=1e-5)
    # and in batches of one row each (no shared prefix to speak of): the same numbers
    alone = sequence_nll(model, tok, rows, batch_size=1)
    assert [n for _, n in alone] == [n for _, n in ours]
    assert [v for v, _ in alone] == pytest.approx([v for v, _ in ours], rel=1e-5)
