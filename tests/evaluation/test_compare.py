"""compare / eval end to end on the tiny random Llama (single-threaded: seconds): reused and regenerated
outputs, the interval table, regressions, slices, the files written, the CLI, classification runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import tunelab
from evaluation.helpers import eval_rows, run_config, write_rows
from tunelab.commands import evaluate as commands
from tunelab.errors import TunelabError
from tunelab.evaluation.compare import BASE, compare
from tunelab.runs import read_predictions

pytestmark = pytest.mark.usefixtures("one_thread")


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    commands.register(app)
    return app


def test_compare_with_base(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    comp = compare([str(tiny_run), BASE], out_dir=out)
    assert comp.models == [BASE, "tiny"] and comp.baseline == BASE  # the baseline comes first
    for name in ("comparison.json", "comparison.csv", "predictions.jsonl", "report.html", "token_lengths.png"):
        assert (out / name).is_file(), name
    n = len(comp.data)
    assert n == 12
    # outputs were reused from the run, and the scores equal the run's own evaluation
    assert all("reused" in r.origin for r in comp.results.values())
    ev = json.loads((tiny_run / "eval.json").read_text())["metrics"]
    table = {row["metric"]: row for row in comp.table}
    for key in ("rougeL", "bleu", "chrf", "exact_match", "token_f1", "perplexity", "hit_token_limit"):
        assert table[key]["values"]["tiny"] == pytest.approx(ev["tuned"][key]), key
        assert table[key]["values"][BASE] == pytest.approx(ev["base"][key]), key
        d = table[key]["deltas"]["tiny"]
        assert d["delta"] == pytest.approx(ev["tuned"][key] - ev["base"][key])
        assert d["low"] <= d["delta"] + 1e-9 and d["delta"] - 1e-9 <= d["high"]
        assert d["excludes_zero"] == (d["low"] > 0 or d["high"] < 0)
    # regressions: exactly the rows where base beats the run on per-example ROUGE-L, worst first
    counts = comp.counts["tiny"]
    assert counts["worse"] + counts["better"] + counts["tied"] == n
    regs = comp.regressions["tiny"]
    assert len(regs) == counts["worse"] and all(r["drop"] < 0 for r in regs)
    assert [r["drop"] for r in regs] == sorted(r["drop"] for r in regs)
    assert len(comp.worst["tiny"]) == min(10, n)
    assert comp.slices is not None and comp.slices["field"] == "topic"
    assert sum(row["n"] for row in comp.slices["rows"]) == n
    with (out / "comparison.csv").open(encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == n and {"tiny:output", "base:output", "tiny:rougeL", "topic"} <= set(lines[0])
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["baseline"] == BASE and saved["n"] == n and saved["counts"]["tiny"] == counts
    # predictions in the one schema, keyed by model name
    preds = read_predictions(out / "predictions.jsonl")
    assert len(preds) == n and all(set(p.outputs) == {BASE, "tiny"} for p in preds)
    assert [p.outputs["tiny"] for p in preds] == comp.results["tiny"].outputs
    assert preds[0].scores["tiny"]["rougeL"] == comp.results["tiny"].per_example[0]["rougeL"]
    assert {"new_tokens", "hit_limit", "ref_nll", "ref_tokens"} <= set(preds[0].stats[BASE]) and "topic" in preds[0].meta


def test_regenerated_outputs_equal_the_runs_own(tiny_run: Path, tmp_path: Path) -> None:
    comp = compare([str(tiny_run)], out_dir=tmp_path / "again", regenerate=True, with_perplexity=False)
    saved = read_predictions(tiny_run / "predictions.jsonl")
    result = comp.results["tiny"]
    assert result.origin.startswith("generated")
    assert result.outputs == [row.outputs["tuned"] for row in saved]  # greedy, batched, deterministic
    assert result.new_tokens == [row.stats["tuned"]["new_tokens"] for row in saved]
    assert comp.baseline is None and not comp.regressions
    assert "perplexity" not in {row["metric"] for row in comp.table}


def test_cli_eval_compare_and_errors(tiny_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_rows(tmp_path / "extra.jsonl", eval_rows(6))
    res = runner.invoke(_app(), ["eval", str(tiny_run), "--data", str(data), "--base", "--no-perplexity"])
    assert res.exit_code == 0, res.output
    assert "written:" in res.output and "ROUGE-L" in res.output
    out = tiny_run / "eval" / "extra"
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    res = runner.invoke(_app(), ["compare", str(tiny_run), "--out", str(tmp_path / "c"), "--metric", "token_f1"])
    assert res.exit_code == 0, res.output
    assert "tiny vs base on per-example token_f1" in res.output
    res = runner.invoke(_app(), ["compare", str(tmp_path / "nope"), "base"])
    assert isinstance(res.exception, TunelabError) and "run directory not found" in str(res.exception)
    res = runner.invoke(_app(), ["eval", str(tiny_run), "--metric", "nonsense"])
    assert isinstance(res.exception, TunelabError)
    res = runner.invoke(_app(), ["bench", str(tiny_run), "--tasks", "arc_easyy"])
    assert isinstance(res.exception, TunelabError) and "did you mean 'arc_easy'" in str(res.exception)


def test_comparison_report_in_chromium(tiny_run: Path, tmp_path: Path, chromium) -> None:
    comp = compare([str(tiny_run), BASE], out_dir=tmp_path / "cmp", with_perplexity=False)
    page = chromium.load(comp.report, "flag=regression")
    assert page.console == [], page.console
    assert 'data-ready="1"' in page.dom
    assert f'data-shown="{comp.counts["tiny"]["worse"]}"' in page.dom


def test_classification_run_compare_and_report(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import sentiment_rows
    from tunelab.evaluation.run_report import run_report_extras

    data = tmp_path / "sentiment.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in sentiment_rows()), encoding="utf-8")
    cfg = run_config(tmp_path, tiny_model, data, name="cls", task="classify",
                  data={"max_length": 48, "split": {"validation": 0.1, "test": 0.25, "seed": 0}},
                  training={"max_steps": 12, "batch_size": 8, "lr": 1e-2, "eval_steps": None, "save_steps": None})
    run = tunelab.train(cfg).run_dir
    comp = compare([str(run), BASE], out_dir=tmp_path / "cmp")
    ev = json.loads((run / "eval.json").read_text())["metrics"]
    table = {row["metric"]: row for row in comp.table}
    assert set(table) == {"accuracy", "macro_f1", "macro_precision", "macro_recall", "mcc"}
    for key in ("accuracy", "macro_f1", "mcc"):
        assert table[key]["values"]["cls"] == pytest.approx(ev["tuned"][key])
        assert table[key]["values"][BASE] == pytest.approx(ev["base"][key])
        assert "cls" in table[key]["deltas"]
    assert comp.primary == "correct"
    assert len(comp.regressions["cls"]) == comp.counts["cls"]["worse"]
    text = comp.report.read_text(encoding="utf-8")
    assert 'id="confusion"' in text and "true \\ predicted" in text
    # the run's own model predicts the same labels again; its untrained base head cannot be rebuilt
    again = compare([str(run)], out_dir=tmp_path / "again", regenerate=True)
    saved = read_predictions(run / "predictions.jsonl")
    assert again.results["cls"].outputs == [row.outputs["tuned"] for row in saved]
    with pytest.raises(TunelabError, match="untrained head"):
        compare([str(run), BASE], out_dir=tmp_path / "x", regenerate=True)
    extras = run_report_extras(run)
    assert "confusion" in extras and {"accuracy", "macro_f1"} <= set(extras["intervals"])
