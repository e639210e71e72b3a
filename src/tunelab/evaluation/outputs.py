"""Every model's outputs on the rows: reused from a run's ``predictions.jsonl`` when it holds exactly
these rows at this token limit, else produced again — batched greedy generation and the perplexity
of the references for language models, predicted labels for classifiers. Models come from
`tunelab.runs.load_run` (a run's trained weights, or its base model with the run's format)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.rows import EvalData
from tunelab.progress import info
from tunelab.runs.artifacts import BASE, TUNED, Prediction, read_predictions
from tunelab.runs.loading import load_run, run_config

__all__ = ["ModelResult", "fill_from_predictions", "model_names", "reuse", "run_models"]


@dataclass
class ModelResult:
    name: str
    run_dir: Path  # the run whose weights (or, for base, whose format) are used
    is_base: bool
    outputs: list[str] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    hit_limit: list[bool] = field(default_factory=list)
    ref_nll: list[tuple[float, int]] | None = None
    probabilities: list[dict[str, float]] = field(default_factory=list)  # classification: label → probability
    origin: str = ""
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    per_example: list[dict[str, float]] = field(default_factory=list)
    probe_answers: list[dict[str, Any]] = field(default_factory=list)  # answers to the off-task probes


def model_names(specs: list[str]) -> list[tuple[str, Path | None]]:
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


def fill_from_predictions(
    result: ModelResult,
    rows: list[Prediction],
    model: str,
    *,
    classification: bool,
    tokenizer: Any,
    max_new_tokens: int | None,
) -> bool:
    """Outputs, output lengths and reference NLLs of ``model`` (a name in the rows) into ``result``.
    Rows written before lengths were stored get them re-counted from the text (True is returned)."""
    estimated = False
    nll: list[tuple[float, int]] = []
    for row in rows:
        text = row.outputs[model]
        stats = row.stats.get(model) or {}
        result.outputs.append(text)
        if classification:
            if model in row.probabilities:
                result.probabilities.append(row.probabilities[model])
            continue
        if "new_tokens" in stats:
            result.new_tokens.append(int(stats["new_tokens"]))
            result.hit_limit.append(bool(stats["hit_limit"]))
        else:  # older runs: re-count the tokens of the decoded text
            estimated = True
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if (tokenizer is not None and text) else 0
            result.new_tokens.append(n)
            result.hit_limit.append(bool(max_new_tokens) and n >= (max_new_tokens or 0))
        if "ref_nll" in stats:
            nll.append((float(stats["ref_nll"]), int(stats["ref_tokens"])))
    if len(result.probabilities) != len(result.outputs):
        result.probabilities = []
    result.ref_nll = nll if len(nll) == len(rows) else None
    return estimated


def reuse(result: ModelResult, data: EvalData, cfg: Any, max_new_tokens: int, tokenizer: Any) -> bool:
    """Fill outputs from the run's predictions.jsonl when it holds exactly these rows at this token limit."""
    if data.kind == "generation" and cfg.evaluation.max_new_tokens != max_new_tokens:
        return False
    model = BASE if result.is_base else TUNED
    path = result.run_dir / "predictions.jsonl"
    by_key: dict[tuple[str, str], Prediction] = {}
    for row in read_predictions(path):
        if isinstance(row.outputs.get(model), str):
            by_key.setdefault((row.input, row.reference), row)
    if not by_key:
        return False
    rows = [by_key.get((inp, ref)) for inp, ref in zip(data.inputs, data.references, strict=True)]
    if any(r is None for r in rows):
        return False
    found = [r for r in rows if r is not None]
    estimated = fill_from_predictions(
        result, found, model, classification=data.kind == "classification", tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
    )
    result.origin = f"reused from {path}"
    if estimated:
        result.origin += " (output lengths re-counted from the text)"
    return True


