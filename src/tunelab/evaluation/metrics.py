"""Text-generation metrics, all on a 0–100 scale.

* Exact match and token F1 follow the official SQuAD v1.1 evaluation script (answer
  normalisation: lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace).
* ROUGE comes from `rouge_score` (Porter stemming on), averaged over sentences.
* BLEU and chrF come from `sacrebleu` (corpus scores for the headline numbers, sentence scores per
  example). Their per-sentence sufficient statistics are exposed too, so a paired bootstrap can
  recompute the *corpus* score on every resample (see `tunelab.evaluation.bootstrap`).
* Classification metrics come from scikit-learn.

Everything here runs offline; nothing is loaded from a hub.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any

from tunelab.reporting import Metric

__all__ = [
    "HEADLINE_METRICS",
    "LOWER_IS_BETTER",
    "METRIC_LABELS",
    "NEUTRAL_METRICS",
    "classification_metrics",
    "corpus_statistics",
    "exact_match",
    "generation_metrics",
    "metric_display",
    "normalize_answer",
    "perplexity",
    "score_from_statistics",
    "sentence_chrf",
    "sentence_rouge_l",
    "token_f1",
]

# Order of metrics in tables.
HEADLINE_METRICS = ["rougeL", "bleu", "exact_match", "token_f1"]

METRIC_LABELS = {
    "rougeL": "ROUGE-L",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "bleu": "BLEU",
    "exact_match": "Exact match",
    "token_f1": "Token F1",
    "chrf": "chrF",
    "perplexity": "Perplexity",
    "eval_loss": "Eval loss",
    "mean_output_tokens": "Mean output tokens",
    "hit_token_limit": "Hit token limit",
    "accuracy": "Accuracy",
    "macro_f1": "Macro F1",
    "macro_precision": "Macro precision",
    "macro_recall": "Macro recall",
    "mcc": "MCC",
    "acc": "Accuracy",
    "acc_norm": "Accuracy (length-normalised)",
    "weighted_f1": "Weighted F1",
    "correct": "Correct",
}

# Metrics where a smaller value is an improvement (everything else: larger is better).
LOWER_IS_BETTER = frozenset({"perplexity", "eval_loss"})

# Descriptive numbers with no better direction (shown without green/red).
NEUTRAL_METRICS = frozenset({"mean_output_tokens", "hit_token_limit", "n"})

# Shown as whole counts (1,234) when integral.
COUNT_METRICS = frozenset({"hit_token_limit", "n"})


def metric_display(key: str) -> Metric:
    """How a report shows a metric: its label, which way is better, its decimals (4 for losses and MCC)."""
    return Metric(
        key=key,
        label=METRIC_LABELS.get(key, key),
        lower_is_better=key in LOWER_IS_BETTER,
        neutral=key in NEUTRAL_METRICS,
        digits=4 if key.endswith("loss") or key == "mcc" else 2,
        count=key in COUNT_METRICS,
    )


_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    """One shared RougeScorer (rouge1, rouge2, rougeL; stemming on), built on first use."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, reference: str) -> float:
    """100.0 when the normalised strings are equal, else 0.0."""
    return 100.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 × 100 (both empty after normalisation → 100, one empty → 0)."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return 100.0 if pred_tokens == ref_tokens else 0.0
    common = Counter(pred_tokens) & Counter(ref_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 100.0 * (2 * precision * recall) / (precision + recall)


def _rouge(prediction: str, reference: str) -> dict[str, float]:
    scores = _rouge_scorer().score(reference, prediction)  # rouge_score takes (target, prediction)
    return {key: 100.0 * scores[key].fmeasure for key in _ROUGE_TYPES}


def sentence_rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure × 100 (rouge_score, Porter stemming)."""
    return _rouge(prediction, reference)["rougeL"]


@lru_cache(maxsize=1)
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU()


@lru_cache(maxsize=1)
def _chrf() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


def sentence_chrf(prediction: str, reference: str) -> float:
    """sacrebleu sentence chrF (character 6-grams, beta 2), 0–100."""
    import sacrebleu

    return float(sacrebleu.sentence_chrf(prediction, [reference]).score)


def corpus_statistics(metric: str, predictions: list[str], references: list[str]) -> list[list[float]]:
    """sacrebleu's per-sentence sufficient statistics for ``metric`` ("bleu" or "chrf").

    Summing rows over any subset of sentences and passing the sum to `score_from_statistics` gives
    exactly sacrebleu's corpus score of that subset (this is how sacrebleu's own bootstrap works).
    """
    scorer = {"bleu": _bleu, "chrf": _chrf}[metric]()
    stats = scorer._extract_corpus_statistics(list(predictions), [list(references)])
    return [[float(v) for v in row] for row in stats]


def score_from_statistics(metric: str, totals: Any) -> float:
    """The corpus ``metric`` ("bleu" or "chrf") from column sums of `corpus_statistics` rows."""
    scorer = {"bleu": _bleu, "chrf": _chrf}[metric]()
    values = [int(round(float(v))) for v in totals]
    return float(scorer._compute_score_from_stats(values).score)


def generation_metrics(
    predictions: list[str], references: list[str], *, detailed: bool = False
) -> dict[str, Any]:
    """Corpus-level and per-example metrics for generated text against one reference each.

    Returns ``{"rougeL", "rouge1", "rouge2", "bleu", "chrf", "exact_match", "token_f1", "n",
    "per_example"}``; ROUGE, EM and F1 are means of sentence scores, BLEU and chrF are sacrebleu
    corpus scores. Per example: rougeL, (sentence) bleu, exact_match, token_f1 — and with
    ``detailed=True`` also rouge1, rouge2 and (sentence) chrf.
    """
    import sacrebleu

    predictions = list(predictions)
    references = list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length ({len(predictions)} vs {len(references)})"
        )
    if not predictions:
        raise ValueError("generation_metrics needs at least one prediction/reference pair")

    per_example: list[dict[str, float]] = []
    sums = dict.fromkeys((*_ROUGE_TYPES, "exact_match", "token_f1"), 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        rouge = _rouge(pred, ref)
        em = exact_match(pred, ref)
        f1 = token_f1(pred, ref)
        for key in _ROUGE_TYPES:
            sums[key] += rouge[key]
        sums["exact_match"] += em
        sums["token_f1"] += f1
        row = {
            "rougeL": rouge["rougeL"],
            "bleu": float(sacrebleu.sentence_bleu(pred, [ref]).score),
            "exact_match": em,
            "token_f1": f1,
        }
        if detailed:
            row.update(rouge1=rouge["rouge1"], rouge2=rouge["rouge2"], chrf=sentence_chrf(pred, ref))
        per_example.append(row)

    n = len(predictions)
    return {
        "rougeL": sums["rougeL"] / n,
        "rouge1": sums["rouge1"] / n,
        "rouge2": sums["rouge2"] / n,
        "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(predictions, [references]).score),
        "exact_match": sums["exact_match"] / n,
        "token_f1": sums["token_f1"] / n,
        "n": n,
        "per_example": per_example,
    }


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(total_nll / total_tokens); ``inf`` when that overflows a float.

    Raises ValueError when ``total_tokens`` is not positive.
    """
    if total_tokens <= 0:
        raise ValueError(f"perplexity needs a positive token count, got {total_tokens}")
    mean_nll = float(total_nll) / total_tokens
    if math.isnan(mean_nll):
        return float("nan")
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return float("inf")


