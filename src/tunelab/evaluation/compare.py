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
``predictions.jsonl`` and ``report.html``.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.progress import info

__all__ = [
    "BASE",
    "Comparison",
    "EvalData",
    "compare",
    "file_data",
    "held_out_data",
]

BASE = "base"
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
MIN_SLICE_FOR_CI = 5  # slices with fewer rows get the difference without an interval
METRIC_ORDER = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "mcc", *GENERATION_METRICS)
PER_EXAMPLE = ("rougeL", "rouge1", "rouge2", "chrf", "bleu", "exact_match", "token_f1")


@dataclass
class EvalData:
    """The rows every model answers."""

    examples: list[Any]
    inputs: list[str]
    references: list[str]
    sources: list[str]
    meta: list[dict[str, Any]]
    description: str  # for people: "held-out split of runs/demo (106 rows)"
    key: str  # for folder names: "heldout" or the file's stem
    kind: str = "generation"  # "generation" | "text" (perplexity only) | "classification"
    label_names: list[str] | None = None  # classification: the run's labels, in id order

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class ModelResult:
    name: str
    run_dir: Path  # the run whose weights (or, for base, whose format) are used
    is_base: bool
    outputs: list[str] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    hit_limit: list[bool] = field(default_factory=list)
    ref_nll: list[tuple[float, int]] | None = None
    origin: str = ""
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    per_example: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Comparison:
    out_dir: Path
    models: list[str]
    baseline: str | None
    data: EvalData
    primary: str
    table: list[dict[str, Any]]
    regressions: dict[str, list[dict[str, Any]]]
    worst: dict[str, list[dict[str, Any]]]
    slices: dict[str, Any] | None
    counts: dict[str, dict[str, int]]
    notes: list[str]
    report: Path
    results: dict[str, ModelResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "baseline": self.baseline,
            "data": self.data.description,
            "n": len(self.data),
            "primary_metric": self.primary,
            "metrics": self.table,
            "counts": self.counts,
            "regressions": self.regressions,
            "worst": self.worst,
            "slices": self.slices,
            "origins": {name: r.origin for name, r in self.results.items()},
            "generation_seconds": {name: r.seconds for name, r in self.results.items()},
            "notes": self.notes,
        }


# -- which rows ------------------------------------------------------------------------------------


def _run_config(run_dir: Path) -> tuple[Any, Any]:
    from tunelab.config import load_config
    from tunelab.run import RunDir

    run = RunDir(run_dir)
    run.require_complete()
    cfg = load_config(run.config)
    src = run.read_status().get("source_dir")
    if src:
        cfg._source_dir = Path(src)
    return run, cfg


def _eval_data(examples: list, fmt: Any, description: str, key: str, run_dir: Path | None = None) -> EvalData:
    from tunelab.evaluation.generation_eval import _prompt_of

    if fmt is None:  # a classification run: text → label
        labels_file = (run_dir or Path(".")) / "labels.json"
        names = json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else None
        refs = [str(ex.fields.get("label", "")) for ex in examples]
        unknown = sorted({r for r in refs if names is not None and r not in names})
        if unknown:
            raise TunelabError(
                f"label {unknown[0]!r} is not one of the run's labels", file=examples[0].source if examples else None,
                field="label", expected=f"one of {', '.join(names or [])}",
            )
        return EvalData(
            examples=examples,
            inputs=[ex.text or "" for ex in examples],
            references=refs,
            sources=[ex.source for ex in examples],
            meta=[dict(ex.meta or {}) for ex in examples],
            description=description,
            key=key,
            kind="classification",
            label_names=names,
        )
    return EvalData(
        examples=examples,
        inputs=[_prompt_of(ex) for ex in examples],
        references=[fmt.reference(ex) if fmt.kind != "text" else (ex.text or "") for ex in examples],
        sources=[ex.source for ex in examples],
        meta=[dict(ex.meta or {}) for ex in examples],
        description=description,
        key=key,
        kind="text" if fmt.kind == "text" else "generation",
    )


