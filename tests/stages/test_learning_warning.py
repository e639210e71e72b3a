"""A run that learns nothing says so — in eval.json, run.json, the console table's results and the first
section of its report — instead of a plain "complete"."""

import json

import tunelab
from tunelab.runs.layout import RunDir


def test_a_run_with_learning_rate_zero_is_flagged(tiny_config):
    result = tunelab.train(tiny_config(name="frozen", training={"lr": 0, "max_steps": 6, "eval_steps": None,
                                                                "save_steps": None, "scheduler": "constant"}))  # fmt: skip
    base, tuned = result.results["metrics"]["base"], result.results["metrics"]["tuned"]
    assert tuned["rougeL"] == base["rougeL"]  # the model did not change, so its answers did not
    warnings = result.results["warnings"]
    assert any("not clearly better than the base on held-out rougeL" in w for w in warnings), warnings
    check = result.results["learning_check"]
    assert check["delta"] == 0 and check["low"] <= 0 <= check["high"] and not check["better"]
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


def test_better_on_average_but_within_noise_is_flagged():
    """Two more right answers out of eight is no proof: the paired interval of the difference still
    includes zero, and the run says so; eight more out of eight is."""
    from types import SimpleNamespace

    from tunelab.evaluation.bootstrap import mean_metric
    from tunelab.stages.common import learning_check, learning_warnings

    ctx = SimpleNamespace(run=SimpleNamespace(metrics=RunDir("/nonexistent").metrics))
    base, small, large = [0.0] * 8, [100.0, 100.0] + [0.0] * 6, [100.0] * 8
    noisy = learning_check(ctx, {"x": 1}, {"x": 1}, (mean_metric("exact_match"), base, small))
    assert noisy["delta"] == 25 and noisy["low"] <= 0 and not noisy["better"]
    assert "not clearly better" in learning_warnings(ctx, {}, {}, noisy)[0]
    clear = learning_check(ctx, {"x": 1}, {"x": 1}, (mean_metric("exact_match"), base, large))
    assert clear["better"] and learning_warnings(ctx, {}, {}, clear) == []
