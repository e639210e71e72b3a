"""Sequence classification: text → label with a classification head on an encoder or a decoder LLM.

The recipe: load labelled rows → map labels to ids (stored with the run) → tokenize → evaluate the
untrained head → apply the method → train → save → evaluate on the same held-out rows.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.evaluation.bootstrap import mean_metric
from tunelab.evaluation.metrics import classification_metrics
from tunelab.progress import info
from tunelab.runs.artifacts import BASE, TUNED, Prediction, write_predictions
from tunelab.stages.base import Context, Stage
from tunelab.stages.common import held_out, load_base_model, load_data, setup, train_and_save, write_results


class ClassifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[str] | None = Field(None, description="label order (default: sorted labels found in the data)")
    class_weights: Literal["none", "balanced"] = Field("none", description="balanced: weight classes by 1/frequency")


def label_names(ctx: Context, train: list, given: list[str] | None) -> list[str]:
    found = sorted({str(ex.fields["label"]) for ex in train}, key=_natural)
    if given is None:
        if len(found) < 2:
            raise TunelabError(
                f"only one label ({found[0] if found else 'none'}) in the training data",
                file=ctx.cfg.data.train,
                field="label",
                expected="at least two classes",
            )
        return found
    unknown = [label for label in found if label not in given]
    if unknown:
        raise TunelabError(
            f"label {unknown[0]!r} is not in classify.labels", file=ctx.cfg.data.train, field="label",
            expected=f"one of {', '.join(given)}",
        )
    return list(given)


def _natural(label: str) -> tuple:
    return (0, int(label), "") if re.fullmatch(r"-?[0-9]+", label) else (1, 0, label)


def encode(ctx: Context, examples: list, label_ids: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for ex in examples:
        label = str(ex.fields["label"])
        if label not in label_ids:
            raise TunelabError(
                f"label {label!r} does not occur in the training data", file=ex.source, field="label",
                expected=f"one of {', '.join(label_ids)}",
            )
        enc = ctx.tokenizer(ex.text, truncation=True, max_length=ctx.cfg.data.max_length)
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": label_ids[label]})
    return rows


def evaluate(model: Any, ctx: Context, examples: list, rows: list[dict[str, Any]], labels: list[str],
             label: str) -> dict[str, Any]:  # fmt: skip
    from tunelab.inference.scoring import class_probabilities

    probs = class_probabilities(model, ctx.tokenizer, [ex.text for ex in examples], batch_size=ctx.cfg.evaluation.batch_size,
                                max_length=ctx.cfg.data.max_length, description=f"classify {label}")
    predictions = [max(range(len(p)), key=p.__getitem__) for p in probs]
    metrics = classification_metrics(predictions, [r["labels"] for r in rows], labels)
    return {"metrics": metrics, "predictions": predictions, "probabilities": probs}


def class_weights(rows: list[dict[str, Any]], n: int) -> list[float]:
    """'balanced' weights: total / (classes × count), as in scikit-learn."""
    counts = Counter(r["labels"] for r in rows)
    return [len(rows) / (n * counts[i]) if counts[i] else 0.0 for i in range(n)]


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    options = cfg.task_options()
    setup(ctx)
    splits = load_data(ctx)
    labels = label_names(ctx, splits.train, options.labels)
    label_ids = {name: i for i, name in enumerate(labels)}
    if ctx.writes:
        ctx.run.write_labels(labels)
    train_rows = encode(ctx, splits.train, label_ids)
    eval_rows = encode(ctx, splits.validation, label_ids)
    test = held_out(ctx, splits)
    test_rows = encode(ctx, test, label_ids)
    counts = Counter(r["labels"] for r in train_rows)
    ctx.notes.append("labels: " + ", ".join(f"{name} ({counts[i]} train rows)" for i, name in enumerate(labels)))
    weights = None
    if options.class_weights == "balanced":
        weights = class_weights(train_rows, len(labels))
        info(f"[cyan]classify[/cyan] class weights {[round(w, 3) for w in weights]}")

    model = load_base_model(ctx, labels)
    ev = cfg.evaluation
    run_base = ev.enabled and ev.compare_base and test_rows
    base = evaluate(model, ctx, test, test_rows, labels, "untrained head") if run_base else None
    trained = train_and_save(ctx, model, train_rows, eval_rows, None, loss_options={"class_weights": weights})
    tuned = evaluate(trained["model"], ctx, test, test_rows, labels, "tuned") if ev.enabled and test_rows else None
    if tuned is not None:
        _write_predictions(ctx, test, labels, base, tuned)
    paired = None
    if base and tuned:
        refs = [r["labels"] for r in test_rows]
        base_correct, tuned_correct = ([100.0 * (p == y) for p, y in zip(m["predictions"], refs, strict=True)]
                                       for m in (base, tuned))  # fmt: skip
        paired = (mean_metric("accuracy"), base_correct, tuned_correct)
    return write_results(
        ctx,
        trained,
        base=base["metrics"] if base else None,
        tuned=tuned["metrics"] if tuned else None,
        n_test=len(test_rows),
        paired=paired,
    )


def _write_predictions(ctx: Context, examples: list, labels: list[str], base: Any, tuned: Any) -> None:
    rows = []
    for i, ex in enumerate(examples):
        row = Prediction(
            source=ex.source,
            input=ex.text,
            reference=str(ex.fields["label"]),
            outputs={TUNED: labels[tuned["predictions"][i]]},
            probabilities={TUNED: dict(zip(labels, (round(p, 4) for p in tuned["probabilities"][i]), strict=True))},
        )
        if base is not None:
            row.outputs = {BASE: labels[base["predictions"][i]], **row.outputs}
        rows.append(row)
    write_predictions(ctx.run.predictions, rows)


STAGE = Stage(name="classify", summary="sequence classification with a classification head", run=run,
              model_kind="seq_cls", shapes=("classification",), loss="classification",
              headline_metrics=("accuracy", "macro_f1"), options=ClassifyOptions)  # fmt: skip
