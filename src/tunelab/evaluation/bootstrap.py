"""Paired bootstrap confidence intervals for metric differences between models.

Every model is scored on the *same* examples, so the resamples are paired: resample the example
indices with replacement, score every model on that same resample, and take the difference. The 95%
interval is the 2.5th–97.5th percentile of the resampled differences (percentile bootstrap, as in
Koehn 2004 and sacrebleu's paired bootstrap).

A metric is described by per-example *statistics* (an ``n × k`` array) and a function from their
column sums to the score. A mean of sentence scores has k = 1 and reduces to ``sum / n``; corpus
BLEU/chrF use sacrebleu's sufficient statistics, so each resample's score is the true corpus score
of that resample; perplexity uses (NLL sum, token count). The resampling is one weight matrix
(``B × n`` counts) multiplied by each statistics array, so a thousand resamples of a dozen metrics
take milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CLASSIFICATION_METRICS",
    "DEFAULT_RESAMPLES",
    "classification_metric",
    "confusion_statistics",
    "corpus_metric",
    "perplexity_metric",
    "MetricSpec",
    "bootstrap_interval",
    "mean_metric",
    "paired_bootstrap",
    "resample_weights",
]

DEFAULT_RESAMPLES = 1000


@dataclass
class MetricSpec:
    """A metric as per-example statistics plus how to score column sums.

    ``reduce(totals, n)`` gets ``totals`` of shape ``(B, k)`` (sums of the statistics over each
    resample) and the sample size, and returns ``B`` scores.
    """

    name: str
    reduce: Callable[[np.ndarray, int], np.ndarray]


def _mean(totals: np.ndarray, n: int) -> np.ndarray:
    return totals[:, 0] / n


def _ratio_exp(totals: np.ndarray, n: int) -> np.ndarray:
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return np.exp(totals[:, 0] / totals[:, 1])


def mean_metric(name: str) -> MetricSpec:
    """A metric that is the mean of one per-example value (EM, token F1, ROUGE, accuracy …)."""
    return MetricSpec(name, _mean)


def perplexity_metric(name: str = "perplexity") -> MetricSpec:
    """exp(Σ NLL / Σ tokens) from per-example (nll_sum, n_tokens) rows."""
    return MetricSpec(name, _ratio_exp)


def corpus_metric(name: str, sacrebleu_metric: str) -> MetricSpec:
    """A sacrebleu corpus metric ("bleu"/"chrf") from its sufficient statistics."""
    from tunelab.evaluation.metrics import score_from_statistics

    def reduce(totals: np.ndarray, n: int) -> np.ndarray:
        return np.array([score_from_statistics(sacrebleu_metric, row) for row in totals], dtype=float)

    return MetricSpec(name, reduce)


CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "mcc")


def confusion_statistics(predictions: Sequence[int], labels: Sequence[int], n_labels: int) -> np.ndarray:
    """Per example a one-hot (true, predicted) cell of the ``n_labels × n_labels`` confusion matrix.

    Summed over any resample they give that resample's confusion matrix, from which every
    classification metric follows — so accuracy, macro F1 and MCC all get exact bootstrap intervals.
    """
    stats = np.zeros((len(labels), n_labels * n_labels), dtype=np.float64)
    for i, (t, p) in enumerate(zip(labels, predictions, strict=True)):
        stats[i, int(t) * n_labels + int(p)] = 1.0
    return stats


def _from_confusion(name: str, n_labels: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def reduce(totals: np.ndarray, n: int) -> np.ndarray:
        cm = totals.reshape(-1, n_labels, n_labels)  # rows = true label, columns = predicted
        tp = np.diagonal(cm, axis1=1, axis2=2)
        true_sum, pred_sum = cm.sum(axis=2), cm.sum(axis=1)
        total = cm.sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "accuracy":
                return 100.0 * tp.sum(axis=1) / total
            if name == "macro_precision":
                return 100.0 * np.where(pred_sum > 0, tp / pred_sum, 0.0).mean(axis=1)
            if name == "macro_recall":
                return 100.0 * np.where(true_sum > 0, tp / true_sum, 0.0).mean(axis=1)
            if name == "macro_f1":
                denom = true_sum + pred_sum
                return 100.0 * np.where(denom > 0, 2 * tp / denom, 0.0).mean(axis=1)
            if name == "mcc":  # scikit-learn's multiclass formula
                correct = tp.sum(axis=1)
                cov_tp = correct * total - (true_sum * pred_sum).sum(axis=1)
                cov_pp = total**2 - (pred_sum * pred_sum).sum(axis=1)
                cov_tt = total**2 - (true_sum * true_sum).sum(axis=1)
                denom = np.sqrt(cov_tt * cov_pp)
                return np.where(denom > 0, cov_tp / denom, 0.0)
        raise ValueError(f"unknown classification metric {name!r}")

    return reduce


def classification_metric(name: str, n_labels: int) -> MetricSpec:
    """accuracy / macro_f1 / macro_precision / macro_recall (×100) or mcc from `confusion_statistics`."""
    if name not in CLASSIFICATION_METRICS:
        raise ValueError(f"unknown classification metric {name!r}")
    return MetricSpec(name, _from_confusion(name, n_labels))


def resample_weights(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``resamples × n`` matrix: how often each example is drawn in each bootstrap resample."""
    if n <= 0:
        raise ValueError("bootstrap needs at least one example")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n), dtype=np.float64)
    np.add.at(weights, (np.arange(resamples)[:, None], idx), 1.0)
    return weights