def _run_format(run: Any) -> Any:
    from tunelab.data.templates import PromptFormat

    return PromptFormat.load(run.template) if run.template.is_file() else None


def held_out_data(run_dir: str | Path, *, max_examples: int | None = None) -> EvalData:
    """The test split a run was evaluated on, rebuilt from its config (same seed, same rows)."""
    from tunelab.data.splits import splits_from_config

    run, cfg = _run_config(Path(run_dir))
    splits = splits_from_config(cfg.data, cfg._source_dir)
    limit = max_examples or cfg.evaluation.max_examples
    test = splits.test[:limit] if limit else splits.test
    if not test:
        raise TunelabError(
            "the run has no held-out test rows", file=str(run.path), expected="a run with a test split, or --data FILE"
        )
    return _eval_data(test, _run_format(run), f"held-out split of {run.path} ({len(test)} rows)", "heldout", run.path)


def file_data(path: str | Path, run_dir: str | Path, *, max_examples: int | None = None) -> EvalData:
    """Rows from any supported data file, in the shape the run was trained on (its column mapping applies)."""
    from tunelab.data.splits import load_examples

    run, cfg = _run_config(Path(run_dir))
    p = Path(path)
    if not str(path).startswith("builtin:") and not p.is_file():
        raise TunelabError("data file not found", file=str(path), expected="a .jsonl/.json/.csv/.tsv/.parquet file")
    try:
        examples, _shape, _ = load_examples(str(path), columns=cfg.data.columns or None)
    except TunelabError as exc:
        if not cfg.data.columns:
            raise
        # the run's column mapping may not fit this file; try it as is
        try:
            examples, _shape, _ = load_examples(str(path))
        except TunelabError:
            raise exc from None
    if max_examples:
        examples = examples[:max_examples]
    stem = Path(str(path).replace("builtin:", "")).stem or "data"
    return _eval_data(examples, _run_format(run), f"{path} ({len(examples)} rows)", stem, run.path)


# -- model outputs ---------------------------------------------------------------------------------


def _model_names(specs: list[str]) -> list[tuple[str, Path | None]]:
    """(display name, run dir or None for base); names unique."""
    out: list[tuple[str, Path | None]] = []
    seen: set[str] = set()
    for spec in specs:
        if spec == BASE:
            if BASE in seen:
                raise TunelabError("'base' given twice", field="runs", expected="each model once")
            out.append((BASE, None))
            seen.add(BASE)
            continue
        path = Path(spec)
        name = path.name or str(path)
        if name == BASE:
            name = f"{BASE} ({path})"
        n = 2
        while name in seen:
            name, n = f"{path.name} ({n})", n + 1
        seen.add(name)
        out.append((name, path))
    return out


