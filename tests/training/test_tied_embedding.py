"""The tied embedding's sparse lookup gradient against plain transformers' dense backward."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def _llama(tied: bool, seed: int = 0):  # noqa: ANN202
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    return LlamaForCausalLM(config).float()


def _grads(model, batches, sparse: bool):  # noqa: ANN001, ANN202
    from tunelab.training.tied_embedding import sparse_tied_embedding_grad

    model.zero_grad(set_to_none=True)
    with sparse_tied_embedding_grad(model, enabled=sparse) as used:
        for ids, labels in batches:  # gradient accumulation: several backwards into one .grad
            model(input_ids=ids, labels=labels).loss.backward()
    return used, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sparse_lookup_gradient_equals_the_dense_backward():
    import torch

    model = _llama(tied=True)
    ids = [torch.randint(0, 300, (2, 24)), torch.randint(0, 300, (1, 40))]
    ids[0][0, :6] = ids[0][1, :6]  # a token read several times
    batches = [(i, i.clone()) for i in ids]
    _, dense = _grads(model, batches, sparse=False)
    used, sparse = _grads(model, batches, sparse=True)
    assert used and dense.keys() == sparse.keys()
    weight = "model.embed_tokens.weight"
    assert not sparse[weight].is_sparse and sparse[weight].shape == (300, 32)
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-6, atol=1e-7, msg=name)
    assert not model.get_input_embeddings().sparse  # put back after training


def test_only_a_tied_trained_embedding_looks_up_sparsely():
    from tunelab.training.tied_embedding import sparse_tied_embedding_grad

    untied = _llama(tied=False)
    with sparse_tied_embedding_grad(untied) as used:
        assert not used and not untied.get_input_embeddings().sparse
    frozen = _llama(tied=True)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    with sparse_tied_embedding_grad(frozen) as used:
        assert not used


def test_a_gradient_that_reaches_only_the_lookup_is_made_dense():
    """No position trained through the LM head: the weight's only gradient is the lookup's."""
    import torch

    from tunelab.training.tied_embedding import sparse_tied_embedding_grad

    model = _llama(tied=True)
    ids = torch.randint(0, 300, (1, 16))
    with sparse_tied_embedding_grad(model) as used:
        model.model(input_ids=ids).last_hidden_state.sum().backward()
    grad = model.get_input_embeddings().weight.grad
    assert used and not grad.is_sparse
    model.zero_grad(set_to_none=True)
    model.model(input_ids=ids).last_hidden_state.sum().backward()
    torch.testing.assert_close(grad, model.get_input_embeddings().weight.grad, rtol=1e-6, atol=1e-7)


def test_full_fine_tuning_trains_the_weights_the_dense_backward_trains(tiny_config, monkeypatch):
    """Through `tunelab train` (the tiny Llama ties its embedding): the same weights with the sparse
    lookup gradient as with it turned off, to float rounding."""
    from contextlib import contextmanager

    import torch
    from safetensors.torch import load_file

    import tunelab.training.tied_embedding as tied
    from tunelab import api

    weights, seen = {}, []
    real = tied.sparse_tied_embedding_grad
    for off in (False, True):

        @contextmanager
        def recorded(model, enabled=True, off=off):  # noqa: ANN001, ANN202
            with real(model, enabled=enabled and not off) as used:
                seen.append(used)
                yield used

        monkeypatch.setattr(tied, "sparse_tied_embedding_grad", recorded)
        cfg = tiny_config(name=f"off{off}", method="full", evaluation={"enabled": False},
                          training={"lr": 1e-3, "max_steps": 4, "grad_accum": 2, "eval_steps": None,
                                    "save_steps": None})  # fmt: skip
        folder = api.train(cfg).run_dir / "model"
        weights[off] = {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert seen == [True, False]  # sparse in the first run, dense in the second
    for key in weights[True]:
        torch.testing.assert_close(weights[False][key], weights[True][key], rtol=1e-5, atol=1e-6, msg=key)
