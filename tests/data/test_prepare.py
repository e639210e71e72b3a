"""`tunelab data prepare`: the tutorial's pipeline as options, shape conversions, counted drops, seeded
splits, and output that tunelab reads back and trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunelab
from tunelab.data.doctor import DataErrors, check_file
from tunelab.data.prepare import PrepareConfig, load_prepare_config, prepare
from tunelab.errors import TunelabError

EXAMPLES = Path(__file__).parents[2] / "examples"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_tutorial_pipeline_on_medical_csv_and_the_output_trains(tmp_path, tiny_model):
    cfg, base = load_prepare_config(EXAMPLES / "data_prepare.yaml", ["first=12"])
    result = prepare(cfg, tmp_path / "prepared", base_dir=base)
    rows = _rows(result.files["train"])
    assert len(rows) == 12 and result.read == 24
    assert all(set(r) == {"question", "answer"} for r in rows)  # Description/Doctor kept and renamed
    assert rows[0]["question"] == "What can cause frequent headaches in the afternoon?"  # "Q. " stripped
    assert not any(r["question"].startswith("Q.") or "  " in r["answer"] for r in rows)
    assert len(result.dropped["beyond first 12"]) == 12  # nothing dropped silently
    report = json.loads((tmp_path / "prepared" / "prepare.json").read_text())
    assert report["written"] == {"train": 12} and report["dropped"]["beyond first 12"]["rows"] == 12
    assert check_file(result.files["train"]).ok
    run = tunelab.train({
        "name": "prepared", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model),
        "data": {"train": str(result.files["train"]), "max_length": 96, "split": {"validation": 0.0, "test": 0.0}},
        "training": {"max_steps": 2, "batch_size": 4, "eval_steps": None, "save_steps": None, "precision": "fp32"},
        "evaluation": {"enabled": False},
    })  # fmt: skip
    assert (run.run_dir / "adapter").is_dir()


def test_whitespace_prefix_empty_and_duplicate_rows_are_counted(tmp_path):
    src = tmp_path / "raw.csv"
    src.write_text('Description,Doctor\n"Q.  What   is\nthis?",  Hi.  A   thing.\nQ. Empty?,\n'
                   'Q. What is this?,Hi. A thing.\nQuestion without prefix?,Yes.\n', encoding="utf-8")  # fmt: skip
    cfg = PrepareConfig(input=str(src), columns={"Description": "question", "Doctor": "answer"},
                        whitespace="collapse", strip_prefix={"question": r"^Q\.\s*"})  # fmt: skip
    result = prepare(cfg, tmp_path / "out")
    assert _rows(result.files["train"]) == [
        {"question": "What is this?", "answer": "Hi. A thing."},
        {"question": "Question without prefix?", "answer": "Yes."},  # a regex, not lstrip('Q. ')
    ]
    assert result.dropped["empty"] == [f"{src}:4"]
    assert result.dropped["duplicate"] == [f"{src}:5 (same as {src}:2)"]
    assert result.changed == {"whitespace": 1, "strip_prefix.question": 3}


@pytest.mark.parametrize("target", ["alpaca", "messages", "conversations", "prompt_completion", "qa"])
def test_conversions_round_trip(tmp_path, target):
    src = _write(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}", "topic": "t"} for i in range(4)])
    there = prepare(PrepareConfig(input=str(src), to=target), tmp_path / "there").files["train"]
    assert check_file(there).shape == target
    back = prepare(PrepareConfig(input=str(there), to="qa"), tmp_path / "back").files["train"]
    assert _rows(back) == _rows(src)  # metadata (topic) travels along


def test_alpaca_input_joins_the_question_and_multi_turn_cannot_become_qa(tmp_path):
    src = _write(tmp_path / "a.jsonl", [{"instruction": "Translate", "input": "chat", "output": "cat"}])
    out = prepare(PrepareConfig(input=str(src), to="messages"), tmp_path / "m").files["train"]
    assert _rows(out)[0]["messages"][0] == {"role": "user", "content": "Translate\n\nchat"}
    chat = _write(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ])  # fmt: skip
    with pytest.raises(DataErrors, match=rf"{chat}:2: cannot convert to qa: the row has 4 turns"):
        prepare(PrepareConfig(input=str(chat), to="qa"), tmp_path / "q")
    result = prepare(PrepareConfig(input=str(chat), to="qa", drop_invalid=True), tmp_path / "q2")
    assert len(_rows(result.files["train"])) == 1 and len(result.dropped["not convertible"]) == 1


def test_invalid_rows_are_all_listed(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"question": "a", "answer": "b"}\n{"question": 1, "answer": ["x"]}\n{"question": oops}\n')
    with pytest.raises(DataErrors) as info:
        prepare(PrepareConfig(input=str(src)), tmp_path / "out")
    assert str(info.value).splitlines()[0].startswith(f"{src}:3: invalid JSON")


def test_split_is_seeded_and_keeps_prompts_together(tmp_path):
    rows = [{"question": f"q{i % 10}", "answer": f"a{i}"} for i in range(40)]
    src = _write(tmp_path / "d.jsonl", rows)
    cfg = PrepareConfig(input=str(src), split={"validation": 0.1, "test": 0.2, "seed": 3})
    one, two = prepare(cfg, tmp_path / "one"), prepare(cfg, tmp_path / "two")
    assert {k: _rows(v) for k, v in one.files.items()} == {k: _rows(v) for k, v in two.files.items()}
    assert sum(one.counts.values()) == 40 and set(one.files) == {"train", "validation", "test"}
    questions = {k: {r["question"] for r in _rows(v)} for k, v in one.files.items()}
    assert not questions["train"] & (questions["validation"] | questions["test"])


def test_sample_is_seeded_and_first_and_sample_exclude_each_other(tmp_path):
    src = _write(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(20)])
    a = prepare(PrepareConfig(input=str(src), sample=5, seed=1), tmp_path / "a")
    b = prepare(PrepareConfig(input=str(src), sample=5, seed=1), tmp_path / "b")
    assert _rows(a.files["train"]) == _rows(b.files["train"]) and len(a.dropped["not in sample of 5"]) == 15
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"input: {src}\nfirst: 3\nsample: 2\n")
    with pytest.raises(TunelabError, match="give either first"):
        load_prepare_config(cfg)


def test_config_errors_name_the_line(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("input: x.csv\nwhitespce: collapse\n")
    with pytest.raises(TunelabError) as info:
        load_prepare_config(cfg)
    assert str(info.value).startswith(f"{cfg}:2: whitespce: unknown key (did you mean 'whitespace'?)")
    cfg.write_text("input: x.csv\nstrip_prefix: {question: '(unclosed'}\n")
    with pytest.raises(TunelabError, match=r":2: strip_prefix: .*invalid regular expression"):
        load_prepare_config(cfg)


def test_existing_output_needs_overwrite(tmp_path):
    src = _write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    prepare(PrepareConfig(input=str(src)), tmp_path / "out")
    with pytest.raises(TunelabError, match="already holds prepared data"):
        prepare(PrepareConfig(input=str(src)), tmp_path / "out")
    prepare(PrepareConfig(input=str(src)), tmp_path / "out", overwrite=True)
