"""bench end to end on the tiny random Llama: a random model is at chance level, a model trained on the
answers is far better (and the paired interval says so); the task file layouts and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import tunelab
from evaluation.helpers import run_config, write_rows
from tunelab.errors import TunelabError
from tunelab.evaluation.bench import load_task
from tunelab.runs import BASE, read_predictions

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_random_is_chance_and_fine_tuned_is_better(tiny_model: Path, tmp_path: Path) -> None:
    items, label = load_task("builtin:mini_mc")
    assert label == "builtin:mini_mc" and len(items) == 60
    data = write_rows(tmp_path / "mc.jsonl", [{"question": it.question, "answer": it.choices[it.gold]} for it in items])
    cfg = run_config(tmp_path, tiny_model, data, name="mc", method="full",
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
    # predictions in the one schema: every model's pick keyed by its name, acc as its per-example score
    preds = read_predictions(Path(result["out_dir"]) / "predictions.jsonl")
    assert len(preds) == 60 and set(preds[0].outputs) == {BASE, "mc"}
    assert preds[0].reference == items[0].choices[items[0].gold] and preds[0].meta["choices"] == items[0].choices
    assert sum(p.scores["mc"]["acc"] for p in preds) / 60 == pytest.approx(tuned["acc"])
    page = Path(result["report"]).read_text(encoding="utf-8")
    assert page.index('id="comparison"') < page.index('id="examples"') < page.index('id="notes"')


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
    items, _ = load_task(write_rows(path, rows))
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
