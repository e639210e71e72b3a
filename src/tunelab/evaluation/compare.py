"""Put the same held-out rows through several models and say which is better, by how much, and
whether the difference is real.

Used by `tunelab eval RUN [--base]` (one run, optionally against its base model) and
`tunelab compare RUN_A RUN_B … [base]`. The models are finished runs (their trained weights, their
own prompt format) and ``base``: the base model of the first run, prompted with that run's format,
exactly as training evaluated it.

For every model: batched greedy outputs (or the outputs a run already wrote to
``predictions.jsonl`` for the very same rows and token limit — ``regenerate=True`` forces fresh
ones), the perplexity of the references, and every metric of `generation_metrics`. Every other
model is then compared with the baseline (``base`` when present, else the first model) with a
paired bootstrap 95% interval per metric. Error analysis: a per-example table, the regressions
(baseline better than the other model on the primary metric), the worst N outputs of each model,
and per-slice scores when the rows carry a field such as chatterbot's ``topic``.

Classification runs (``task: classify``) are compared on their predicted labels instead: accuracy,
macro precision/recall/F1 and MCC, each with a bootstrap interval recomputed from the resampled
confusion matrix, the confusion matrices in the report, and "regressions" = rows the baseline got
right and the other model got wrong. Pretraining runs (plain text) are compared on perplexity.

Written to the output folder: ``comparison.json``, ``comparison.csv`` (one row per example),
``predictions.jsonl`` and ``report.html``. The parts: `rows` (which rows), `outputs` (the models'
outputs), `scoring` (metrics and the interval table), `analysis` (regressions, worst N, slices),
`views` (the report's sections).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.analysis import Comparison, analyse
from tunelab.evaluation.outputs import ModelResult, model_names, run_models
from tunelab.evaluation.probes import load_probes, probe_results, probe_section, training_answer_set
from tunelab.evaluation.rows import EvalData, file_data, held_out_data
from tunelab.evaluation.scoring import PER_EXAMPLE, score
from tunelab.evaluation.views import comparison_view
from tunelab.reporting import Report
from tunelab.runs.artifacts import BASE, Prediction, write_predictions
from tunelab.runs.layout import write_json_atomic
from tunelab.runs.loading import run_config

__all__ = [
    "BASE",
    "Comparison",
    "EvalData",
    "compare",
    "file_data",
    "held_out_data",
]


def compare(
    models: list[str],
    *,
    data: str | Path | None = None,
    out_dir: str | Path | None = None,
    baseline: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    max_examples: int | None = None,
    regenerate: bool = False,
    with_perplexity: bool = True,
    metric: str = "rougeL",
    worst: int = 10,
    slice_by: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
    title: str | None = None,
) -> Comparison:
    """Evaluate ``models`` (run directories and/or "base") on the same rows and write the comparison."""
    from tunelab.models.loading import load_tokenizer
    from tunelab.progress import quiet_libraries

    quiet_libraries()
    if not models:
        raise TunelabError("no models to compare", expected="one or more run directories, and optionally 'base'")
    named = model_names([str(m) for m in models])
    runs = [p for _, p in named if p is not None]
    if not runs:
        raise TunelabError("'base' needs a run to take the base model from", expected="a run directory too")
    first_run, first_cfg = run_config(runs[0])
    evaluation = first_cfg.evaluation
    max_new_tokens = max_new_tokens or evaluation.max_new_tokens
    rows = (
        file_data(data, runs[0], max_examples=max_examples)
        if data is not None
        else held_out_data(runs[0], max_examples=max_examples)
    )
    generative = rows.kind != "text"
    batch_size = batch_size or (evaluation.generation_batch_size if rows.kind == "generation" else evaluation.batch_size)
    probes = load_probes(evaluation.probes, base_dir=first_cfg._source_dir) if rows.kind == "generation" else []
    if rows.kind == "generation" and metric not in PER_EXAMPLE:
        raise TunelabError(f"unknown metric {metric!r}", field="--metric", expected=f"one of {', '.join(PER_EXAMPLE)}")
    names = [n for n, _ in named]
    if baseline is not None and baseline not in names:
        raise TunelabError(f"baseline {baseline!r} is not one of the models", field="--baseline", expected=", ".join(names))
    if baseline is None and len(names) > 1:
        baseline = BASE if BASE in names else names[0]
    if baseline is not None:  # the baseline is the first column everywhere
        named = sorted(named, key=lambda item: item[0] != baseline)
        names = [n for n, _ in named]
    results = [
        ModelResult(name=n, run_dir=p if p is not None else first_run.path, is_base=p is None) for n, p in named
    ]
    run_models(
        results,
        rows,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        regenerate=regenerate,
        with_perplexity=with_perplexity,
        generative=generative,
        probes=probes,
    )
    for r in results:
        score(r, rows, generative)
    primary = {"generation": metric, "classification": "correct"}.get(rows.kind, "perplexity")
    notes = [f"{r.name}: outputs {r.origin}" for r in results if r.origin]
    if not with_perplexity:
        notes.append("perplexity skipped (--no-perplexity)")
    if out_dir is None:
        if len(runs) == 1 and len(names) <= 2:
            out_dir = runs[0] / "eval" / rows.key
        else:
            out_dir = runs[0].parent / ("compare-" + "-vs-".join(_slug(n) for n in names))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "models": {n: str(p) if p is not None else f"base model of {runs[0]}" for n, p in named},
        "data": str(data) if data is not None else f"held-out split of {runs[0]}",
        "rows": len(rows),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "decoding": "greedy",
        "baseline": baseline,
        "primary metric": primary,
        "bootstrap resamples": resamples,
        "seed": seed,
    }
    comp = analyse(results, rows, baseline=baseline, primary=primary, generative=generative, worst=worst,
                   slice_by=slice_by, resamples=resamples, seed=seed, out_dir=out, notes=notes)  # fmt: skip
    write_json_atomic(out / "comparison.json", {**comp.to_json(), "settings": settings})
    _write_csv(out / "comparison.csv", rows, results)
    write_predictions(out / "predictions.jsonl", _prediction_rows(rows, results))
    if probes:
        comp.probes = _probe_results(probes, results, first_run, first_cfg)
        write_json_atomic(out / "probes.json", comp.probes)
    tokenizer = load_tokenizer(first_run.tokenizer_dir)
    if title is None:
        title = f"tunelab comparison: {' vs '.join(names)}" if len(names) > 1 else f"tunelab evaluation: {names[0]}"
    view = comparison_view(comp, out, tokenizer, max_new_tokens, max(worst, 20), resamples=resamples)
    if comp.probes:
        view.probes = probe_section(comp.probes)
    Report(title, view.page(comp.notes, settings)).write(comp.report)
    return comp


def _probe_results(probes: list[str], results: list[ModelResult], run: Any, cfg: Any) -> dict[str, Any]:
    """Every model's answers to the probes, flagged (copied: against the first run's training answers)."""
    from tunelab.data.splits import splits_from_config

    fmt = run.read_format()
    train = splits_from_config(cfg.data, cfg._source_dir).train
    answers = training_answer_set([fmt.reference(ex) for ex in train])
    return probe_results(probes, {r.name: r.probe_answers for r in results}, answers)


def _prediction_rows(data: EvalData, results: list[ModelResult]) -> list[Prediction]:
    """One `Prediction` per row, every model's output, scores and stats keyed by its name."""
    rows = []
    for i in range(len(data)):
        stats = {}
        for r in results:
            s = {"new_tokens": r.new_tokens[i], "hit_limit": r.hit_limit[i]} if r.new_tokens else {}
            if r.ref_nll:
                s.update(ref_nll=r.ref_nll[i][0], ref_tokens=r.ref_nll[i][1])
            if s:
                stats[r.name] = s
        rows.append(
            Prediction(
                source=data.sources[i],
                input=data.inputs[i],
                reference=data.references[i],
                outputs={r.name: r.outputs[i] for r in results if r.outputs},
                scores={r.name: r.per_example[i] for r in results if r.per_example},
                stats=stats,
                probabilities={r.name: r.probabilities[i] for r in results if r.probabilities},
                meta=dict(data.meta[i]),
            )
        )
    return rows


def _write_csv(path: Path, data: EvalData, results: list[ModelResult]) -> None:
    meta_keys = sorted({k for m in data.meta for k in m})
    header = ["id", "source", "input", "reference", *meta_keys]
    for r in results:
        if r.outputs:
            header.append(f"{r.name}:output")
        header += [f"{r.name}:{k}" for k in (r.per_example[0] if r.per_example else {})]
        if r.new_tokens:
            header += [f"{r.name}:output_tokens", f"{r.name}:hit_token_limit"]
        if r.ref_nll:
            header.append(f"{r.name}:reference_nll_per_token")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(data)):
            line: list[Any] = [i + 1, data.sources[i], data.inputs[i], data.references[i]]
            line += [data.meta[i].get(k, "") for k in meta_keys]
            for r in results:
                if r.outputs:
                    line.append(r.outputs[i])
                if r.per_example:
                    line += [round(v, 4) for v in r.per_example[i].values()]
                if r.new_tokens:
                    line += [r.new_tokens[i], int(r.hit_limit[i])]
                if r.ref_nll:
                    v, t = r.ref_nll[i]
                    line.append(round(v / t, 4) if t else "")
            w.writerow(line)
    os.replace(tmp, path)


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return keep.strip("-") or "model"