def _read_predictions(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "predictions.jsonl"
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    return []
    return rows


def _reuse(result: ModelResult, data: EvalData, cfg: Any, max_new_tokens: int, tokenizer: Any) -> bool:
    """Fill outputs from the run's predictions.jsonl when it holds exactly these rows at this token limit."""
    if data.kind == "generation" and cfg.evaluation.max_new_tokens != max_new_tokens:
        return False
    field_name = BASE if result.is_base else "tuned"
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for row in _read_predictions(result.run_dir):
        if field_name in row and isinstance(row.get(field_name), str):
            by_key.setdefault((row.get("input", ""), row.get("reference", "")), row)
    if not by_key:
        return False
    rows = [by_key.get((inp, ref)) for inp, ref in zip(data.inputs, data.references, strict=True)]
    if any(r is None for r in rows):
        return False
    estimated = False
    nll: list[tuple[float, int]] = []
    for row in rows:
        assert row is not None
        text = row[field_name]
        stats = row.get(f"{field_name}_stats") or {}
        result.outputs.append(text)
        if data.kind == "classification":
            continue
        if "new_tokens" in stats:
            result.new_tokens.append(int(stats["new_tokens"]))
            result.hit_limit.append(bool(stats["hit_limit"]))
        else:  # older runs: re-count the tokens of the decoded text
            estimated = True
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
            result.new_tokens.append(n)
            result.hit_limit.append(n >= max_new_tokens)
        if "ref_nll" in stats:
            nll.append((float(stats["ref_nll"]), int(stats["ref_tokens"])))
    result.ref_nll = nll if len(nll) == len(rows) else None
    result.origin = f"reused from {result.run_dir / 'predictions.jsonl'}"
    if estimated:
        result.origin += " (output lengths re-counted from the text)"
    return True


def _load_model(result: ModelResult, run_cfg: Any) -> tuple[Any, Any, Any]:
    """(model, tokenizer, fmt) of a run's trained model, or of the base model with the run's format."""
    from tunelab import api

    if not result.is_base:
        loaded = api.load_run(result.run_dir)
        return loaded.model, loaded.tokenizer, loaded.fmt
    from tunelab.data.templates import PromptFormat
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.progress import quiet_libraries
    from tunelab.run import RunDir
    from tunelab.stages.registry import TASKS

    quiet_libraries()
    run = RunDir(result.run_dir)
    tokenizer = load_tokenizer(run.tokenizer_dir)
    if not run.template.is_file():
        raise TunelabError(
            "the base model of a classification run is its untrained head, which only the run's own "
            "predictions.jsonl holds for its held-out rows",
            file=str(run.path),
            expected="its held-out split (no --data) without --regenerate, or compare runs only",
        )
    path = resolve_model(run_cfg.model.name).path
    try:
        from tunelab.stages.common import base_model_kwargs
        from tunelab.training.trainer import choose_precision

        kwargs = base_model_kwargs(run_cfg, choose_precision(run_cfg.training.precision), tokenizer, None)
    except (ImportError, TypeError):
        kwargs = {"trust_remote_code": run_cfg.model.trust_remote_code}
    model = TASKS[run_cfg.task].load_model(path, **kwargs)
    model.eval()
    return model, tokenizer, PromptFormat.load(run.template)


def _score(result: ModelResult, data: EvalData, generative: bool) -> None:
    from tunelab.evaluation.metrics import classification_metrics, generation_metrics, perplexity

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


def _run_models(
    results: list[ModelResult],
    data: EvalData,
    *,
    first_cfg: Any,
    max_new_tokens: int,
    batch_size: int,
    regenerate: bool,
    with_perplexity: bool,
    generative: bool,
) -> None:
    from tunelab.evaluation.generation_eval import reference_nll
    from tunelab.inference.generation import generate_from_ids
    from tunelab.models.loading import load_tokenizer

    for result in results:
        run, cfg = _run_config(result.run_dir)
        if result.is_base:
            cfg = first_cfg
        reused = False
        if generative and not regenerate:
            reused = _reuse(result, data, cfg, max_new_tokens, load_tokenizer(run.tokenizer_dir))
        if data.kind == "classification":
            if not reused:
                _classify(result, data, cfg, batch_size)
            continue
        need_nll = with_perplexity and result.ref_nll is None
        need_gen = generative and not reused
        if not (need_gen or need_nll):
            continue
        info(f"[cyan]evaluate[/cyan] {result.name}")
        model, tokenizer, fmt = _load_model(result, cfg)
        try:
            if need_gen:
                prompts = [fmt.prompt_ids(ex, tokenizer) for ex in data.examples]
                started = time.time()
                outs = generate_from_ids(
                    model,
                    tokenizer,
                    prompts,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    description=f"generate {result.name}",
                )
                result.seconds = round(time.time() - started, 1)
                result.outputs = [o.text for o in outs]
                result.new_tokens = [o.new_tokens for o in outs]
                result.hit_limit = [o.hit_limit for o in outs]
                result.origin = f"generated (greedy, max_new_tokens={max_new_tokens}, batch_size={batch_size})"
            if need_nll:
                result.ref_nll = reference_nll(model, tokenizer, fmt, data.examples, batch_size=batch_size)
        finally:
            del model
            gc.collect()


def _classify(result: ModelResult, data: EvalData, cfg: Any, batch_size: int) -> None:
    """Predicted labels of a classification run's model (batched, padded, argmax of the logits)."""
    import torch

    from tunelab import api

    if result.is_base:
        _load_model(result, cfg)  # raises: the untrained head cannot be rebuilt
    loaded = api.load_run(result.run_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    names = loaded.labels or data.label_names or []
    device = next(model.parameters()).device
    started = time.time()
    try:
        for start in range(0, len(data), batch_size):
            texts = data.inputs[start : start + batch_size]
            batch = tokenizer(texts, truncation=True, max_length=cfg.data.max_length, padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}).logits
            result.outputs += [names[i] for i in logits.argmax(dim=-1).tolist()]
    finally:
        del model
        gc.collect()
    result.seconds = round(time.time() - started, 1)
    result.origin = f"predicted (batch_size={batch_size})"


# -- statistics ------------------------------------------------------------------------------------


def _metric_stats(result: ModelResult, data: EvalData) -> dict[str, tuple[Any, list]]:
    """metric → (MetricSpec, per-example statistics) for the bootstrap."""
    from tunelab.evaluation import bootstrap as B
    from tunelab.evaluation.metrics import corpus_statistics

    out: dict[str, tuple[Any, list]] = {}
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


def _table(
    results: list[ModelResult], baseline: str | None, data: EvalData, resamples: int, seed: int
) -> list[dict[str, Any]]:
    from tunelab.evaluation import bootstrap as B

    weights = B.resample_weights(len(data), resamples, seed)
    stats = {r.name: _metric_stats(r, data) for r in results}
    base_stats = stats.get(baseline) if baseline else None
    rows = []
    for metric in METRIC_ORDER:
        if not any(metric in s for s in stats.values()):
            continue
        row: dict[str, Any] = {"metric": metric, "values": {}, "intervals": {}, "deltas": {}}
        for r in results:
            if metric not in stats[r.name]:
                row["values"][r.name] = None
                continue
            spec, st = stats[r.name][metric]
            ci = B.bootstrap_interval(spec, st, weights=weights)
            row["values"][r.name] = ci["value"]
            row["intervals"][r.name] = {"low": ci["low"], "high": ci["high"]}
            if base_stats is not None and r.name != baseline and metric in base_stats:
                row["deltas"][r.name] = B.paired_bootstrap(spec, base_stats[metric][1], st, weights=weights)
        rows.append(row)
    return rows


def _is_better(metric: str, delta: float) -> bool:
    from tunelab.evaluation.metrics import LOWER_IS_BETTER

    return delta < 0 if metric in LOWER_IS_BETTER else delta > 0


# -- error analysis --------------------------------------------------------------------------------


def _example_row(i: int, data: EvalData, results: list[ModelResult], primary: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": i + 1,
        "source": data.sources[i],
        "input": data.inputs[i],
        "reference": data.references[i],
    }
    for key, value in data.meta[i].items():
        if isinstance(value, str | int | float | bool) or value is None:
            row.setdefault(key, value)
    for r in results:
        if r.outputs:
            row[r.name] = r.outputs[i]
        if r.per_example:
            row[f"{r.name} {primary}"] = r.per_example[i][primary]
    return row


def _slice_field(data: EvalData, requested: str | None) -> str | None:
    if requested:
        if not any(requested in m for m in data.meta):
            raise TunelabError(
                f"no row has a field {requested!r} to slice by",
                field="--slice-by",
                expected=f"one of: {', '.join(sorted({k for m in data.meta for k in m})) or '(the rows have no extra fields)'}",
            )
        return requested
    n = len(data)
    for key in sorted({k for m in data.meta for k in m}):
        values = [m.get(key) for m in data.meta]
        if not all(isinstance(v, str | int | bool) for v in values):
            continue
        distinct = len(set(values))
        if 2 <= distinct <= min(50, max(2, n // 2)):
            return key
    return None


def _slices(
    data: EvalData, results: list[ModelResult], baseline: str | None, primary: str, slice_field: str, resamples: int, seed: int
) -> dict[str, Any]:
    from tunelab.evaluation import bootstrap as B

    groups: dict[str, list[int]] = {}
    for i, m in enumerate(data.meta):
        groups.setdefault(str(m.get(slice_field, "(none)")), []).append(i)
    base = next((r for r in results if r.name == baseline), None)
    spec = B.mean_metric(primary)
    rows = []
    for value, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        row: dict[str, Any] = {slice_field: value, "n": len(idx), "means": {}, "deltas": {}}
        for r in results:
            if not r.per_example:
                continue
            vals = [r.per_example[i][primary] for i in idx]
            row["means"][r.name] = sum(vals) / len(vals)
            if base is not None and r is not base and base.per_example:
                ref = [base.per_example[i][primary] for i in idx]
                if len(idx) >= MIN_SLICE_FOR_CI:
                    row["deltas"][r.name] = B.paired_bootstrap(spec, ref, vals, resamples=resamples, seed=seed)
                else:  # too few rows for a meaningful interval: the difference alone
                    row["deltas"][r.name] = {"delta": sum(vals) / len(vals) - sum(ref) / len(ref)}
        rows.append(row)
    return {"field": slice_field, "metric": primary, "rows": rows}


# -- writing ---------------------------------------------------------------------------------------


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


def _write_predictions(path: Path, data: EvalData, results: list[ModelResult]) -> None:
    from tunelab.run import write_jsonl_atomic

    rows = []
    for i in range(len(data)):
        row: dict[str, Any] = {
            "source": data.sources[i],
            "input": data.inputs[i],
            "reference": data.references[i],
            "outputs": {r.name: r.outputs[i] for r in results if r.outputs},
            "scores": {r.name: r.per_example[i] for r in results if r.per_example},
            "stats": {
                r.name: {
                    **({"new_tokens": r.new_tokens[i], "hit_limit": r.hit_limit[i]} if r.new_tokens else {}),
                    **({"ref_nll": r.ref_nll[i][0], "ref_tokens": r.ref_nll[i][1]} if r.ref_nll else {}),
                }
                for r in results
            },
        }
        if data.meta[i]:
            row["meta"] = data.meta[i]
        rows.append(row)
    write_jsonl_atomic(path, rows)


def _report_plots(out_dir: Path, results: list[ModelResult], data: EvalData, tokenizer: Any, max_new_tokens: int) -> tuple[dict, dict]:
    """(training-curve plots, distribution figures) for the report."""
    from tunelab.evaluation.plots import plot_histograms, plot_runs, read_metrics

    plots: dict[str, Path] = {}
    curves: dict[str, list[dict]] = {}
    for r in results:
        if r.is_base:
            continue
        metrics = r.run_dir / "metrics.jsonl"
        if metrics.is_file():
            try:
                curves[r.name] = read_metrics(metrics)
            except TunelabError:
                continue
    if curves:
        plots["Loss"] = plot_runs(curves, out_dir / "loss.png", key="loss", title="Loss")
        plots["Learning rate"] = plot_runs(curves, out_dir / "lr.png", key="learning_rate", title="Learning rate")
    figures: dict[str, Path] = {}
    series: dict[str, list[float]] = {}
    if tokenizer is not None and any(data.references) and data.kind != "classification":
        series["references"] = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in data.references]
    for r in results:
        if r.new_tokens:
            series[f"{r.name} outputs"] = [float(n) for n in r.new_tokens]
    if series:
        figures["Token lengths"] = plot_histograms(
            series,
            out_dir / "token_lengths.png",
            title="Token lengths: references and outputs",
            xlabel="tokens",
            marker=(max_new_tokens, "max_new_tokens") if any(r.new_tokens for r in results) else None,
        )
    if tokenizer is not None:
        prompts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in data.inputs]
        figures["Prompt lengths"] = plot_histograms(
            {"prompts": [float(p) for p in prompts]}, out_dir / "prompt_lengths.png", title="Prompt lengths", xlabel="tokens"
        )
    return plots, figures


def _report_lists(comp: Comparison, columns_for: Callable[[str], list[dict]], limit: int) -> list[dict[str, Any]]:
    lists = []
    primary = comp.primary
    for name, rows in comp.regressions.items():
        c = comp.counts.get(name, {})
        lists.append(
            {
                "id": f"regressions-{name}",
                "title": f"Regressions: {comp.baseline} better than {name} ({primary})",
                "note": (
                    f"{c.get('worse', 0)} worse, {c.get('better', 0)} better, {c.get('tied', 0)} tied of {len(comp.data)}"
                    + (f"; the {limit} largest drops shown, all in comparison.csv" if len(rows) > limit else "")
                ),
                "columns": columns_for(name) + [{"key": "drop", "label": f"Δ {primary}", "kind": "num"}],
                "rows": rows[:limit],
                "empty": "No regressions.",
            }
        )
    for name, rows in comp.worst.items():
        lists.append(
            {
                "id": f"worst-{name}",
                "title": f"Worst {len(rows)} outputs of {name} ({primary})",
                "columns": [
                    {"key": "id", "label": "#", "kind": "num"},
                    {"key": "input", "label": "input", "kind": "text"},
                    {"key": "reference", "label": "reference", "kind": "text"},
                    {"key": name, "label": name, "kind": "text"},
                    {"key": f"{name} {primary}", "label": primary, "kind": "num"},
                ],
                "rows": rows,
                "empty": "No rows.",
            }
        )
    if comp.slices:
        s = comp.slices
        names = [n for n in comp.models if any(n in row["means"] for row in s["rows"])]
        columns = [{"key": s["field"], "label": s["field"], "kind": "text"}, {"key": "n", "label": "n", "kind": "num"}]
        columns += [{"key": f"mean {n}", "label": f"{n} {s['metric']}", "kind": "num"} for n in names]
        others = [n for n in names if n != comp.baseline and comp.baseline]
        columns += [{"key": f"delta {n}", "label": f"Δ {n} [95% CI]", "kind": "text"} for n in others]
        rows = []
        for row in s["rows"]:
            flat = {s["field"]: row[s["field"]], "n": row["n"]}
            for n in names:
                flat[f"mean {n}"] = row["means"].get(n)
            for n in others:
                d = row["deltas"].get(n)
                flat[f"delta {n}"] = _delta_text(d) if d else ""
            rows.append(flat)
        lists.append(
            {
                "id": "slices",
                "title": f"By {s['field']}",
                "note": f"mean per-example {s['metric']} per slice; Δ against {comp.baseline} with a paired bootstrap 95% interval"
                if comp.baseline
                else f"mean per-example {s['metric']} per slice",
                "columns": columns,
                "rows": rows,
                "empty": "No slices.",
            }
        )
    return lists


def _delta_text(d: dict[str, Any]) -> str:
    if not d or d.get("delta") is None or not math.isfinite(d["delta"]):
        return "\u2014"
    if "low" not in d:
        return f"{d['delta']:+.2f} (too few rows for an interval)"
    mark = " *" if d.get("excludes_zero") else ""
    return f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]{mark}"


