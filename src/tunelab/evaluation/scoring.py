"""Per-model metrics on the rows, and the one table of bootstrap intervals built from them.

`interval_table` is the table of `tunelab compare`/`eval` and of `tunelab bench` alike: per metric,
every model's value with its 95% percentile-bootstrap interval and, against a baseline, the paired
bootstrap interval of the difference (every model scored on the same resamples of the rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation import bootstrap as B
from tunelab.evaluation.metrics import (
    classification_metrics,
    corpus_statistics,
    generation_metrics,
    perplexity,
)
from tunelab.evaluation.outputs import ModelResult
from tunelab.evaluation.rows import EvalData

__all__ = ["GENERATION_METRICS", "METRIC_ORDER", "PER_EXAMPLE", "comparison_table", "interval_table",
           "metric_stats", "score"]  # fmt: skip

# metric → how it is computed from a model's per-example results; order = table order
GENERATION_METRICS = (
    "rougeL",
    "rouge1",
    "rouge2",
    "bleu",
    "chrf",
    "exact_match",
    "token_f1",
    "perplexity",
    "mean_output_tokens",
    "hit_token_limit",
)
METRIC_ORDER = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "mcc", *GENERATION_METRICS)
PER_EXAMPLE = ("rougeL", "rouge1", "rouge2", "chrf", "bleu", "exact_match", "token_f1")

Stats = dict[str, tuple[B.MetricSpec, Any]]  # metric → (how to compute it, per-example statistics)


def score(result: ModelResult, data: EvalData, generative: bool) -> None:
    """``result.metrics`` and ``result.per_example`` from its outputs (and reference NLLs)."""
    metrics: dict[str, Any] = {"n": len(data)}
    if data.kind == "classification":
        names = data.label_names or sorted(set(data.references) | set(result.outputs))
        index = {n: i for i, n in enumerate(names)}
        preds = [index.get(o, -1) for o in result.outputs]
        refs = [index[r] for r in data.references]
        if any(p < 0 for p in preds):
            raise TunelabError(f"{result.name} predicted a label that is not one of {', '.join(names)}")
        metrics.update(classification_metrics(preds, refs, names))
        result.per_example = [{"correct": 100.0 if p == r else 0.0} for p, r in zip(preds, refs, strict=True)]
        result.metrics = metrics
        return
    if generative:
        scores = generation_metrics(result.outputs, data.references, detailed=True)
        result.per_example = scores.pop("per_example")
        metrics.update(scores)
        metrics["mean_output_tokens"] = sum(result.new_tokens) / len(data)
        metrics["hit_token_limit"] = sum(result.hit_limit)
    if result.ref_nll:
        tokens = sum(t for _, t in result.ref_nll)
        if tokens:
            metrics["perplexity"] = perplexity(sum(v for v, _ in result.ref_nll), tokens)
    result.metrics = metrics


def metric_stats(result: ModelResult, data: EvalData) -> Stats:
    """metric → (MetricSpec, per-example statistics) of a scored model, for the bootstrap."""
    out: Stats = {}
    if data.kind == "classification":
        names = data.label_names or result.metrics.get("label_names") or []
        index = {n: i for i, n in enumerate(names)}
        stats = B.confusion_statistics(
            [index[o] for o in result.outputs], [index[r] for r in data.references], len(names)
        )
        for key in B.CLASSIFICATION_METRICS:
            out[key] = (B.classification_metric(key, len(names)), stats)
        return out
    if result.per_example:
        for key in ("rougeL", "rouge1", "rouge2", "exact_match", "token_f1"):
            out[key] = (B.mean_metric(key), [row[key] for row in result.per_example])
        out["bleu"] = (B.corpus_metric("bleu", "bleu"), corpus_statistics("bleu", result.outputs, data.references))
        out["chrf"] = (B.corpus_metric("chrf", "chrf"), corpus_statistics("chrf", result.outputs, data.references))
        out["mean_output_tokens"] = (B.mean_metric("mean_output_tokens"), list(result.new_tokens))
        out["hit_token_limit"] = (
            B.MetricSpec("hit_token_limit", lambda totals, n: totals[:, 0]),
            [1.0 if h else 0.0 for h in result.hit_limit],
        )
    if result.ref_nll and sum(t for _, t in result.ref_nll):
        out["perplexity"] = (B.perplexity_metric(), [[v, t] for v, t in result.ref_nll])
    return out


def interval_table(
    stats: dict[str, Stats], order: Iterable[str], *, baseline: str | None, n: int, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Rows ``{metric, values: {model: v}, intervals: {model: {low, high}}, deltas: {model: paired}}``
    for the metrics of ``order`` that any model has; models in the order of ``stats``."""
    weights = B.resample_weights(n, resamples, seed)
    base_stats = stats.get(baseline) if baseline else None
    rows = []
    for metric in order:
        if not any(metric in s for s in stats.values()):
            continue
        row: dict[str, Any] = {"metric": metric, "values": {}, "intervals": {}, "deltas": {}}
        for name, model_stats in stats.items():
            if metric not in model_stats:
                row["values"][name] = None
                continue
            spec, st = model_stats[metric]
            ci = B.bootstrap_interval(spec, st, weights=weights)
            row["values"][name] = ci["value"]
            row["intervals"][name] = {"low": ci["low"], "high": ci["high"]}
            if base_stats is not None and name != baseline and metric in base_stats:
                row["deltas"][name] = B.paired_bootstrap(spec, base_stats[metric][1], st, weights=weights)
        rows.append(row)
    return rows


def comparison_table(
    results: list[ModelResult], baseline: str | None, data: EvalData, resamples: int, seed: int
) -> list[dict[str, Any]]:
    """`interval_table` of scored models on the rows, every metric they have, in `METRIC_ORDER`."""
    stats = {r.name: metric_stats(r, data) for r in results}
    return interval_table(stats, METRIC_ORDER, baseline=baseline, n=len(data), resamples=resamples, seed=seed)
