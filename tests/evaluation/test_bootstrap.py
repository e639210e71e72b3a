"""Paired bootstrap: definitions checked against a plain-loop implementation and on obvious cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from tunelab.evaluation import bootstrap as B
from tunelab.evaluation.metrics import corpus_statistics


def test_weights_are_resample_counts() -> None:
    w = B.resample_weights(7, resamples=50, seed=3)
    assert w.shape == (50, 7)
    assert np.all(w.sum(axis=1) == 7)
    assert np.array_equal(w, B.resample_weights(7, resamples=50, seed=3))  # deterministic
    with pytest.raises(ValueError):
        B.resample_weights(0)


def test_paired_bootstrap_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 100, size=40)
    b = a + rng.normal(5, 10, size=40)
    out = B.paired_bootstrap(B.mean_metric("x"), a, b, resamples=500, seed=7)
    # the same resamples, drawn the same way, in a loop
    idx = np.random.default_rng(7).integers(0, 40, size=(500, 40))
    diffs = np.array([b[i].mean() - a[i].mean() for i in idx])
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert out["delta"] == pytest.approx(b.mean() - a.mean())
    assert out["low"] == pytest.approx(low) and out["high"] == pytest.approx(high)
    assert out["excludes_zero"] == (low > 0 or high < 0)
    assert out["resamples"] == 500


def test_identical_models_and_constant_shift() -> None:
    a = [10.0, 20.0, 0.0, 50.0, 100.0]
    same = B.paired_bootstrap(B.mean_metric("x"), a, a)
    assert same["delta"] == 0 and same["low"] == 0 and same["high"] == 0
    assert not same["excludes_zero"] and same["p_value"] == pytest.approx(1.0)
    shifted = B.paired_bootstrap(B.mean_metric("x"), a, [v + 3 for v in a])
    assert shifted["delta"] == pytest.approx(3) and shifted["low"] == pytest.approx(3)
    assert shifted["excludes_zero"] and shifted["p_value"] < 0.01
    # unpaired noise this large would swamp a +3 shift; pairing is what makes it visible
    with pytest.raises(ValueError):
        B.paired_bootstrap(B.mean_metric("x"), a, a[:3])


def test_bleu_resamples_are_corpus_bleu_of_the_resample() -> None:
    preds_a = ["the cat sat on the mat", "a dog", "hello there", "it is raining today", "blue sky"]
    preds_b = ["the cat sat on a mat", "the dog barked", "hello there friend", "it rains", "the sky is blue"]
    refs = ["the cat sat on the mat", "the dog barked", "hello there", "it is raining", "the sky is blue"]
    spec = B.corpus_metric("bleu", "bleu")
    sa, sb = corpus_statistics("bleu", preds_a, refs), corpus_statistics("bleu", preds_b, refs)
    w = B.resample_weights(5, resamples=20, seed=2)
    out = B.paired_bootstrap(spec, sa, sb, weights=w)
    assert out["a"] == pytest.approx(sacrebleu.corpus_bleu(preds_a, [refs]).score)
    assert out["b"] == pytest.approx(sacrebleu.corpus_bleu(preds_b, [refs]).score)
    idx = np.random.default_rng(2).integers(0, 5, size=(20, 5))
    diffs = []
    for row in idx:
        ra = [refs[i] for i in row]
        diffs.append(
            sacrebleu.corpus_bleu([preds_b[i] for i in row], [ra]).score
            - sacrebleu.corpus_bleu([preds_a[i] for i in row], [ra]).score
        )
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert out["low"] == pytest.approx(low) and out["high"] == pytest.approx(high)


def test_perplexity_metric_and_single_interval() -> None:
    stats = [[2.0, 1], [6.0, 3], [4.0, 2]]
    ci = B.bootstrap_interval(B.perplexity_metric(), stats, resamples=200)
    assert ci["value"] == pytest.approx(math.exp(12.0 / 6))
    assert ci["low"] == pytest.approx(math.exp(2.0)) and ci["high"] == pytest.approx(math.exp(2.0))
    mean = B.bootstrap_interval(B.mean_metric("x"), [0.0, 100.0] * 20, resamples=300)
    assert mean["value"] == 50 and mean["low"] < 50 < mean["high"]


@pytest.mark.parametrize("name", B.CLASSIFICATION_METRICS)
def test_classification_metrics_from_confusion_match_scikit_learn(name: str) -> None:
    from tunelab.evaluation.metrics import classification_metrics

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=30)
    preds = np.where(rng.random(30) < 0.6, labels, rng.integers(0, 3, size=30))
    preds[preds == 2] = 1  # class 2 is never predicted: zero-division paths
    spec = B.classification_metric(name, 3)
    stats = B.confusion_statistics(preds, labels, 3)
    w = B.resample_weights(30, resamples=10, seed=5)
    resampled = spec.reduce(w @ stats, 30)
    idx = np.random.default_rng(5).integers(0, 30, size=(10, 30))
    for value, row in zip(resampled, idx, strict=True):
        expected = classification_metrics(preds[row].tolist(), labels[row].tolist(), ["a", "b", "c"])[name]
        assert value == pytest.approx(expected)
