"""Tests for tunelab.evaluation.metrics."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelab.evaluation import metrics as M

PREDS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog",
    "Paris is the capital of France.",
    "",
    "running runners ran quickly",
]
REFS = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumped over a lazy dog.",
    "The capital of France is Paris.",
    "nothing",
    "the runner runs quickly",
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat!", "cat"),
        ("  an   Apple,  a day  ", "apple day"),
        ("Theatre the then", "theatre then"),  # only whole-word articles go
        ("", ""),
        ("A.", ""),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert M.normalize_answer(raw) == expected


def test_exact_match() -> None:
    assert M.exact_match("The Cat!", "cat") == 100.0
    assert M.exact_match("cat", "cats") == 0.0
    assert M.exact_match("", "the") == 100.0  # both normalise to ""


def test_token_f1_by_hand() -> None:
    # "the cat sat" → [cat, sat]; "a cat sat down" → [cat, sat, down]
    precision, recall = 2 / 2, 2 / 3
    expected = 100 * 2 * precision * recall / (precision + recall)
    assert M.token_f1("the cat sat", "a cat sat down") == pytest.approx(expected)
    assert expected == pytest.approx(80.0)
    # duplicated tokens count with multiplicity (Counter intersection)
    # pred [cat, cat, cat] vs ref [cat, dog]: common 1, p = 1/3, r = 1/2
    p, r = 1 / 3, 1 / 2
    assert M.token_f1("cat cat cat", "cat dog") == pytest.approx(100 * 2 * p * r / (p + r))


def test_token_f1_edge_cases() -> None:
    assert M.token_f1("", "") == 100.0
    assert M.token_f1("the", "a") == 100.0  # both empty after normalisation
    assert M.token_f1("", "cat") == 0.0
    assert M.token_f1("cat", "") == 0.0
    assert M.token_f1("dog", "cat") == 0.0
    assert M.token_f1("The Cat!", "cat") == 100.0


def test_sentence_rouge_l_matches_rouge_score() -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for pred, ref in zip(PREDS, REFS, strict=True):
        expected = 100 * scorer.score(ref, pred)["rougeL"].fmeasure
        assert M.sentence_rouge_l(pred, ref) == pytest.approx(expected)
    assert M.sentence_rouge_l("the cat", "the cat") == pytest.approx(100.0)


def test_generation_metrics_matches_libraries() -> None:
    out = M.generation_metrics(PREDS, REFS)
    assert out["n"] == len(PREDS)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(PREDS, REFS, strict=True)]
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(s[key].fmeasure for s in scores) / len(scores)
        assert out[key] == pytest.approx(expected)

    ems = [M.exact_match(p, r) for p, r in zip(PREDS, REFS, strict=True)]
    f1s = [M.token_f1(p, r) for p, r in zip(PREDS, REFS, strict=True)]
    assert out["exact_match"] == pytest.approx(sum(ems) / len(ems))
    assert out["token_f1"] == pytest.approx(sum(f1s) / len(f1s))

    assert len(out["per_example"]) == len(PREDS)
    for row, pred, ref in zip(out["per_example"], PREDS, REFS, strict=True):
        assert set(row) == {"rougeL", "bleu", "exact_match", "token_f1"}
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(pred, [ref]).score)
        assert row["rougeL"] == pytest.approx(M.sentence_rouge_l(pred, ref))
    for key in M.HEADLINE_METRICS:
        assert 0.0 <= out[key] <= 100.0


def test_generation_metrics_perfect() -> None:
    refs = ["the quick brown fox jumps over the lazy dog", "hello there general kenobi you are bold"]
    out = M.generation_metrics(refs, refs)
    for key in ("rougeL", "rouge1", "rouge2", "bleu", "exact_match", "token_f1"):
        assert out[key] == pytest.approx(100.0)


def test_generation_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        M.generation_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        M.generation_metrics([], [])


def test_perplexity() -> None:
    assert M.perplexity(0.0, 10) == pytest.approx(1.0)
    assert M.perplexity(20.0, 10) == pytest.approx(math.exp(2.0))
    assert M.perplexity(1e6, 1) == float("inf")
    assert math.isnan(M.perplexity(float("nan"), 3))
    with pytest.raises(ValueError):
        M.perplexity(1.0, 0)


def test_labels_cover_headline_metrics() -> None:
    assert M.HEADLINE_METRICS == ["rougeL", "bleu", "exact_match", "token_f1"]
    for key in [*M.HEADLINE_METRICS, "rouge1", "rouge2", "perplexity", "eval_loss"]:
        assert key in M.METRIC_LABELS
    assert M.LOWER_IS_BETTER == {"perplexity", "eval_loss"}
