"""k-fold cross-validation end to end on the tiny random Llama: the folds partition the rows, and the
summary is the mean ± sample std over the folds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.helpers import eval_rows, run_config, write_rows
from tunelab.errors import TunelabError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cross_validation_three_folds(tiny_model: Path, tmp_path: Path) -> None:
    from tunelab.evaluation.crossval import cross_validate

    data = write_rows(tmp_path / "qa.jsonl", eval_rows())
    cfg = run_config(tmp_path, tiny_model, data, name="cvtiny",
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
    assert sorted(tested) == sorted(r["question"] for r in eval_rows())
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
