"""chrF, sufficient statistics, SQuAD definitions and classification metrics against the reference libraries."""

from __future__ import annotations

import random

import pytest
import sacrebleu
from sklearn import metrics as skm

from tunelab.evaluation import metrics as M

PREDS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog",
    "Paris is the capital of France.",
    "",
    "running runners ran quickly",
    "I am all net baby",
]
REFS = [
    "The cat is sitting on the mat.",
    "The quick brown fox jumped over a lazy dog.",
    "The capital of France is Paris.",
    "nothing",
    "the runner runs quickly",
    "I am all net baby.",
]


def test_chrf_matches_sacrebleu() -> None:
    out = M.generation_metrics(PREDS, REFS)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score)
    for pred, ref in zip(PREDS, REFS, strict=True):
        assert M.sentence_chrf(pred, ref) == pytest.approx(sacrebleu.sentence_chrf(pred, [ref]).score)


def test_per_example_keys_default_and_detailed() -> None:
    plain = M.generation_metrics(PREDS, REFS)
    assert set(plain["per_example"][0]) == {"rougeL", "bleu", "exact_match", "token_f1"}
    detailed = M.generation_metrics(PREDS, REFS, detailed=True)
    assert set(detailed["per_example"][0]) == {"rougeL", "rouge1", "rouge2", "chrf", "bleu", "exact_match", "token_f1"}
    for row, pred, ref in zip(detailed["per_example"], PREDS, REFS, strict=True):
        assert row["chrf"] == pytest.approx(sacrebleu.sentence_chrf(pred, [ref]).score)
    means = {k: sum(r[k] for r in detailed["per_example"]) / len(PREDS) for k in ("rouge1", "rouge2")}
    assert detailed["rouge1"] == pytest.approx(means["rouge1"])
    assert detailed["rouge2"] == pytest.approx(means["rouge2"])


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_sufficient_statistics_reproduce_corpus_scores_on_resamples(metric: str) -> None:
    corpus = {"bleu": sacrebleu.corpus_bleu, "chrf": sacrebleu.corpus_chrf}[metric]
    stats = M.corpus_statistics(metric, PREDS, REFS)
    assert len(stats) == len(PREDS)
    total = [sum(col) for col in zip(*stats, strict=True)]
    assert M.score_from_statistics(metric, total) == pytest.approx(corpus(PREDS, [REFS]).score)
    rng = random.Random(0)
    for _ in range(5):  # a bootstrap resample: indices with repeats
        idx = [rng.randrange(len(PREDS)) for _ in PREDS]
        summed = [sum(stats[i][k] for i in idx) for k in range(len(stats[0]))]
        expected = corpus([PREDS[i] for i in idx], [[REFS[i] for i in idx]]).score
        assert M.score_from_statistics(metric, summed) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "ref", "em", "f1"),
    [
        ("Denver Broncos", "The Denver Broncos", 100.0, 100.0),  # articles dropped
        ("the  Broncos!", "broncos", 100.0, 100.0),  # case, punctuation, whitespace
        ("Denver", "Denver Broncos", 0.0, 100 * 2 * 1 * 0.5 / 1.5),  # p = 1, r = 1/2
        # pred [santa, clara, california], ref [levis, stadium, in, santa, clara]: p = 2/3, r = 2/5
        ("Santa Clara, California", "Levi's Stadium in Santa Clara", 0.0, 100 * 2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5)),
        ("an apple a day", "apple day", 100.0, 100.0),
        ("Theatre", "the theatre", 100.0, 100.0),  # "the" as a word only
        ("1,000", "1000", 100.0, 100.0),  # punctuation inside numbers is removed too
    ],
)
def test_squad_em_and_f1_by_hand(pred: str, ref: str, em: float, f1: float) -> None:
    assert M.exact_match(pred, ref) == em
    assert M.token_f1(pred, ref) == pytest.approx(f1)


def test_classification_metrics_match_scikit_learn() -> None:
    labels = [0, 0, 1, 1, 2, 2, 2, 0, 1, 2, 0, 1]
    preds = [0, 1, 1, 1, 2, 0, 2, 0, 2, 2, 0, 0]
    names = ["neg", "neu", "pos"]
    out = M.classification_metrics(preds, labels, names)
    assert out["accuracy"] == pytest.approx(100 * skm.accuracy_score(labels, preds))
    assert out["macro_f1"] == pytest.approx(100 * skm.f1_score(labels, preds, average="macro"))
    assert out["macro_precision"] == pytest.approx(100 * skm.precision_score(labels, preds, average="macro"))
    assert out["macro_recall"] == pytest.approx(100 * skm.recall_score(labels, preds, average="macro"))
    assert out["weighted_f1"] == pytest.approx(100 * skm.f1_score(labels, preds, average="weighted"))
    assert out["mcc"] == pytest.approx(skm.matthews_corrcoef(labels, preds))
    assert out["confusion_matrix"] == skm.confusion_matrix(labels, preds).tolist()
    assert out["n"] == len(labels) and out["label_names"] == names
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds)
    for i, name in enumerate(names):
        cls = out["per_class"][name]
        assert cls["precision"] == pytest.approx(100 * p[i])
        assert cls["recall"] == pytest.approx(100 * r[i])
        assert cls["f1"] == pytest.approx(100 * f[i])
        assert cls["support"] == s[i]


def test_classification_metrics_unpredicted_class_and_errors() -> None:
    out = M.classification_metrics([0, 0, 0], [0, 1, 0], ["a", "b", "c"])
    assert out["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["per_class"]["c"]["support"] == 0
    assert out["confusion_matrix"] == [[2, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert out["mcc"] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        M.classification_metrics([0], [0, 1], ["a", "b"])


def test_new_labels_and_directions() -> None:
    for key in ("chrf", "mcc", "acc", "acc_norm", "mean_output_tokens", "hit_token_limit"):
        assert key in M.METRIC_LABELS
    assert "hit_token_limit" in M.NEUTRAL_METRICS and "mean_output_tokens" in M.NEUTRAL_METRICS
