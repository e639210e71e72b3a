"""Text-generation metrics, all on a 0–100 scale.

* Exact match and token F1 follow the official SQuAD v1.1 evaluation script (answer
  normalisation: lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace).
* ROUGE comes from `rouge_score` (Porter stemming on), averaged over sentences.
* BLEU comes from `sacrebleu` (corpus BLEU for the headline number, sentence BLEU per example).

Everything here runs offline; nothing is loaded from a hub.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any

__all__ = [
    "HEADLINE_METRICS",
    "LOWER_IS_BETTER",
    "METRIC_LABELS",
    "exact_match",
    "generation_metrics",
    "normalize_answer",
    "perplexity",
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
    "perplexity": "Perplexity",
    "eval_loss": "Eval loss",
}

# Metrics where a smaller value is an improvement (everything else: larger is better).
LOWER_IS_BETTER = frozenset({"perplexity", "eval_loss"})

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


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus-level and per-example metrics for generated text against one reference each.

    Returns ``{"rougeL", "rouge1", "rouge2", "bleu", "exact_match", "token_f1", "n", "per_example"}``;
    ROUGE, EM and F1 are means of sentence scores, BLEU is sacrebleu corpus BLEU.
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
        per_example.append(
            {
                "rougeL": rouge["rougeL"],
                "bleu": float(sacrebleu.sentence_bleu(pred, [ref]).score),
                "exact_match": em,
                "token_f1": f1,
            }
        )

    n = len(predictions)
    return {
        "rougeL": sums["rougeL"] / n,
        "rouge1": sums["rouge1"] / n,
        "rouge2": sums["rouge2"] / n,
        "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
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
    """Accuracy and macro F1 (×100) with scikit-learn, plus the confusion matrix (rows = true label)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    ids = list(range(len(label_names)))
    return {
        "accuracy": 100.0 * accuracy_score(labels, predictions),
        "macro_f1": 100.0 * f1_score(labels, predictions, labels=ids, average="macro", zero_division=0),
        "n": len(labels),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
        "label_names": list(label_names),
    }
