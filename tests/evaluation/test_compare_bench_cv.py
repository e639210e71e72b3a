"""eval / compare / bench / cv end to end on the tiny random Llama (single-threaded: seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import tunelab
from tunelab.commands import evaluate as commands
from tunelab.errors import TunelabError
from tunelab.evaluation.bench import load_task
from tunelab.evaluation.compare import BASE, compare

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(n: int = 48) -> list[dict]:
    from conftest import qa_rows

    rows = qa_rows(n)
    for i, row in enumerate(rows):
        row["topic"] = ("colours", "things", "misc")[i % 3]
    return rows


def _config(directory: Path, model: Path, data_file: Path, **changes) -> dict:
    cfg = {
        "name": "tiny",
        "output_dir": str(directory / "runs"),
        "model": str(model),
        "data": {"train": str(data_file), "max_length": 64, "split": {"validation": 0.1, "test": 0.25, "seed": 1}},
        "training": {"max_steps": 20, "batch_size": 4, "lr": 5e-3, "logging_steps": 5, "eval_steps": 10,
                     "save_steps": 10, "precision": "fp32", "warmup_ratio": 0.0},
        "evaluation": {"max_new_tokens": 8, "batch_size": 8},
    }
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model, one_thread) -> Path:
    d = tmp_path_factory.mktemp("evalrun")
    data = d / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return tunelab.train(_config(d, tiny_model, data)).run_dir


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


def test_regenerated_outputs_equal_the_runs_own(tiny_run: Path, tmp_path: Path) -> None:
    comp = compare([str(tiny_run)], out_dir=tmp_path / "again", regenerate=True, with_perplexity=False)
    saved = [json.loads(line) for line in (tiny_run / "predictions.jsonl").read_text().splitlines()]
    result = comp.results["tiny"]
    assert result.origin.startswith("generated")
    assert result.outputs == [row["tuned"] for row in saved]  # greedy, batched, deterministic
    assert result.new_tokens == [row["tuned_stats"]["new_tokens"] for row in saved]
    assert comp.baseline is None and not comp.regressions
    assert "perplexity" not in {row["metric"] for row in comp.table}


def test_cli_eval_compare_and_errors(tiny_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "extra.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(6)), encoding="utf-8")
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
    res = runner.invoke(_app(), ["bench", str(tiny_run), "--harness", "arc_easy"])
    assert isinstance(res.exception, TunelabError) and "lm-evaluation-harness is not installed" in str(res.exception)


def test_comparison_report_in_chromium(tiny_run: Path, tmp_path: Path, chromium) -> None:
    comp = compare([str(tiny_run), BASE], out_dir=tmp_path / "cmp", with_perplexity=False)
    page = chromium.load(comp.report, "flag=regression")
    assert page.console == [], page.console
    assert 'data-ready="1"' in page.dom
    assert f'data-shown="{comp.counts["tiny"]["worse"]}"' in page.dom


def test_run_report_extras(tiny_run: Path, tmp_path: Path) -> None:
    from tunelab.api import metrics_table
    from tunelab.evaluation.report import write_report
    from tunelab.evaluation.run_report import run_report_extras

    extras = run_report_extras(tiny_run, max_new_tokens=8)
    assert set(extras) == {"intervals", "figures", "lists", "examples"}
    assert {"rougeL", "bleu", "exact_match", "token_f1"} <= set(extras["intervals"])
    results = json.loads((tiny_run / "eval.json").read_text())
    out = write_report(tmp_path / "report.html", title="run", config={}, summary={}, metrics_table=metrics_table(results),
                       plots={"Loss": tiny_run / "loss.png"}, samples=[], **extras)
    text = out.read_text(encoding="utf-8")
    assert "95% CI of delta" in text and 'id="examples-table"' in text and "Regressions" in text
    assert run_report_extras(tmp_path) == {}


def test_bench_random_is_chance_and_fine_tuned_is_better(tiny_model: Path, tmp_path: Path) -> None:
    items, label = load_task("builtin:mini_mc")
    assert label == "builtin:mini_mc" and len(items) == 60
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": it.question, "answer": it.choices[it.gold]}) + "\n" for it in items))
    cfg = _config(tmp_path, tiny_model, data, name="mc", method="full",
                  data={"max_length": 96, "split": {"validation": 0.0, "test": 0.0, "seed": 1}},
                  training={"max_steps": 100, "batch_size": 8, "lr": 3e-3, "eval_steps": None, "save_steps": None,
                            "logging_steps": 20, "load_best_model_at_end": False},
                  evaluation={"enabled": False})
    run = tunelab.train(cfg).run_dir
    result = tunelab_bench(run)
    base, tuned = result["models"][BASE], result["models"]["mc"]
    assert result["chance"] == pytest.approx(25.0) and base["n"] == 60
    # a random model is at chance level (binomial sd over 60 questions ≈ 5.6 points)
    for key in ("acc", "acc_norm"):
        assert 5.0 <= base[key] <= 45.0, (key, base)
    # trained on the answers, it picks them far more often, and the paired interval says so
    assert tuned["acc_norm"] >= base["acc_norm"] + 20, (base, tuned)
    assert tuned["acc"] > base["acc"], (base, tuned)
    delta = next(row for row in result["table"] if row["metric"] == "acc_norm")["deltas"]["mc"]
    assert delta["excludes_zero"] and delta["low"] > 0
    assert (Path(result["out_dir"]) / "bench.json").is_file() and Path(result["report"]).is_file()


def tunelab_bench(run: Path) -> dict:
    from tunelab.evaluation.bench import bench

    return bench(run, with_base=True)


def test_bench_task_formats_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"question": "q1", "choices": ["a", "b", "c"], "answer": "B"},
        {"question": {"stem": "q2", "choices": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"}]},
         "answerKey": "B"},
        {"question": "q3", "choices": {"label": ["1", "2"], "text": ["u", "v"]}, "answerKey": "2"},
        {"ctx": "q4", "endings": ["e1", "e2", "e3", "e4"], "label": "3"},
        {"question": "q5", "A": "m", "B": "n", "C": "o", "answer": "C"},
        {"question": "q6", "options": ["yes", "no"], "answer": "no"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, _ = load_task(path)
    assert [it.gold for it in items] == [1, 1, 1, 3, 2, 1]
    assert items[1].choices == ["x", "y"] and items[4].choices == ["m", "n", "o"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(TunelabError, match=r"bad.jsonl:1: answer: .*out of range"):
        load_task(bad)
    bad.write_text('{"prompt": "q"}\n')
    with pytest.raises(TunelabError, match="not a multiple-choice row"):
        load_task(bad)
    with pytest.raises(TunelabError, match="task file not found"):
        load_task(tmp_path / "missing.jsonl")


def test_cross_validation_three_folds(tiny_model: Path, tmp_path: Path) -> None:
    from tunelab.evaluation.crossval import cross_validate

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    cfg = _config(tmp_path, tiny_model, data, name="cvtiny",
                  training={"max_steps": 6, "eval_steps": 6, "save_steps": 6, "logging_steps": 2},
                  evaluation={"max_new_tokens": 4, "batch_size": 16})
    result = cross_validate(cfg, folds=3)
    cv_dir = Path(result["dir"])
    assert cv_dir == tmp_path / "runs" / "cvtiny-cv"
    assert len(result["per_fold"]) == 3
    # the folds partition the rows: every row tested exactly once, never trained on in its own fold
    tested = []
    for i in (1, 2, 3):
        test_rows = [json.loads(x) for x in (cv_dir / "data" / f"fold-{i}-test.jsonl").read_text().splitlines()]
        train_rows = [json.loads(x) for x in (cv_dir / "data" / f"fold-{i}-train.jsonl").read_text().splitlines()]
        assert not {r["question"] for r in test_rows} & {r["question"] for r in train_rows}
        assert all("topic" in r for r in test_rows)  # extra fields survive, for slicing
        tested += [r["question"] for r in test_rows]
        assert (cv_dir / f"fold-{i}" / "eval.json").is_file()
    assert sorted(tested) == sorted(r["question"] for r in _rows())
    summary = {row["metric"]: row for row in result["summary"]}
    rouge = summary["rougeL"]
    values = [f["tuned"]["rougeL"] for f in result["per_fold"]]
    assert rouge["folds"] == 3 and rouge["tuned"]["mean"] == pytest.approx(sum(values) / 3)
    mean = sum(values) / 3
    assert rouge["tuned"]["std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5)
    assert rouge["delta"]["mean"] == pytest.approx(sum(f["tuned"]["rougeL"] - f["base"]["rougeL"] for f in result["per_fold"]) / 3)
    for name in ("cv.json", "cv.csv", "report.html"):
        assert (cv_dir / name).is_file()
    with pytest.raises(TunelabError, match="already exists"):
        cross_validate(cfg, folds=3)
    with pytest.raises(TunelabError, match="at least 2 folds"):
        cross_validate(cfg, folds=1, overwrite=True)


def test_classification_run_compare_and_report(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import sentiment_rows
    from tunelab.evaluation.run_report import run_report_extras

    data = tmp_path / "sentiment.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in sentiment_rows()), encoding="utf-8")
    cfg = _config(tmp_path, tiny_model, data, name="cls", task="classify",
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
    saved = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert again.results["cls"].outputs == [row["tuned"] for row in saved]
    with pytest.raises(TunelabError, match="untrained head"):
        compare([str(run), BASE], out_dir=tmp_path / "x", regenerate=True)
    extras = run_report_extras(run)
    assert "confusion" in extras and {"accuracy", "macro_f1"} <= set(extras["intervals"])
