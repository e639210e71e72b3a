"""Off-task probes: each flag by its rule on hand-made answers, the probe sources a config may name,
and a tiny run that answers them with base and tuned and shows them in its report."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.probes import (
    DEFAULT_PROBES,
    flag_answer,
    load_probes,
    probe_regression,
    probe_results,
    training_answer_set,
)

TRAINED = training_answer_set(["The sky is blue.", "Yes.", "I like  green   apples"])


@pytest.mark.parametrize(("text", "hit", "flags"), [
    ("Mars is the fourth planet from the sun.", False, []),
    ("   ", False, ["empty"]),
    ("I am a bot. I am a bot. I am a bot. I am a bot.", False, ["repetition"]),
    ("one two three four five six seven eight nine ten", True, ["hit_limit"]),
    ("the sky is BLUE.", False, ["copied"]),  # case and spacing aside, a training answer
    ("Yes.", False, []),  # too short to call copied
    ("i like green apples", False, ["copied"]),
])  # fmt: skip
def test_flags(text: str, hit: bool, flags: list[str]) -> None:
    assert flag_answer(text, hit, TRAINED) == flags


def test_probe_sources(tmp_path) -> None:
    assert load_probes("builtin") == list(DEFAULT_PROBES)
    assert load_probes(None) == [] and load_probes([]) == []
    assert load_probes(["Hi?", " ", "Why?"]) == ["Hi?", "Why?"]
    (tmp_path / "p.txt").write_text("First?\n\nSecond?\n", encoding="utf-8")
    assert load_probes("p.txt", base_dir=tmp_path) == ["First?", "Second?"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "A?"}\n{"text": "B?"}\n', encoding="utf-8")
    with pytest.raises(TunelabError) as err:
        load_probes(str(tmp_path / "p.jsonl"))
    assert err.value.line == 2 and err.value.field == "prompt"
    with pytest.raises(TunelabError, match="probe file not found"):
        load_probes(str(tmp_path / "missing.txt"))


def test_summary_counts_and_regression() -> None:
    said = {"base": [{"output": "Paris.", "new_tokens": 2, "hit_limit": False}] * 2,
            "tuned": [{"output": "", "new_tokens": 0, "hit_limit": False},
                      {"output": "the sky is blue", "new_tokens": 5, "hit_limit": False}]}  # fmt: skip
    found = probe_results(["Capital of France?", "Colour?"], said, TRAINED)
    assert found["summary"]["base"]["flagged"] == 0
    assert found["summary"]["tuned"] == {"flagged": 2, "of": 2, "empty": 1, "repetition": 0, "hit_limit": 0,
                                         "copied": 1}  # fmt: skip
    assert "2 of 2 tuned answers flagged, 0 of the base's (empty 0→1, copied 0→1)" in probe_regression(found)
    assert probe_regression(probe_results(["x"], {"base": said["tuned"][:1], "tuned": said["base"][:1]}, set())) is None


@pytest.mark.usefixtures("one_thread")
def test_a_run_answers_its_probes_and_reports_them(tiny_config) -> None:
    from tunelab import api

    prompts = ["What do you think of Mars?", "Name a colour."]
    result = api.train(tiny_config(training={"max_steps": 4, "eval_steps": 4, "save_steps": 4},
                                   evaluation={"max_new_tokens": 5, "probes": prompts}))  # fmt: skip
    found = json.loads((result.run_dir / "probes.json").read_text())
    assert [r["prompt"] for r in found["rows"]] == prompts
    for r in found["rows"]:
        for name in ("base", "tuned"):
            said = r[name]
            assert said["new_tokens"] <= 5 and said["hit_limit"] == (said["new_tokens"] == 5)
            assert ("hit_limit" in said["flags"]) == said["hit_limit"]
    summary = json.loads((result.run_dir / "eval.json").read_text())["probes"]
    assert summary["tuned"]["flagged"] == sum(bool(r["tuned"]["flags"]) for r in found["rows"])
    report = (result.run_dir / "report.html").read_text()
    assert "Off-task probes" in report and "What do you think of Mars?" in report
    # `tunelab eval RUN --base` shows the same probes: the run's own answers, read back, not made again
    from tunelab.evaluation.compare import BASE, compare

    comp = compare([BASE, str(result.run_dir)], out_dir=result.run_dir / "eval-probes")
    name = comp.models[1]
    assert [r[BASE]["output"] for r in comp.probes["rows"]] == [r["base"]["output"] for r in found["rows"]]
    assert [r[name]["output"] for r in comp.probes["rows"]] == [r["tuned"]["output"] for r in found["rows"]]
    assert "Off-task probes" in comp.report.read_text()
