"""The evaluation parts of a run's own ``report.html``, computed from what the run already wrote.

`run_report_extras(run_dir)` reads ``predictions.jsonl`` (base and tuned outputs on the held-out
rows) and returns keyword arguments for `tunelab.evaluation.report.write_report`: paired bootstrap
intervals for every tuned − base difference, token-length histograms, the regressions / worst N /
slices tables and the sortable, filterable per-example table. No model is loaded; it takes well
under a second for a few hundred rows. Call it from the run-report writer:

    write_report(run.report, ..., **run_report_extras(run.path, max_new_tokens=cfg.evaluation.max_new_tokens))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["run_report_extras"]


def run_report_extras(
    run_dir: str | Path,
    *,
    max_new_tokens: int | None = None,
    metric: str = "rougeL",
    worst: int = 10,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``{intervals, figures, lists, examples}`` (and ``confusion`` for a classification run) for
    `write_report`, or ``{}`` when the run has no predictions.

    Never raises for a run it cannot analyse (the run itself is fine; only its report is poorer):
    it prints a warning and returns ``{}`` instead.
    """
    try:
        return _extras(run_dir, max_new_tokens=max_new_tokens, metric=metric, worst=worst,
                       resamples=resamples, seed=seed)
    except Exception as exc:  # noqa: BLE001 - a report extra must not fail a finished training run
        from tunelab.progress import info

        info(f"[yellow]report[/yellow] evaluation details left out of the report: {type(exc).__name__}: {exc}")
        return {}


def _extras(
    run_dir: str | Path, *, max_new_tokens: int | None, metric: str, worst: int, resamples: int, seed: int
) -> dict[str, Any]:
    from tunelab.evaluation.compare import BASE, EvalData, ModelResult, _score, analyse, report_parts

    run_dir = Path(run_dir)
    path = run_dir / "predictions.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("tuned"), str)]
    if not rows:
        return {}
    labels_file = run_dir / "labels.json"
    classification = labels_file.is_file() and not (run_dir / "template.json").is_file()
    tokenizer = _tokenizer(run_dir)
    data = EvalData(
        examples=[],
        inputs=[str(r.get("input", "")) for r in rows],
        references=[str(r.get("reference", "")) for r in rows],
        sources=[str(r.get("source", "")) for r in rows],
        meta=[dict(r.get("meta") or {}) for r in rows],
        description=f"held-out rows of {run_dir} ({len(rows)})",
        key="heldout",
        kind="classification" if classification else "generation",
        label_names=json.loads(labels_file.read_text(encoding="utf-8")) if classification else None,
    )
    has_base = all(isinstance(r.get(BASE), str) for r in rows)
    results = []
    for name in ([BASE] if has_base else []) + ["tuned"]:
        result = ModelResult(name=name, run_dir=run_dir, is_base=name == BASE)
        nll = []
        for r in rows:
            text = r[name]
            stats = r.get(f"{name}_stats") or {}
            result.outputs.append(text)
            if classification:
                continue
            if "new_tokens" in stats:
                result.new_tokens.append(int(stats["new_tokens"]))
                result.hit_limit.append(bool(stats["hit_limit"]))
            else:
                n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if (tokenizer and text) else 0
                result.new_tokens.append(n)
                result.hit_limit.append(bool(max_new_tokens) and n >= (max_new_tokens or 0))
            if "ref_nll" in stats:
                nll.append((float(stats["ref_nll"]), int(stats["ref_tokens"])))
        result.ref_nll = nll if len(nll) == len(rows) else None
        _score(result, data, True)
        results.append(result)
    comp = analyse(
        results,
        data,
        baseline=BASE if has_base else None,
        primary="correct" if classification else metric,
        worst=worst,
        resamples=resamples,
        seed=seed,
        out_dir=run_dir,
    )
    parts = report_parts(comp, run_dir, tokenizer, max_new_tokens or 0, max(worst, 20), resamples=resamples)
    intervals = {}
    for row in comp.table:
        delta = row["deltas"].get("tuned")
        if delta:
            intervals[row["metric"]] = delta
    extras = {
        "intervals": intervals,
        "figures": parts["figures"],
        "lists": parts["lists"],
        "examples": parts["examples"],
    }
    if parts.get("confusion"):
        extras["confusion"] = parts["confusion"]
    return extras


def _tokenizer(run_dir: Path) -> Any:
    if not (run_dir / "tokenizer").is_dir():
        return None
    from tunelab.models.loading import load_tokenizer

    return load_tokenizer(run_dir / "tokenizer")