def report_parts(
    comp: Comparison, out_dir: Path, tokenizer: Any, max_new_tokens: int, limit: int, *, resamples: int | None = None
) -> dict[str, Any]:
    """`write_report` keyword arguments for a comparison: plots, figures, comparison table, lists, examples."""
    results = [comp.results[n] for n in comp.models]
    plots, figures = _report_plots(out_dir, results, comp.data, tokenizer, max_new_tokens)
    primary = comp.primary
    meta_keys = sorted({k for m in comp.data.meta for k in m if isinstance(m.get(k), str | int | float | bool)})

    def columns_for(name: str) -> list[dict[str, Any]]:
        cols = [
            {"key": "id", "label": "#", "kind": "num"},
            {"key": "input", "label": "input", "kind": "text"},
            {"key": "reference", "label": "reference", "kind": "text"},
        ]
        if comp.baseline:
            cols.append({"key": comp.baseline, "label": comp.baseline, "kind": "text"})
        if name != comp.baseline:
            cols.append({"key": name, "label": name, "kind": "text"})
        return cols

    columns = [
        {"key": "id", "label": "#", "kind": "num"},
        *({"key": k, "label": k, "kind": "text"} for k in meta_keys),
        {"key": "input", "label": "input", "kind": "text"},
        {"key": "reference", "label": "reference", "kind": "text"},
    ]
    for r in results:
        if r.outputs:
            columns.append({"key": r.name, "label": r.name, "kind": "text"})
    for r in results:
        if r.per_example:
            columns.append({"key": f"{r.name} {primary}", "label": f"{r.name} {primary}", "kind": "num"})
    flags: list[str] = []
    rows = []
    for i in range(len(comp.data)):
        row = _example_row(i, comp.data, results, primary)
        row_flags = []
        if comp.baseline and comp.results[comp.baseline].per_example:
            b = comp.results[comp.baseline].per_example[i][primary]
            for r in results:
                if r.name != comp.baseline and r.per_example:
                    d = r.per_example[i][primary] - b
                    row[f"delta {r.name}"] = d
                    row_flags.append("regression" if d < 0 else "improvement" if d > 0 else "tie")
        row["_flags"] = " ".join(sorted(set(row_flags)))
        rows.append(row)
    if comp.baseline:
        for r in results:
            if r.name != comp.baseline and r.per_example:
                columns.append({"key": f"delta {r.name}", "label": f"Δ {r.name}", "kind": "num"})
                flags = ["regression", "improvement", "tie"]
    examples = {"columns": columns, "rows": rows, "flags": flags, "primary": primary}
    comparison = {
        "models": comp.models,
        "baseline": comp.baseline,
        "rows": comp.table,
        "n": len(comp.data),
        "resamples": resamples,
    }
    summary = {
        "data": comp.data.description,
        "models": ", ".join(comp.models),
        "baseline": comp.baseline or "\u2014",
        "primary metric (error analysis)": primary,
        **{f"outputs of {n}": comp.results[n].origin or "\u2014" for n in comp.models},
        **{
            f"generation time of {n} (s)": comp.results[n].seconds
            for n in comp.models
            if comp.results[n].seconds is not None
        },
    }
    confusion = {
        r.name: {"label_names": r.metrics["label_names"], "matrix": r.metrics["confusion_matrix"]}
        for r in results
        if "confusion_matrix" in r.metrics
    }
    return {
        "confusion": confusion or None,
        "plots": plots,
        "figures": figures,
        "comparison": comparison,
        "examples": examples,
        "lists": _report_lists(comp, columns_for, limit),
        "summary": summary,
    }


