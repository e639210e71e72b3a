import pytest
import torch

from tunelab.models.kinds import MODEL_KINDS
from tunelab.training import packed_attention as packed_attention_module
from tunelab.training.packed_attention import NAME, packed_attention, supports
from tunelab.training.packed_attention import _segments as real_segments

make_collator = MODEL_KINDS["causal_lm"].collator


@pytest.fixture()
def model_and_tok(tiny_model):
    from tunelab.models.loading import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(tiny_model, "causal_lm"), load_tokenizer(tiny_model)


def rows():
    return [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]},
        {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, 13, 14]},
        {"input_ids": [3], "labels": [3]},  # a one-token row is its own segment too
        {"input_ids": [20, 21, 22, 23, 24], "labels": [-100, -100, -100, -100, 24]},
    ]


def logits_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("path", ["row by row", "batched"])
def test_packed_attention_equals_block_mask_in_logits_and_gradients(model_and_tok, monkeypatch, path):
    model, tok = model_and_tok
    batch = make_collator(tok, padding_free=True)(rows())
    ref_logits, ref_grads = logits_and_grads(model, batch)  # transformers' own block mask
    cuts, batched_calls = [], []
    monkeypatch.setattr(packed_attention_module, "_segments", lambda pos: cuts.append(real_segments(pos)) or cuts[-1])
    monkeypatch.setattr(packed_attention_module, "BATCHED_SCORES_LIMIT", 2**22 if path == "batched" else 0)
    real_batched = packed_attention_module._batched_attention
    monkeypatch.setattr(packed_attention_module, "_batched_attention",
                        lambda *a: batched_calls.append(1) or real_batched(*a))  # fmt: skip
    with packed_attention(model) as used:
        assert used and model.config._attn_implementation == NAME
        logits, grads = logits_and_grads(model, batch)
    # the rows were found once per forward, and every layer took the path asked for
    assert cuts == [[(0, 6, 0, 0), (6, 10, 0, 0), (10, 11, 0, 0), (11, 16, 0, 0)]]  # (start, end, shared, base)
    assert len(batched_calls) == (model.config.num_hidden_layers if path == "batched" else 0)
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # and a packed row equals the same row run alone
    alone = model(input_ids=torch.tensor([rows()[1]["input_ids"]])).logits
    torch.testing.assert_close(ref_logits[0, 6:10], alone[0], rtol=1e-5, atol=1e-5)