def run_models(
    results: list[ModelResult],
    data: EvalData,
    *,
    max_new_tokens: int,
    batch_size: int,
    regenerate: bool,
    with_perplexity: bool,
    generative: bool,
    probes: list[str] | None = None,
) -> None:
    """Outputs (and reference NLLs, and answers to the off-task `probes`) of every model, reused where
    the run already wrote them."""
    from tunelab.models.loading import load_tokenizer

    for result in results:
        run, cfg = run_config(result.run_dir)  # base: the first run, whose base model it is
        reused = False
        if generative and not regenerate:
            reused = reuse(result, data, cfg, max_new_tokens, load_tokenizer(run.tokenizer_dir))
            if probes and cfg.evaluation.max_new_tokens == max_new_tokens:
                result.probe_answers = _reused_probes(run.probes_json, probes, BASE if result.is_base else TUNED)
        if data.kind == "classification":
            if not reused:
                _classify(result, data, cfg, batch_size)
            continue
        need_nll = with_perplexity and result.ref_nll is None
        need_gen = generative and not reused
        need_probes = bool(probes) and not result.probe_answers
        if need_gen or need_nll or need_probes:
            info(f"[cyan]evaluate[/cyan] {result.name}")
            _generate(result, data, max_new_tokens=max_new_tokens, batch_size=batch_size, need_gen=need_gen,
                      need_nll=need_nll, probes=probes if need_probes else None)  # fmt: skip


def _reused_probes(path: Path, probes: list[str], model: str) -> list[dict[str, Any]]:
    """A run's own answers to these very probes (from its probes.json), else none."""
    import json

    if not path.is_file():
        return []
    rows = json.loads(path.read_text(encoding="utf-8")).get("rows") or []
    if [r.get("prompt") for r in rows] != probes or not all(model in r for r in rows):
        return []
    return [{k: r[model][k] for k in ("output", "new_tokens", "hit_limit")} for r in rows]


def _generate(
    result: ModelResult, data: EvalData, *, max_new_tokens: int, batch_size: int, need_gen: bool, need_nll: bool,
    probes: list[str] | None = None,
) -> None:  # fmt: skip
    from tunelab.evaluation.probes import answer_probes
    from tunelab.inference.decoding import generate_from_ids
    from tunelab.inference.scoring import reference_nll

    loaded = load_run(result.run_dir, base=result.is_base)
    model, tokenizer, fmt = loaded.model, loaded.tokenizer, loaded.fmt
    try:
        if need_gen:
            prompts = [fmt.prompt_ids(ex, tokenizer) for ex in data.examples]
            started = time.time()
            outs = generate_from_ids(
                model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                description=f"generate {result.name}",
            )
            result.seconds = round(time.time() - started, 1)
            result.outputs = [o.text for o in outs]
            result.new_tokens = [o.new_tokens for o in outs]
            result.hit_limit = [o.hit_limit for o in outs]
            result.origin = f"generated (greedy, max_new_tokens={max_new_tokens}, batch_size={batch_size})"
        if need_nll:
            result.ref_nll = reference_nll(model, tokenizer, fmt, data.examples, batch_size=batch_size)
        if probes:
            result.probe_answers = answer_probes(model, tokenizer, fmt, probes, max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size, label=result.name)  # fmt: skip
    finally:
        del model, loaded
        gc.collect()


def _classify(result: ModelResult, data: EvalData, cfg: Any, batch_size: int) -> None:
    """Predicted labels of a classification run's model: the most probable class of each row."""
    from tunelab.inference.scoring import class_probabilities

    loaded = load_run(result.run_dir, base=result.is_base)  # base raises: the untrained head cannot be rebuilt
    names = loaded.labels or data.label_names or []
    started = time.time()
    try:
        probs = class_probabilities(
            loaded.model, loaded.tokenizer, data.inputs, batch_size=batch_size, max_length=cfg.data.max_length,
            description=f"classify {result.name}",
        )
    finally:
        del loaded
        gc.collect()
    result.outputs = [names[max(range(len(p)), key=p.__getitem__)] for p in probs]
    result.probabilities = [dict(zip(names, (round(v, 4) for v in p), strict=True)) for p in probs]
    result.seconds = round(time.time() - started, 1)
    result.origin = f"predicted (batch_size={batch_size})"