def _write_report(
    comp: Comparison, out_dir: Path, title: str, settings: dict[str, Any], tokenizer: Any, max_new_tokens: int, limit: int
) -> Path:
    from tunelab.evaluation.report import write_report

    parts = report_parts(comp, out_dir, tokenizer, max_new_tokens, limit, resamples=settings.get("bootstrap resamples"))
    return write_report(
        out_dir / "report.html",
        title=title,
        config=settings,
        summary=parts.pop("summary"),
        metrics_table=[],
        samples=[],
        notes=comp.notes,
        **parts,
    )


def analyse(
    results: list[ModelResult],
    rows: EvalData,
    *,
    baseline: str | None,
    primary: str,
    generative: bool = True,
    worst: int = 10,
    slice_by: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
    out_dir: Path,
    notes: list[str] | None = None,
) -> Comparison:
    """Metrics with bootstrap intervals, regressions, worst N and slices for scored models."""
    table = _table(results, baseline, rows, resamples, seed)

    by_name = {r.name: r for r in results}
    regressions: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    worst_rows: dict[str, list[dict[str, Any]]] = {}
    if generative:
        example_rows = [_example_row(i, rows, results, primary) for i in range(len(rows))]
        if baseline:
            b = by_name[baseline]
            for r in results:
                if r.name == baseline:
                    continue
                diffs = [r.per_example[i][primary] - b.per_example[i][primary] for i in range(len(rows))]
                counts[r.name] = {
                    "worse": sum(d < 0 for d in diffs),
                    "better": sum(d > 0 for d in diffs),
                    "tied": sum(d == 0 for d in diffs),
                }
                order = sorted((i for i, d in enumerate(diffs) if d < 0), key=lambda i: (diffs[i], i))
                regressions[r.name] = [{**example_rows[i], "drop": diffs[i]} for i in order]
        for r in results:
            order = sorted(range(len(rows)), key=lambda i: (r.per_example[i][primary], i))[:worst]
            worst_rows[r.name] = [example_rows[i] for i in order]
    field_name = _slice_field(rows, slice_by) if generative else None
    slices = _slices(rows, results, baseline, primary, field_name, resamples, seed) if field_name else None

    all_notes = [
        f"{len(rows)} rows: {rows.description}",
        f"95% intervals: percentile bootstrap over {resamples} resamples of the rows (seed {seed}); "
        "differences are paired (every model scored on the same resample); * = the interval excludes zero",
        "BLEU and chrF are corpus scores recomputed on each resample from sacrebleu's sufficient statistics; "
        "perplexity is of the reference responses (teacher-forced), lower is better",
        *(notes or []),
    ]
    return Comparison(
        out_dir=out_dir,
        models=[r.name for r in results],
        baseline=baseline,
        data=rows,
        primary=primary,
        table=table,
        regressions=regressions,
        worst=worst_rows,
        slices=slices,
        counts=counts,
        notes=all_notes,
        report=out_dir / "report.html",
        results=by_name,
    )


