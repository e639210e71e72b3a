"""A run's own report: the analysis parts from its predictions, what the page shows, and a failure
of the analysis shown in the page and the log instead of vanishing."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import tunelab.evaluation.run_report as run_report
from tunelab.evaluation.metrics import HEADLINE_METRICS, metric_display
from tunelab.evaluation.run_report import metrics_table, run_report_extras, write_run_report
from tunelab.reporting import ConfigDump, Figures, MetricRow, MetricsTable, Notes, Report, Summary
from tunelab.runs import run_config

HEADLINE = tuple(HEADLINE_METRICS)


def test_run_report_extras(tiny_run: Path, tmp_path: Path) -> None:
    extras = run_report_extras(tiny_run, max_new_tokens=8)
    assert set(extras) == {"intervals", "figures", "lists", "examples"}
    assert {"rougeL", "bleu", "exact_match", "token_f1"} <= set(extras["intervals"])
    results = json.loads((tiny_run / "eval.json").read_text())
    rows = [MetricRow(metric_display(r["metric"]), r.get("base"), r.get("tuned"), extras["intervals"].get(r["metric"]))
            for r in metrics_table(results, HEADLINE)]  # fmt: skip
    sections = [Summary({}), MetricsTable(rows), Figures({"Loss": tiny_run / "loss.png"}), extras["figures"],
                extras["lists"], extras["examples"], Notes([]), ConfigDump({})]  # fmt: skip
    out = Report("run", sections).write(tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert "95% CI of delta" in text and 'id="examples-table"' in text and "Regressions" in text
    assert run_report_extras(tmp_path) == {}


def test_the_runs_report_shows_the_analysis(tiny_run: Path) -> None:
    """The report training wrote: intervals, per-example table, regressions and worst lists, histograms."""
    text = (tiny_run / "report.html").read_text(encoding="utf-8")
    ids = [i for i in re.findall(r'<section id="([^"]+)"', text) if i != "learning-warning"]  # a short run's
    assert ids == ["summary", "metrics", "plots", "figures", "analysis", "examples", "samples", "probes", "notes", "config"]
    metrics = text.split('id="metrics"', 1)[1].split("</section>", 1)[0]
    assert "95% CI of delta" in metrics and "Excludes 0" in metrics
    assert metrics.count("<tr>") == 1 + len(HEADLINE)  # head + one row per headline metric, each with its interval
    assert metrics.count("</td><td") >= len(HEADLINE) * 5
    assert 'id="examples-table"' in text and text.count("<tr data-flags=") + text.count("<tr><td") > 12
    assert 'id="regressions-tuned"' in text or "No regressions." in text
    assert "Regressions: base better than tuned (rougeL)" in text and 'id="worst-tuned"' in text
    assert "Worst 10 outputs of tuned (rougeL)" in text and 'id="slices"' in text  # the rows carry a topic
    assert 'alt="Token lengths"' in text and 'alt="Prompt lengths"' in text
    assert "script-src 'sha256-" in text and 'id="analysis-error"' not in text
    # the training curves are the run's own loss.png (train and eval loss), embedded as written
    loss = text.split('id="plots"', 1)[1].split('alt="Loss"', 1)[0].rsplit('src="data:image/png;base64,', 1)[1]
    assert base64.b64decode(loss.split('"', 1)[0]) == (tiny_run / "loss.png").read_bytes()


def test_an_analysis_failure_is_shown_and_logged(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    run_dir = shutil.copytree(tiny_run, tmp_path / "run")

    def broken(*args, **kwargs):
        raise RuntimeError("bootstrap exploded")

    logged: list[str] = []
    monkeypatch.setattr(run_report, "analyse", broken)
    monkeypatch.setattr(run_report, "info", logged.append)
    run, cfg = run_config(run_dir)
    results = json.loads((run_dir / "eval.json").read_text())
    path = write_run_report(run, cfg, results, ["a note"], headline=HEADLINE)
    text = path.read_text(encoding="utf-8")
    notice = text.split('<section id="analysis-error">', 1)[1].split("</section>", 1)[0]
    assert "Error analysis failed" in notice and "RuntimeError: bootstrap exploded" in notice
    assert "test_run_report.py" in notice  # where it was raised
    assert text.index('id="metrics"') < text.index('id="analysis-error"') < text.index('id="plots"')
    assert "ROUGE-L" in text and "95% CI of delta" not in text and 'id="examples-table"' not in text
    assert 'id="samples"' in text and "a note" in text  # the rest of the report is all there
    assert len(logged) == 1 and "RuntimeError: bootstrap exploded" in logged[0]


def test_metrics_table_follows_the_headline() -> None:
    results = {"metrics": {"base": {"perplexity": 30.0, "eval_loss": 3.4}, "tuned": {"perplexity": 12.0, "accuracy": 1.0}}}
    assert metrics_table(results, ("perplexity", "eval_loss", "rougeL")) == [
        {"metric": "perplexity", "tuned": 12.0, "base": 30.0},
        {"metric": "eval_loss", "tuned": None, "base": 3.4},
    ]
    assert metrics_table({"metrics": {"tuned": {"rougeL": 9.0}}}, HEADLINE) == [{"metric": "rougeL", "tuned": 9.0}]
    assert metrics_table({}, HEADLINE) == []