def classification_metrics(predictions: list[int], labels: list[int], label_names: list[str]) -> dict[str, Any]:
    """Classification scores (×100, except MCC in [-1, 1]) with scikit-learn.

    Keys: ``accuracy``, ``macro_f1``, ``macro_precision``, ``macro_recall``, ``weighted_f1``, ``mcc``,
    ``n``, ``confusion_matrix`` (rows = true label, columns = predicted, in ``label_names`` order),
    ``label_names`` and ``per_class`` ({name: {precision, recall, f1, support}}). A class that is
    never predicted (or never true) gets precision (recall) 0 rather than a warning.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        matthews_corrcoef,
        precision_recall_fscore_support,
    )

    predictions, labels = list(predictions), list(labels)
    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, average=None, zero_division=0
    )
    macro_p, macro_r, _, _ = precision_recall_fscore_support(
        labels, predictions, labels=ids, average="macro", zero_division=0
    )
    return {
        "accuracy": 100.0 * accuracy_score(labels, predictions),
        "macro_f1": 100.0 * f1_score(labels, predictions, labels=ids, average="macro", zero_division=0),
        "macro_precision": 100.0 * float(macro_p),
        "macro_recall": 100.0 * float(macro_r),
        "weighted_f1": 100.0 * f1_score(labels, predictions, labels=ids, average="weighted", zero_division=0),
        "mcc": float(matthews_corrcoef(labels, predictions)),
        "n": len(labels),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
        "label_names": list(label_names),
        "per_class": {
            str(name): {
                "precision": 100.0 * float(precision[i]),
                "recall": 100.0 * float(recall[i]),
                "f1": 100.0 * float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
    }
