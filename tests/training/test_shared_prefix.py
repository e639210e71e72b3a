import pytest
import torch

from tunelab.models.kinds import MODEL_KINDS
from tunelab.training import packed_attention as packed_attention_module
from tunelab.training.packed_attention import packed_attention, sharing_collator
from tunelab.training.shared_prefix import SharedPrefixCollator, row_tokens, rows, shared_length
from tunelab.training.trainer import batch_tokens

flattening = MODEL_KINDS["causal_lm"].collator

PREFIX = [5, 6, 7, 8, 9, 10]  # a "system prompt" every row starts with


def shared_rows():
    return [
        {"input_ids": [*PREFIX, 11, 12, 13, 14], "labels": [-100] * 8 + [13, 14]},
        {"input_ids": [*PREFIX, 15, 16, 17], "labels": [-100] * 7 + [16, 17]},
        {"input_ids": [*PREFIX, 18, 19, 20, 21, 22, 23], "labels": [-100] * 9 + [21, 22, 23]},
        {"input_ids": [*PREFIX, 11, 25], "labels": [-100] * 7 + [25]},
    ]


@pytest.fixture()
def model_and_tok(tiny_model):
    from tunelab.models.loading import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(tiny_model, "causal_lm"), load_tokenizer(tiny_model)


def test_the_shared_length_stops_before_any_label_and_keeps_a_token_per_row():
    ids = [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 4, 5, 7]]
    assert shared_length(ids, [[-100] * 5, [-100] * 5, [-100] * 6]) == 4  # the last row keeps token 5
    assert shared_length(ids, [[-100, -100, -100, 4, 5], [-100] * 5, [-100] * 6]) == 2  # label at 3: share 0..1
    assert shared_length(ids, [list(r) for r in ids]) == 0  # every token trained (no labels): nothing shared
    assert shared_length(ids[:1], [[-100] * 5]) == 0  # one row: nothing to share with
    assert shared_length([[1, 2, 3], [1, 2, 3]], [[-100] * 3] * 2) == 2  # duplicates keep their last token


def test_the_collator_writes_each_row_once_and_the_layout_reads_it_back():
    plain = flattening(None, padding_free=True)
    batch = SharedPrefixCollator(plain)(shared_rows())
    lengths = [len(r["input_ids"]) for r in shared_rows()]
    # shared: the common prefix [5..10, ...]: rows 1 and 4 share 11 too, but row 2 and 3 do not, so 6
    assert batch["input_ids"].shape[1] == lengths[0] + sum(n - 6 for n in lengths[1:])
    assert batch["position_ids"][0].tolist() == [*range(10), *range(6, 9), *range(6, 12), *range(6, 8)]
    found = rows(batch["position_ids"])
    assert [(r.start, r.end, r.shared, r.base) for r in found] == [(0, 10, 0, 0), (10, 13, 6, 0), (13, 19, 6, 0),
                                                                  (19, 21, 6, 0)]  # fmt: skip
    assert [r.length for r in found] == lengths
    # what the Trainer counts and what trains: every row's tokens, the same labels as without sharing
    unshared = plain(shared_rows())
    assert row_tokens(batch["position_ids"]) == batch_tokens(batch) == batch_tokens(unshared) == sum(lengths)
    assert sorted(t for t in batch["labels"][0].tolist() if t != -100) == sorted(
        t for t in unshared["labels"][0].tolist() if t != -100)  # fmt: skip
    # too short a prefix, or a label inside it: the plain flattening
    short = [{"input_ids": [5, 6, 7, 1], "labels": [-100] * 4}, {"input_ids": [5, 6, 7, 2], "labels": [-100] * 4}]
    assert SharedPrefixCollator(plain)(short)["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def per_row_reference(model, features):
    """Plain transformers, one row at a time, summed token NLL over all rows ÷ trained tokens: no packing."""
    model.zero_grad()
    total, count = 0.0, 0
    for f in features:
        ids, labels = torch.tensor([f["input_ids"]]), torch.tensor([f["labels"]])
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        target = labels[0, 1:]
        total = total + torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        count += int((target != -100).sum())
    loss = total / count
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def packed_loss(model, batch):
    model.zero_grad()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("path", ["one group, weights kept", "weights recomputed", "a group per row, one alone",
                                  "row by row"])  # fmt: skip
def test_a_shared_prefix_gives_each_row_alones_loss_and_gradients(model_and_tok, monkeypatch, path):
    """Against plain transformers on each row alone (fp32): the same loss and gradients on every path the
    packed attention can take with shared keys."""
    model, tok = model_and_tok
    heads = model.config.num_attention_heads
    if path == "weights recomputed":
        monkeypatch.setattr(packed_attention_module, "KEPT_SCORES_LIMIT", 0)
    if path.startswith("a group per row"):
        monkeypatch.setattr(packed_attention_module, "GROUP_COST_SCORES", 0)
        monkeypatch.setattr(packed_attention_module, "BATCHED_SCORES_LIMIT", heads * 80)  # the whole row alone
    if path == "row by row":
        monkeypatch.setattr(packed_attention_module, "BATCHED_SCORES_LIMIT", 0)
    ref_loss, ref_grads = per_row_reference(model, shared_rows())
    batch = sharing_collator(model, flattening(tok, padding_free=True))(shared_rows())
    assert batch["input_ids"].shape[1] < sum(len(r["input_ids"]) for r in shared_rows())  # it did share
    with packed_attention(model):
        loss, grads = packed_loss(model, batch)
        layout = packed_attention_module._LAST[1]
    assert len(layout.shared) == 3
    if path.startswith("a group per row"):
        assert layout.alone == [(0, 10)] and len(layout.groups) == 3
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_shared_keys_gradients_against_finite_differences():
    """The hand-written backward with keys read by several rows (their gradient is a sum), float64."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 2, 3, 2, 3, 4, 5, 0, 1]])  # rows 5, 4, 6 sharing 2; a whole 2
    total = position_ids.shape[1]
    q = torch.randn(1, 4, total, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, total, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, total, 3, dtype=torch.float64, requires_grad=True)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)

    def attend(q, k, v):
        packed_attention_module._LAST = None
        return packed_attention_module.packed_sdpa_attention(module, q, k, v, None, position_ids=position_ids,
                                                             scaling=0.5, dropout=0.0)[0]  # fmt: skip

    assert torch.autograd.gradcheck(attend, (q, k, v))
    out = attend(q, k, v)
    # each row against sdpa on the whole row written out (its shared tokens copied in front)
    for a, b, keys in ((0, 5, list(range(5))), (5, 7, [0, 1, 5, 6]), (7, 11, [0, 1, 7, 8, 9, 10]), (11, 13, [11, 12])):
        n = b - a
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, keys][:, :, -n:], k[:, :, keys].repeat_interleave(2, 1), v[:, :, keys].repeat_interleave(2, 1),
            attn_mask=torch.ones(n, len(keys), dtype=torch.bool).tril(len(keys) - n), scale=0.5)  # fmt: skip
        torch.testing.assert_close(out[0, a:b], expected[0].transpose(0, 1))


def test_no_sharing_where_the_attention_would_not_read_it(tiny_bert, model_and_tok):
    from tunelab.models.loading import load_model

    _, tok = model_and_tok
    collator = flattening(tok, padding_free=True)
    encoder = load_model(tiny_bert, "seq_cls", labels=["a", "b"])
    assert sharing_collator(encoder, collator) is collator
    padded = flattening(tok, padding_free=False)
    assert sharing_collator(model_and_tok[0], padded) is padded
