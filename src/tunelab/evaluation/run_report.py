"""A run's own ``report.html``: summary, headline metrics (with paired bootstrap intervals of every
tuned − base difference), training curves, token-length histograms, the regressions / worst N /
slices tables, the sortable, filterable per-example table, sample outputs, notes and the config.

The evaluation parts are computed from what the run already wrote (``predictions.jsonl``): no model
is loaded; it takes well under a second for a few hundred rows. When they cannot be computed, the
report says so in a notice naming the error (and the log says it too); the run itself is fine.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from tunelab.evaluation.analysis import analyse
from tunelab.evaluation.metrics import metric_display
from tunelab.evaluation.outputs import ModelResult, fill_from_predictions
from tunelab.evaluation.rows import predictions_data
from tunelab.evaluation.scoring import score
from tunelab.evaluation.views import comparison_view
from tunelab.progress import info
from tunelab.reporting import (
    ConfigDump,
    Figures,
    MetricRow,
    MetricsTable,
    Notes,
    Notice,
    Report,
    Samples,
    Section,
    Summary,
)
from tunelab.runs.artifacts import BASE, TUNED, read_predictions
from tunelab.runs.layout import RunDir

__all__ = ["metrics_table", "run_report_extras", "write_run_report"]


def metrics_table(results: dict[str, Any], headline: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """Rows {metric, base, tuned} for the ``headline`` metrics the run has (base only where measured)."""
    base = (results.get("metrics") or {}).get("base") or {}
    tuned = (results.get("metrics") or {}).get("tuned") or {}
    rows = []
    for k in headline:
        if k in tuned or k in base:
            row: dict[str, Any] = {"metric": k, "tuned": tuned.get(k)}
            if k in base:
                row["base"] = base[k]
            rows.append(row)
    return rows


def write_run_report(
    run: RunDir, cfg: Any, results: dict[str, Any], notes: list[str], *, headline: tuple[str, ...]
) -> Path:
    """Draw the run's loss and learning-rate plots and write its ``report.html``; returns its path."""
    from tunelab.config import config_dict
    from tunelab.evaluation.plots import plot_loss, plot_lr, plot_signals
    from tunelab.runs.layout import read_metrics

    rows = read_metrics(run.metrics) if run.metrics.is_file() else []
    plot_loss(rows, run.loss_png)
    plot_lr(rows, run.lr_png)
    signals = plot_signals(rows, run.signals_png)
    samples = []
    for p in read_predictions(run.predictions)[: cfg.evaluation.samples_in_report]:
        samples.append({"input": p.input, "reference": p.reference, **{m: p.outputs[m] for m in (BASE, TUNED) if m in p.outputs}})
    training = results.get("training", {})
    summary = {
        "model": cfg.model.name,
        "task": cfg.task,
        "method": cfg.method,
        "trainable params": results.get("trainable"),
        "train steps": training.get("global_step"),
        "train time (s)": training.get("train_seconds"),
        "train tokens/s (non-padding)": training.get("train_tokens_per_second"),
        "peak memory (GiB)": training.get("peak_memory_gib"),
        "final train loss": training.get("train_loss"),
        "held-out rows": results.get("n_test"),
    }
    # a stage whose predictions are one of a few outcomes (a reward model: "chosen" / "rejected") names them
    extras = run_report_extras(run.path, max_new_tokens=cfg.evaluation.max_new_tokens,
                               labels=results.get("prediction_labels"))  # fmt: skip
    intervals = extras.get("intervals") or {}
    metric_rows = [
        MetricRow(metric_display(r["metric"]), r.get("base"), r.get("tuned"), intervals.get(r["metric"]))
        for r in metrics_table(results, headline)
    ]
    figures, analysis, examples = extras.get("figures"), extras.get("lists"), extras.get("examples")
    has_examples = bool(examples and examples.rows)
    has_analysis = bool(analysis and analysis.tables)
    hacking = results.get("reward_hacking") or []
    warnings = [w for w in results.get("warnings") or [] if not w.startswith("reward hacking suspected")]
    gamed = Notice(message="Reward hacking suspected: " + "; ".join(hacking) + ".",
                   detail="The reward the model was trained on rose, but what it stands for did not follow. Read "
                   "the sample answers; a gold rule, a stronger KL pull (beta) or a better reward model may help.",
                   title="Reward hacking suspected", id="reward-hacking")  # fmt: skip
    learning = Notice(message="This run may not have learned anything: " + "; ".join(warnings) + ".",
                      detail="Check the learning rate and the method's settings (tunelab data preview shows "
                      "what is trained on).", title="Did not learn?", id="learning-warning")  # fmt: skip
    probes = None
    if run.probes_json.is_file():
        import json

        from tunelab.evaluation.probes import probe_section

        probes = probe_section(json.loads(run.probes_json.read_text(encoding="utf-8")))
    drift = results.get("probe_warning")
    drifted = Notice(message=drift[:1].upper() + drift[1:] + "." if drift else "", title="Worse off-task?",
                     detail="Read the off-task probes below: fewer steps, a lower learning rate or mixing general "
                     "data into the training set usually help.", id="probe-warning")  # fmt: skip
    parts: list[Section | None] = [
        gamed if hacking else None,
        learning if warnings else None,
        drifted if drift else None,
        Summary(summary),
        MetricsTable(metric_rows) if metric_rows or not (has_analysis or has_examples) else None,
        extras.get("error"),
        extras.get("confusion"),
        Figures({"Loss": run.loss_png, "Learning rate": run.lr_png,
                 **({"What the trainer optimises": signals} if signals else {})}),
        figures if figures and figures.images else None,
        analysis if has_analysis else None,
        examples if has_examples else None,
        Samples(samples) if samples or not has_examples else None,
        probes,
        Notes(notes),
        ConfigDump(config_dict(cfg)),
    ]
    sections = [p for p in parts if p is not None]
    return Report(f"tunelab run: {cfg.name}", sections).write(run.report)