def _as_stats(values: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    return arr


def _finite_percentiles(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap_interval(
    spec: MetricSpec,
    stats: Sequence[Any],
    *,
    weights: np.ndarray | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Percentile bootstrap interval of one model's score: ``{value, low, high}``."""
    arr = _as_stats(stats)
    n = arr.shape[0]
    w = resample_weights(n, resamples, seed) if weights is None else weights
    value = float(spec.reduce(arr.sum(axis=0, keepdims=True), n)[0])
    low, high = _finite_percentiles(spec.reduce(w @ arr, n), alpha)
    return {"value": value, "low": low, "high": high}


def paired_bootstrap(
    spec: MetricSpec,
    stats_a: Sequence[Any],
    stats_b: Sequence[Any],
    *,
    weights: np.ndarray | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Difference B − A of a metric with a paired bootstrap (1 − alpha) interval.

    Returns ``{a, b, delta, low, high, excludes_zero, p_value, resamples}``. ``p_value`` is two-sided:
    the share of resampled differences, re-centred on zero (the null hypothesis of no difference),
    at least as far from zero as the observed difference (bounded below by 1/(B+1)).
    """
    a, b = _as_stats(stats_a), _as_stats(stats_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired bootstrap needs the same examples for both models ({a.shape[0]} vs {b.shape[0]})")
    n = a.shape[0]
    w = resample_weights(n, resamples, seed) if weights is None else weights
    score_a = float(spec.reduce(a.sum(axis=0, keepdims=True), n)[0])
    score_b = float(spec.reduce(b.sum(axis=0, keepdims=True), n)[0])
    diffs = spec.reduce(w @ b, n) - spec.reduce(w @ a, n)
    delta = score_b - score_a
    low, high = _finite_percentiles(diffs, alpha)
    finite = diffs[np.isfinite(diffs)]
    if finite.size and math.isfinite(delta):
        centred = finite - finite.mean()
        p_value = float((np.sum(np.abs(centred) >= abs(delta) - 1e-12) + 1) / (finite.size + 1))
    else:
        p_value = float("nan")
    excludes_zero = bool(math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0))
    return {
        "a": score_a,
        "b": score_b,
        "delta": delta,
        "low": low,
        "high": high,
        "excludes_zero": excludes_zero,
        "p_value": min(1.0, p_value) if math.isfinite(p_value) else p_value,
        "resamples": int(w.shape[0]),
    }
