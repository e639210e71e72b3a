"""The loss table: each loss equals a plain cross-entropy computed by hand from full logits."""

import pytest
import torch

from tunelab.models.kinds import MODEL_KINDS
from tunelab.training.losses import LOSSES, classification_loss, loss_trainer, response_only_loss

make_collator = MODEL_KINDS["causal_lm"].collator


@pytest.fixture(scope="module")
def model_and_tok(tiny_model):
    from tunelab.models.loading import load_model, load_tokenizer

    return load_model(tiny_model, "causal_lm"), load_tokenizer(tiny_model)


def features():
    return [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]},
        {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, 13, 14]},
        {"input_ids": [20, 21, 22, 23, 24], "labels": [-100, -100, -100, -100, 24]},
    ]


@pytest.mark.parametrize("padding_free", [True, False])
def test_response_only_loss_equals_full_logits_loss(model_and_tok, padding_free):
    model, tok = model_and_tok
    batch = make_collator(tok, padding_free=padding_free)(features())
    with torch.no_grad():
        # reference: full logits, shifted mean cross-entropy over labelled positions
        kwargs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**kwargs, use_cache=False).logits
        ref = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
        )
        ours = response_only_loss(model, batch)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_padding_free_batch_equals_padded_batch(model_and_tok):
    model, tok = model_and_tok
    with torch.no_grad():
        a = response_only_loss(model, make_collator(tok, padding_free=True)(features()))
        b = response_only_loss(model, make_collator(tok, padding_free=False)(features()))
    assert a.item() == pytest.approx(b.item(), rel=1e-4)


def test_weighted_classification_loss_equals_hand_computed_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5]])
    labels = torch.tensor([0, 1, 1])
    weights = [3.0, 0.5]

    class Head(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None):
            return type("Out", (), {"logits": logits})()

    ours = classification_loss(Head(), {"input_ids": None, "labels": labels}, class_weights=weights)
    logp = torch.log_softmax(logits, dim=-1)
    w = torch.tensor([weights[y] for y in labels.tolist()])
    expected = -(w * logp[torch.arange(3), labels]).sum() / w.sum()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)


def test_plain_losses_use_the_models_own_and_virtual_tokens_cannot_slice():
    from transformers import Trainer

    assert loss_trainer("classification", sliced_logits=True) is Trainer  # no weights: the model's loss
    assert loss_trainer("classification", sliced_logits=True, options={"class_weights": [1.0, 2.0]}) is not Trainer
    assert loss_trainer("causal_lm", sliced_logits=False) is Trainer  # positions shifted by virtual tokens
    assert loss_trainer("causal_lm", sliced_logits=True) is not Trainer
    assert LOSSES["classification"].per_batch_mean and not LOSSES["causal_lm"].per_batch_mean
