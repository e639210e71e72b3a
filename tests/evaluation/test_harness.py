"""lm-evaluation-harness through `tunelab bench --tasks`: tunelab's mini_mc run by lm-eval gives what
tunelab's own scorer gives on the same model; a local YAML task runs offline; base vs tuned get paired
intervals; a registry task whose data is not here is one clear message."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_mini_mc_through_lm_eval_equals_tunelabs_scorer(tiny_model) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.templates import PromptFormat
    from tunelab.evaluation.bench import load_task, score_items, summarise
    from tunelab.evaluation.harness import evaluate_tasks, task_manager

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ours = evaluate_tasks(model, tok, ["mini_mc"], manager=task_manager())["mini_mc"]
    items, _ = load_task("builtin:mini_mc")
    # tunelab's scorer with a plain-text format: the question, then " " + choice, as lm-eval's YAML says
    theirs, rows = summarise(items, score_items(model, tok, PromptFormat.build(tok, shape="text"), "text", items))
    assert ours["n"] == len(items) == 60
    assert 100 * ours["metrics"]["acc"] == pytest.approx(theirs["acc"])
    assert 100 * ours["metrics"]["acc_norm"] == pytest.approx(theirs["acc_norm"])
    assert [s["acc"] for s in ours["samples"]] == [r["acc"] / 100 for r in rows]  # document by document


def test_a_local_yaml_task_with_base_and_tuned(tiny_run, tmp_path) -> None:
    from tunelab.evaluation.harness import harness_bench

    data = tmp_path / "tasks" / "colours.jsonl"
    data.parent.mkdir()
    data.write_text("\n".join(json.dumps({"q": f"The sky number {i} is", "options": ["blue", "green"], "gold": i % 2})
                              for i in range(10)) + "\n")  # fmt: skip
    (data.parent / "colours.yaml").write_text(
        f"task: colours\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{options}}'\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n"
    )
    result = harness_bench(tiny_run, ["colours", "mini_mc"], with_base=True, limit=12, include_path=[data.parent],
                           out_dir=tmp_path / "out")  # fmt: skip
    assert result["n"] == {"colours": 10, "mini_mc": 12}
    rows = {r["metric"]: r for r in result["table"]}
    assert set(rows) == {"colours acc", "mini_mc acc", "mini_mc acc_norm"}
    for metric, row in rows.items():
        task, m = metric.split()
        for name in ("base", tiny_run.name):
            assert row["values"][name] == pytest.approx(100 * result["models"][name][task][m])
        delta = row["deltas"][tiny_run.name]
        assert delta["low"] <= delta["delta"] <= delta["high"]
    assert (tmp_path / "out" / "bench.json").is_file() and "lm-eval results" in (tmp_path / "out" / "report.html").read_text()


def test_missing_data_and_unknown_tasks_are_one_message(tiny_run, monkeypatch) -> None:
    from tunelab.errors import TunelabError
    from tunelab.evaluation.harness import harness_bench

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TunelabError, match="could not load the data of arc_easy"):
        harness_bench(tiny_run, ["arc_easy"], limit=2)
    with pytest.raises(TunelabError, match="unknown lm-eval task 'hellaswagg'"):
        harness_bench(tiny_run, ["hellaswagg"])