def run_report_extras(
    run_dir: str | Path,
    *,
    max_new_tokens: int | None = None,
    metric: str = "rougeL",
    worst: int = 10,
    resamples: int = 1000,
    seed: int = 0,
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """The evaluation parts of a run's report, from its ``predictions.jsonl``: ``intervals``
    ({metric: paired bootstrap of tuned − base}) and the sections ``figures``, ``lists`` (regressions,
    worst N, slices), ``examples`` (and ``confusion`` for a classification run); ``{}`` when the run
    has no predictions. ``labels``: the outcomes the predictions are one of, for a stage whose outputs
    are labels though it has a prompt format (a reward model's "chosen"/"rejected").

    A run it cannot analyse does not fail (the run itself is fine): the error is logged and returned
    as ``{"error": Notice}``, a section naming it, for the report to show.
    """
    try:
        return _extras(Path(run_dir), max_new_tokens=max_new_tokens, metric=metric, worst=worst,
                       resamples=resamples, seed=seed, labels=labels)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - shown in the report and the log, never silently dropped
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})" if frame else ""
        error = f"{type(exc).__name__}: {exc}{where}"
        info(f"[yellow]report[/yellow] error analysis failed, left out of the report: {error}")
        notice = Notice(
            message="The error analysis of the held-out predictions failed, so this report has no "
            "confidence intervals, per-example table, regressions or length histograms. The metrics "
            "and the run itself are unaffected; `tunelab eval RUN --base` computes them again.",
            detail=error,
            title="Error analysis failed",
            id="analysis-error",
        )
        return {"error": notice}


def _extras(
    run_dir: Path, *, max_new_tokens: int | None, metric: str, worst: int, resamples: int, seed: int,
    labels: list[str] | None,
) -> dict[str, Any]:
    run = RunDir(run_dir)
    rows = [p for p in read_predictions(run.predictions) if isinstance(p.outputs.get(TUNED), str)]
    if not rows:
        return {}
    given = labels
    labels = labels or run.read_labels()
    classification = labels is not None and (given is not None or not run.template.is_file())
    tokenizer = None
    if run.tokenizer_dir.is_dir():
        from tunelab.models.loading import load_tokenizer

        tokenizer = load_tokenizer(run.tokenizer_dir)
    data = predictions_data(rows, f"held-out rows of {run_dir} ({len(rows)})", labels=labels if classification else None)
    has_base = all(isinstance(p.outputs.get(BASE), str) for p in rows)
    results = []
    for name in ([BASE] if has_base else []) + [TUNED]:
        result = ModelResult(name=name, run_dir=run_dir, is_base=name == BASE)
        fill_from_predictions(result, rows, name, classification=classification, tokenizer=tokenizer,
                              max_new_tokens=max_new_tokens)  # fmt: skip
        score(result, data, True)
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
    view = comparison_view(comp, run_dir, tokenizer, max_new_tokens or 0, max(worst, 20), resamples=resamples,
                           curves=False)  # fmt: skip
    intervals = {row["metric"]: row["deltas"][TUNED] for row in comp.table if row["deltas"].get(TUNED)}
    extras: dict[str, Any] = {"intervals": intervals, "figures": view.figures, "lists": view.analysis,
                              "examples": view.examples}  # fmt: skip
    if view.confusion:
        extras["confusion"] = view.confusion
    return extras