def test_padded_batches_and_cached_generation_are_unchanged(model_and_tok):
    model, tok = model_and_tok
    batch = make_collator(tok, padding_free=False)(rows())
    with torch.no_grad():
        ref = model(**batch, use_cache=False).logits
        prompt = torch.tensor([[5, 6, 7, 8]])
        ref_gen = model.generate(prompt, max_new_tokens=6, do_sample=False)
        with packed_attention(model):
            ours = model(**batch, use_cache=False).logits
            gen = model.generate(prompt, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert gen.tolist() == ref_gen.tolist()


def test_peft_models_and_unsupported_models(model_and_tok, tiny_bert):
    from peft import LoraConfig, get_peft_model

    from tunelab.models.loading import load_model

    model, _ = model_and_tok
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with packed_attention(peft_model) as used:
        assert used and peft_model.get_base_model().config._attn_implementation == NAME
    encoder = load_model(tiny_bert, "seq_cls", labels=["a", "b"])
    assert not supports(encoder)
    with packed_attention(encoder) as used:
        assert not used


@pytest.mark.parametrize("case", ["one group, weights kept", "one group, weights recomputed",
                                  "a group per row and one row alone"])  # fmt: skip
def test_batched_attention_gradients_against_finite_differences(monkeypatch, case):
    """The hand-written backward against torch's numerical gradients, in float64, with grouped queries
    (6 heads sharing 2 key/value heads) and rows of different lengths: the weights kept from the forward or
    recomputed, the rows in one padded group, or in groups of their own with the longest row alone (sdpa)."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    lengths = [3, 5, 1, 4]
    if case == "one group, weights recomputed":
        monkeypatch.setattr(packed_attention_module, "KEPT_SCORES_LIMIT", 0)
    if case.startswith("a group per row"):
        monkeypatch.setattr(packed_attention_module, "GROUP_COST_SCORES", 0)
        monkeypatch.setattr(packed_attention_module, "BATCHED_SCORES_LIMIT", 6 * 4 * 4)  # the 5-token row goes alone
        packed_attention_module._LAST = None
        layout = packed_attention_module._layout(torch.cat([torch.arange(n) for n in lengths])[None], 6)
        assert [g.rows for g in layout.groups] == [1, 1, 1] and layout.alone == [(3, 8)]
    total = sum(lengths)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    q = torch.randn(1, 6, total, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, total, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, total, 4, dtype=torch.float64, requires_grad=True)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)

    def attend(q, k, v):
        packed_attention_module._LAST = None
        out, _ = packed_attention_module.packed_sdpa_attention(module, q, k, v, None, position_ids=position_ids,
                                                               scaling=0.5, dropout=0.0)  # fmt: skip
        return out

    assert torch.autograd.gradcheck(attend, (q, k, v))
    # and the values equal plain attention of each row alone (its own keys, causal)
    out, start = attend(q, k, v), 0
    for n in lengths:
        rows = slice(start, start + n)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, rows], k[:, :, rows].repeat_interleave(3, 1), v[:, :, rows].repeat_interleave(3, 1),
            is_causal=True, scale=0.5)  # fmt: skip
        torch.testing.assert_close(out[0, rows], expected[0].transpose(0, 1))
        start += n


def test_batched_attention_under_bf16_is_as_close_to_fp32_as_the_fused_kernel(model_and_tok, monkeypatch):
    """Under CPU bf16 autocast neither path equals fp32; the batched one must not be further from it."""
    model, tok = model_and_tok
    batch = make_collator(tok, padding_free=True)(rows())
    with packed_attention(model):
        ref_logits, _ = logits_and_grads(model, batch)
        errors = {}
        for path, limit in (("row by row", 0), ("batched", 2**22)):
            monkeypatch.setattr(packed_attention_module, "BATCHED_SCORES_LIMIT", limit)
            packed_attention_module._LAST = None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, _ = logits_and_grads(model, batch)
            errors[path] = float((logits.float() - ref_logits).abs().max())
    assert errors["batched"] <= 1.5 * errors["row by row"] + 1e-3, errors


def best_grouping_by_enumeration(lengths, heads, group_cost, limit):
    """Every way to cut the rows, longest first, into runs: the cheapest (an independent reference)."""
    from itertools import combinations

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    alone = [i for i in order if heads * lengths[i] ** 2 > limit]
    rest = [i for i in order if i not in alone]
    best = None
    for k in range(len(rest)):
        for cuts in combinations(range(1, len(rest)), k):
            bounds = [0, *cuts, len(rest)]
            runs = [rest[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            if any(len(r) * heads * lengths[r[0]] ** 2 > limit for r in runs):
                continue
            cost = sum(len(r) * heads * lengths[r[0]] ** 2 + group_cost for r in runs)
            if best is None or cost < best[0]:
                best = (cost, sorted(sorted(r) for r in runs))
    return (best[1] if best else []), sorted(alone)


@pytest.mark.parametrize("lengths", [[64] * 8, [220, 50, 49, 47, 46, 46, 43, 33], [197, 68, 50, 49, 49, 47, 46, 46],
                                     [5, 300, 7, 120, 119, 2, 64, 700], [1]])  # fmt: skip
def test_rows_are_grouped_at_the_least_cost(monkeypatch, lengths):
    from tunelab.training.packed_attention import BATCHED_SCORES_LIMIT, GROUP_COST_SCORES, grouping

    groups, alone = grouping(lengths, heads=9)
    assert (groups, sorted(alone)) == best_grouping_by_enumeration(lengths, 9, GROUP_COST_SCORES, BATCHED_SCORES_LIMIT)
    assert sorted([i for g in groups for i in g] + alone) == list(range(len(lengths)))  # every row once
    if len(set(lengths)) == 1:
        assert groups == [list(range(len(lengths)))]  # equal rows: one group, as the planner assumes


def test_several_groups_equal_transformers_block_mask(model_and_tok, monkeypatch):
    """Rows split into groups (and a row alone) give the block mask's logits and gradients, in fp32."""
    model, tok = model_and_tok
    batch = make_collator(tok, padding_free=True)(rows())
    ref_logits, ref_grads = logits_and_grads(model, batch)
    monkeypatch.setattr(packed_attention_module, "GROUP_COST_SCORES", 0)
    heads = model.config.num_attention_heads
    monkeypatch.setattr(packed_attention_module, "BATCHED_SCORES_LIMIT", heads * 5 * 5)  # the 6-token row alone
    with packed_attention(model):
        logits, grads = logits_and_grads(model, batch)
        layout = packed_attention_module._LAST[1]
        assert len(layout.groups) == 3 and layout.alone == [(0, 6)] and layout.order is not None
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_kept_weights_give_the_recomputed_gradients_bit_for_bit(model_and_tok, monkeypatch):
    """Keeping the forward's weights for the backward changes no bit of the loss or the gradients (bf16)."""
    model, tok = model_and_tok
    batch = make_collator(tok, padding_free=True)(rows())
    results = {}
    for limit in (0, 2**20):
        monkeypatch.setattr(packed_attention_module, "KEPT_SCORES_LIMIT", limit)
        with packed_attention(model), torch.autocast("cpu", dtype=torch.bfloat16):
            results[limit] = logits_and_grads(model, batch)
    (logits0, grads0), (logits1, grads1) = results[0], results[2**20]
    assert torch.equal(logits0, logits1)
    assert grads0.keys() == grads1.keys() and all(torch.equal(grads0[n], grads1[n]) for n in grads0)
