"""The model-kind table: each kind loads what plain transformers loads, with the head sized by labels."""

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tunelab.models.kinds import MODEL_KINDS, is_decoder_classifier
from tunelab.models.loading import load_model, load_tokenizer


def test_causal_lm_loads_like_transformers(tiny_model):
    ids = torch.tensor([[3, 14, 15, 92]])
    ours = load_model(tiny_model, "causal_lm").eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_classifier_head_is_sized_and_named_by_labels(tiny_model):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model, "seq_cls", labels=["neg", "pos", "mixed"], pad_token_id=tok.pad_token_id)
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    assert type(model) is type(plain) and model.config.num_labels == 3
    assert model.config.id2label == {0: "neg", 1: "pos", 2: "mixed"} and model.config.pad_token_id == tok.pad_token_id
    assert is_decoder_classifier(model)


def test_collators_follow_the_kind(tiny_model):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, DataCollatorWithPadding

    tok = load_tokenizer(tiny_model)
    lm, cls = MODEL_KINDS["causal_lm"], MODEL_KINDS["seq_cls"]
    assert isinstance(lm.collator(tok, padding_free=True), DataCollatorWithFlattening)
    assert isinstance(lm.collator(tok, padding_free=False), DataCollatorForSeq2Seq)
    assert isinstance(cls.collator(tok, padding_free=True), DataCollatorWithPadding)  # classifiers never pack
    assert lm.head_kwargs(["a", "b"], 0) == {}
