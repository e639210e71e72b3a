"""Per-model metrics and the one interval table (compare and bench build it the same way)."""

from __future__ import annotations

import pytest

from evaluation.fakes import rows, scored
from tunelab.errors import TunelabError
from tunelab.evaluation import bootstrap as B
from tunelab.evaluation.scoring import METRIC_ORDER, comparison_table, interval_table, metric_stats

REFS = ["the sky is blue", "grass is green", "snow is white", "coal is black", "the sun is yellow", "a plum"]
BASE_OUT = ["sky", "grass is green", "snow", "coal is black", "the moon", "a plum"]
TUNED_OUT = ["the sky is blue", "grass is green", "snow is white", "coal is grey", "the sun is yellow", "plum"]


def test_table_values_are_the_metrics_with_intervals_and_paired_deltas() -> None:
    data = rows(REFS)
    base, tuned = scored("base", BASE_OUT, data, is_base=True), scored("tuned", TUNED_OUT, data)
    table = comparison_table([base, tuned], "base", data, resamples=200, seed=3)
    assert [r["metric"] for r in table] == [m for m in METRIC_ORDER if m in tuned.metrics]  # no perplexity: no NLLs
    by = {r["metric"]: r for r in table}
    for key in ("rougeL", "bleu", "chrf", "exact_match", "token_f1", "mean_output_tokens", "hit_token_limit"):
        assert by[key]["values"]["tuned"] == pytest.approx(tuned.metrics[key]), key
        assert by[key]["values"]["base"] == pytest.approx(base.metrics[key]), key
        assert set(by[key]["deltas"]) == {"tuned"}  # against the baseline only
        low, high = by[key]["intervals"]["tuned"]["low"], by[key]["intervals"]["tuned"]["high"]
        assert low <= by[key]["values"]["tuned"] + 1e-9 and by[key]["values"]["tuned"] <= high + 1e-9
    spec, stats = metric_stats(tuned, data)["rougeL"]
    direct = B.paired_bootstrap(spec, metric_stats(base, data)["rougeL"][1], stats, resamples=200, seed=3)
    assert by["rougeL"]["deltas"]["tuned"] == pytest.approx(direct)


def test_interval_table_skips_absent_metrics_and_marks_missing_values() -> None:
    stats = {
        "a": {"acc": (B.mean_metric("acc"), [100.0, 0.0, 100.0, 100.0])},
        "b": {"acc": (B.mean_metric("acc"), [100.0, 100.0, 100.0, 100.0]), "acc_norm": (B.mean_metric("acc_norm"), [0.0] * 4)},
    }
    table = interval_table(stats, ("acc", "acc_norm", "f1"), baseline="a", n=4, resamples=100, seed=0)
    assert [r["metric"] for r in table] == ["acc", "acc_norm"]
    acc, norm = table
    assert acc["values"] == {"a": 75.0, "b": 100.0} and acc["deltas"]["b"]["delta"] == pytest.approx(25.0)
    assert norm["values"] == {"a": None, "b": 0.0} and "a" not in norm["intervals"] and norm["deltas"] == {}
    no_baseline = interval_table(stats, ("acc",), baseline=None, n=4, resamples=100, seed=0)
    assert no_baseline[0]["deltas"] == {} and no_baseline[0]["values"] == acc["values"]


def test_classification_scores_and_unknown_labels() -> None:
    data = rows(["pos", "neg", "pos", "neg"], kind="classification", labels=["neg", "pos"])
    r = scored("clf", ["pos", "pos", "pos", "neg"], data)
    assert r.metrics["accuracy"] == pytest.approx(75.0) and r.metrics["confusion_matrix"] == [[1, 1], [0, 2]]
    assert [e["correct"] for e in r.per_example] == [100.0, 0.0, 100.0, 100.0]
    table = {row["metric"]: row for row in comparison_table([r], None, data, resamples=100, seed=0)}
    assert set(table) == set(B.CLASSIFICATION_METRICS)
    assert table["accuracy"]["values"]["clf"] == pytest.approx(75.0)
    with pytest.raises(TunelabError, match="predicted a label that is not one of neg, pos"):
        scored("bad", ["pos", "maybe", "pos", "neg"], data)
