"""A run that learns nothing says so — in eval.json, run.json, the console table's results and the first
section of its report — instead of a plain "complete"."""

import json

import tunelab
from tunelab.runs.layout import RunDir


def test_a_run_with_no_learning_rate_to_speak_of_is_flagged(tiny_config):
    result = tunelab.train(tiny_config(name="frozen", training={"lr": 1e-12, "max_steps": 6, "eval_steps": None,
                                                                "save_steps": None, "scheduler": "constant"}))  # fmt: skip
    base, tuned = result.results["metrics"]["base"], result.results["metrics"]["tuned"]
    assert tuned["rougeL"] == base["rougeL"]  # the model did not change, so its answers did not
    warnings = result.results["warnings"]
    assert any("not better than the base on held-out rougeL" in w for w in warnings), warnings
    assert json.loads((result.run_dir / "eval.json").read_text())["warnings"] == warnings
    run = RunDir(result.run_dir)
    assert run.is_complete and run.read_status()["summary"]["warnings"] == warnings
    text = (result.run_dir / "report.html").read_text()
    assert text.index('id="learning-warning"') < text.index('id="summary"') and "Did not learn?" in text


def test_a_run_that_learns_is_not_flagged(tiny_config):
    result = tunelab.train(tiny_config(name="learns", training={"lr": 1e-2, "max_steps": 30, "eval_steps": None,
                                                                "save_steps": None}))  # fmt: skip
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    assert not any("train loss" in w for w in result.results["warnings"])
