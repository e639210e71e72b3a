import pytest
import torch

from tunelab.training.trainer import choose_precision, make_collator, response_only_loss, training_arguments


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


def test_precision_choice_respects_request():
    assert choose_precision("fp32") == "fp32"
    assert choose_precision("auto") in ("bf16", "fp32", "fp16")


def test_training_arguments_align_save_with_eval(tmp_path):
    from tunelab.config import config_from_dict

    cfg = config_from_dict(
        {"data": {"train": "x.jsonl"}, "training": {"eval_steps": 10, "save_steps": 25, "max_steps": 50}}
    )
    args = training_arguments(cfg, tmp_path, "fp32", has_eval=True, n_train=100)
    assert args.save_steps == 10 and args.load_best_model_at_end and args.eval_strategy == "steps"
    args = training_arguments(cfg, tmp_path, "fp32", has_eval=False, n_train=100)
    assert args.eval_strategy == "no" and not args.load_best_model_at_end