# -- the entry point -------------------------------------------------------------------------------


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
    from tunelab.run import write_json_atomic

    quiet_libraries()
    if not models:
        raise TunelabError("no models to compare", expected="one or more run directories, and optionally 'base'")
    named = _model_names([str(m) for m in models])
    runs = [p for _, p in named if p is not None]
    if not runs:
        raise TunelabError("'base' needs a run to take the base model from", expected="a run directory too")
    first_run, first_cfg = _run_config(runs[0])
    evaluation = first_cfg.evaluation
    max_new_tokens = max_new_tokens or evaluation.max_new_tokens
    batch_size = batch_size or evaluation.batch_size
    rows = (
        file_data(data, runs[0], max_examples=max_examples)
        if data is not None
        else held_out_data(runs[0], max_examples=max_examples)
    )
    generative = rows.kind != "text"
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
    _run_models(
        results,
        rows,
        first_cfg=first_cfg,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        regenerate=regenerate,
        with_perplexity=with_perplexity,
        generative=generative,
    )
    for r in results:
        _score(r, rows, generative)
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
    comp = analyse(
        results,
        rows,
        baseline=baseline,
        primary=primary,
        generative=generative,
        worst=worst,
        slice_by=slice_by,
        resamples=resamples,
        seed=seed,
        out_dir=out,
        notes=notes,
    )
    write_json_atomic(out / "comparison.json", {**comp.to_json(), "settings": settings})
    _write_csv(out / "comparison.csv", rows, results)
    _write_predictions(out / "predictions.jsonl", rows, results)
    tokenizer = load_tokenizer(first_run.tokenizer_dir)
    if title is None:
        title = f"tunelab comparison: {' vs '.join(names)}" if len(names) > 1 else f"tunelab evaluation: {names[0]}"
    _write_report(comp, out, title, settings, tokenizer, max_new_tokens, limit=max(worst, 20))
    return comp


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return keep.strip("-") or "model"
