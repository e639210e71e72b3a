"""Frozen weights held in bf16 while training: the same loss and gradients as autocast's own casts,
bit for bit, and the fp32 weights back exactly afterwards."""

import pytest
import torch

from tunelab.methods.registry import METHODS
from tunelab.models.kinds import MODEL_KINDS
from tunelab.training.frozen_weights import frozen_weights_in
from tunelab.training.losses import response_only_loss
from tunelab.training.packed_attention import packed_attention

ROWS = [
    {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]},
    {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, 13, 14]},
    {"input_ids": [20, 21, 22, 23, 24], "labels": [-100, -100, -100, -100, 24]},
]


def adapted(tiny_model, method):
    from tunelab.models.loading import load_model

    torch.manual_seed(0)
    options = METHODS[method].options() if METHODS[method].options is not None else None
    return METHODS[method].apply(load_model(tiny_model, "causal_lm"), options, MODEL_KINDS["causal_lm"])


def loss_and_grads(model, batch):
    model.zero_grad()
    with packed_attention(model), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = response_only_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt"])
def test_same_loss_and_gradients_as_autocast_casting_fp32_weights(tiny_model, method, one_thread):
    model = adapted(tiny_model, method)
    model.train()
    packed = METHODS[method].packs_rows
    batch = MODEL_KINDS["causal_lm"].collator(None, padding_free=packed)(ROWS) if packed else None
    if batch is None:
        from tunelab.models.loading import load_tokenizer

        batch = MODEL_KINDS["causal_lm"].collator(load_tokenizer(tiny_model), padding_free=False)(ROWS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref_loss, ref_grads = loss_and_grads(model, batch)  # plain: fp32 weights, autocast casts them
    with frozen_weights_in(model, torch.bfloat16) as held:
        assert held > 0
        dtypes = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and "embed" not in n and p.dim() == 2}
        assert dtypes == {torch.bfloat16}
        # the tied LM head reads a bf16 copy; the input embedding it shares a weight with stays fp32
        assert model.get_input_embeddings().weight.dtype == torch.float32
        assert model.get_output_embeddings().weight.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        loss, grads = loss_and_grads(model, batch)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name
    # every weight is back in fp32 with its exact value, and the head tied to the embedding again
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for name, p in model.named_parameters():
        assert p.dtype == before[name].dtype and torch.equal(p.detach(), before[name]), name


def test_weights_that_bf16_holds_exactly_are_cast_back_and_nothing_is_kept(tiny_model, monkeypatch):
    model = adapted(tiny_model, "lora")
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    layer.weight.data = layer.weight.data.to(torch.bfloat16).float()  # as a bf16 checkpoint loaded in fp32
    exact = layer.weight.detach().clone()
    with frozen_weights_in(model, torch.bfloat16):
        held = layer.weight.data
    assert held.dtype == torch.bfloat16
    assert torch.equal(layer.weight.detach(), exact)


def test_nothing_is_held_in_fp32_or_for_methods_that_read_the_base_weight(tiny_model):
    model = adapted(tiny_model, "lora")
    with frozen_weights_in(model, None) as held:
        assert held == 0
    assert not METHODS["dora"].frozen_weights_in_half
    full = adapted(tiny_model, "full")
    with frozen_weights_in(full, torch.bfloat16) as held:
        assert held == 0  # nothing is frozen
