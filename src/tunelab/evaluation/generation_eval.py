"""Evaluate a generative model on held-out rows: batched greedy answers scored against references,
plus the model's perplexity of the references themselves (teacher-forced, response tokens only)."""

from __future__ import annotations

import time
from typing import Any

from tunelab.evaluation.metrics import generation_metrics, perplexity
from tunelab.inference.decoding import generate_from_ids
from tunelab.inference.prompts import display_input
from tunelab.inference.scoring import reference_nll
from tunelab.runs.artifacts import BASE, TUNED, Prediction

__all__ = ["evaluate_generation", "prediction_rows"]


def evaluate_generation(model: Any, tokenizer: Any, fmt: Any, examples: list, options: Any, *, label: str) -> dict:
    """Generate for each example's prompt and score it; returns metrics and the outputs."""
    prompts = [fmt.prompt_ids(ex, tokenizer) for ex in examples]
    references = [fmt.reference(ex) for ex in examples]
    started = time.time()
    outputs = generate_from_ids(
        model,
        tokenizer,
        prompts,
        max_new_tokens=options.max_new_tokens,
        batch_size=options.generation_batch_size,
        description=f"evaluate {label}",
    )
    seconds = time.time() - started
    scores = generation_metrics([o.text for o in outputs], references)
    per_example = scores.pop("per_example")
    scores["mean_output_tokens"] = round(sum(o.new_tokens for o in outputs) / len(outputs), 1)
    scores["hit_token_limit"] = sum(o.hit_limit for o in outputs)
    nll = reference_nll(model, tokenizer, fmt, examples, batch_size=options.batch_size)
    total_tokens = sum(t for _, t in nll)
    if total_tokens:
        scores["perplexity"] = perplexity(sum(v for v, _ in nll), total_tokens)
    return {
        "label": label,
        "metrics": scores,
        "outputs": [o.text for o in outputs],
        "per_example": per_example,
        "stats": [
            {"new_tokens": o.new_tokens, "hit_limit": o.hit_limit, "ref_nll": v, "ref_tokens": t}
            for o, (v, t) in zip(outputs, nll, strict=True)
        ],
        "seconds": round(seconds, 1),
    }


def prediction_rows(examples: list, fmt: Any, base: dict | None, tuned: dict) -> list[Prediction]:
    """A run's predictions: per held-out row the tuned (and base) output, scores and stats, from two
    `evaluate_generation` results; write them with `tunelab.runs.write_predictions`."""
    models = [(BASE, base), (TUNED, tuned)] if base is not None else [(TUNED, tuned)]
    rows = []
    for i, ex in enumerate(examples):
        rows.append(
            Prediction(
                source=ex.source,
                input=display_input(ex),
                reference=fmt.reference(ex),
                outputs={name: ev["outputs"][i] for name, ev in models},
                scores={name: ev["per_example"][i] for name, ev in models},
                stats={name: ev["stats"][i] for name, ev in models if ev.get("stats")},
                meta=dict(ex.meta or {}),
            )
        )
    return rows
