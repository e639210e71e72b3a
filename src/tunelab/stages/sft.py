"""Supervised instruction tuning: prompt → response rows, loss on the response, judged by generation.

The recipe, top to bottom: load data → format and tokenize → evaluate the base model → apply the
method → train → save → evaluate the tuned model on the same held-out rows.
"""

from __future__ import annotations

from typing import Any

from tunelab.data.shapes import ROW_SHAPES
from tunelab.data.templates import PromptFormat
from tunelab.evaluation.bootstrap import mean_metric
from tunelab.evaluation.generation_eval import evaluate_generation, prediction_rows
from tunelab.evaluation.metrics import HEADLINE_METRICS
from tunelab.evaluation.probes import (
    answer_probes,
    load_probes,
    probe_regression,
    probe_results,
    training_answer_set,
)
from tunelab.progress import info
from tunelab.runs.artifacts import write_predictions
from tunelab.runs.layout import write_json_atomic
from tunelab.stages.base import Context, Stage
from tunelab.stages.common import (
    held_out,
    load_base_model,
    load_data,
    note_truncation,
    setup,
    train_and_save,
    write_results,
)


def tokenize(ctx: Context, fmt: PromptFormat, examples: list, split: str) -> list[dict[str, Any]]:
    max_length = ctx.cfg.data.max_length
    rows, truncated = [], 0
    for enc in fmt.encode_many(examples, ctx.tokenizer, max_length):
        truncated += enc["truncated"]
        if any(label != -100 for label in enc["labels"][1:]):  # a row whose answer was cut away teaches nothing
            rows.append({"input_ids": enc["input_ids"], "labels": enc["labels"]})
    note_truncation(ctx, truncated, len(examples), split)
    dropped = len(examples) - len(rows)
    if dropped:
        ctx.notes.append(f"{dropped} {split} rows had no response tokens left after truncation and were skipped")
    return rows


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    setup(ctx)
    splits = load_data(ctx)
    fmt = PromptFormat.build(
        ctx.tokenizer,
        shape=splits.shape,
        template=cfg.data.template,
        system_prompt=cfg.data.system_prompt,
        train_on_prompt=cfg.data.train_on_prompt,
    )
    for warning in fmt.warnings(ctx.tokenizer):
        ctx.notes.append(warning)
        info(f"[yellow]template[/yellow] {warning}")
    train_rows = tokenize(ctx, fmt, splits.train, "train")
    eval_rows = tokenize(ctx, fmt, splits.validation, "validation")
    test = held_out(ctx, splits)
    ev = cfg.evaluation
    probes = load_probes(ev.probes, base_dir=cfg._source_dir) if ev.enabled else []  # a bad file: before loading

    model = load_base_model(ctx)
    base = None
    if ev.enabled and ev.compare_base and test:
        if ctx.resume and ctx.run.base_eval_json.is_file():
            import json

            base = json.loads(ctx.run.base_eval_json.read_text())
        else:
            base = evaluate_generation(model, ctx.tokenizer, fmt, test, ev, label="base")
            base["probes"] = _probe_answers(ctx, model, fmt, probes, "base")
            write_json_atomic(ctx.run.base_eval_json, base)

    trained = train_and_save(ctx, model, train_rows, eval_rows, fmt)
    model = trained["model"]
    tuned = evaluate_generation(model, ctx.tokenizer, fmt, test, ev, label="tuned") if ev.enabled and test else None
    if tuned is not None:
        write_predictions(ctx.run.predictions, prediction_rows(test, fmt, base, tuned))
    extra = {}
    if probes:
        answers = {"base": base["probes"]} if base and base.get("probes") else {}
        answers["tuned"] = _probe_answers(ctx, model, fmt, probes, "tuned")
        found = probe_results(probes, answers, training_answer_set([fmt.reference(ex) for ex in splits.train]))
        write_json_atomic(ctx.run.probes_json, found)
        extra["probes"] = found["summary"]
        regression = probe_regression(found)
        if regression:
            info(f"[yellow]probes[/yellow] {regression}")
            extra["probe_warning"] = regression
    paired = None
    if base and tuned and base.get("per_example"):
        key = STAGE.headline_metrics[0]
        paired = (mean_metric(key), [r[key] for r in base["per_example"]], [r[key] for r in tuned["per_example"]])
    return write_results(
        ctx,
        trained,
        base=base["metrics"] if base else None,
        tuned=tuned["metrics"] if tuned else None,
        n_test=len(test),
        paired=paired,
        extra=extra,
    )


def _probe_answers(ctx: Context, model: Any, fmt: PromptFormat, probes: list[str], label: str) -> list[dict]:
    ev = ctx.cfg.evaluation
    return answer_probes(model, ctx.tokenizer, fmt, probes, max_new_tokens=ev.max_new_tokens,
                         batch_size=ev.generation_batch_size, label=label)  # fmt: skip


STAGE = Stage(name="sft", summary="supervised instruction tuning on prompt/response rows", run=run,
              model_kind="causal_lm", loss="causal_lm", headline_metrics=tuple(HEADLINE_METRICS),
              shapes=tuple(name for name, shape in ROW_SHAPES.items() if shape.kind in ("pair", "chat")))  # fmt: skip
