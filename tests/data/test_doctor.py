"""The data doctor: every kind of bad file gets its own message at the right line, all problems at once,
no traceback, nothing dropped silently; the training preflight refuses bad data with the same messages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tunelab.commands import data as data_commands
from tunelab.config import config_from_dict
from tunelab.data.doctor import DataErrors, Doctor, check_config, check_file, check_for_training, measure
from tunelab.data.shapes import to_example
from tunelab.data.templates import PromptFormat
from tunelab.errors import TunelabError
from tunelab.stages.registry import STAGES

BAD = Path(__file__).parent / "bad"
TEMPLATE = "{context}\n{question}\n{answer}"

# file, doctor options, severity, the expected line (without the "FILE:" prefix), number of problems of
# that severity. The options "tokenizer" and "--model" are filled in with the tiny model.
CORPUS = [
    ("invalid_json.jsonl", {}, "error", "3: invalid JSON: Expecting value at column 29", 1),
    ("not_an_object.jsonl", {}, "error", "2: line is a JSON list, not an object", 1),
    ("bad_utf8.jsonl", {}, "error", "2: byte 0xe9 is not valid UTF-8 (invalid continuation byte)", 1),
    ("missing_field.jsonl", {}, "error", "2: answer: missing for shape qa; the row has keys 'question'", 1),
    ("empty_field.jsonl", {}, "error", "3: answer: is empty (expected a non-empty string)", 1),
    ("wrong_type.jsonl", {}, "error", "2: answer: is a list, not a string (expected a string)", 1),
    ("mixed_shapes.jsonl", {}, "error", "3: row is Alpaca instruction", 1),
    ("unknown_role.jsonl", {}, "error", "2: messages[1].role: unknown role 'bot'", 1),
    ("no_assistant.jsonl", {}, "error", "2: messages: has no assistant turn", 1),
    ("turn_not_object.jsonl", {}, "error", "1: messages[0]: is a string, not an object", 1),
    ("sharegpt_unknown_from.jsonl", {}, "error", "2: conversations[1].from: unknown role 'robot'", 1),
    ("label_outside_set.jsonl", {"labels": ["fresh", "rotten"]}, "error",
     "3: label: label 'meh' is not in the label set (expected one of fresh, rotten)", 1),
    ("too_many_cells.csv", {}, "error", "3: row has 3 cells but the header has 2 columns", 1),
    ("unclosed_quote.csv", {}, "error", "3: a quote opened in this row is never closed", 1),
    ("duplicate_header.csv", {}, "error", "1: header has duplicate column 'question'", 1),
    ("missing_column.csv", {"columns": {"Description": "question", "Doctor": "answer"}}, "error",
     "2: Description: column 'Description' not found; the row has columns 'Desc', 'Patient', 'Doctor'", 1),
    ("unknown_shape.jsonl", {}, "error", "1: cannot tell the shape of the data from the row's keys 'q', 'a'", 1),
    ("top_level_object.json", {}, "error", '1: top level is an object without a "data" list', 1),
    ("empty.jsonl", {}, "error", " no rows (expected at least one row of data)", 1),
    ("wrong_extension.xlsx", {}, "error", " unsupported file type '.xlsx'", 1),
    ("text_for_sft.jsonl", {"task": "sft"}, "error", " data: task 'sft' cannot train on rows of shape 'text'", 1),
    ("template_field_missing.jsonl", {"tokenizer": True, "template": TEMPLATE}, "error",
     "2: data.template: template field {context} is not in this row", 1),
    ("duplicate_rows.jsonl", {}, "warning", "4: exact duplicate of line 1", 1),
    ("empty_row.jsonl", {}, "warning", "2: row is empty (every field is blank); it is skipped", 1),
    ("too_long.jsonl", {"tokenizer": True, "max_length": 40}, "warning",
     "2: tokens: is 54 tokens, longer than max_length 40: truncation cuts the last 14 tokens (14 of them trained), "
     "including the EOS", 1),
    ("prompt_fills_max_length.jsonl", {"tokenizer": True, "max_length": 40}, "warning",
     "2: tokens: is 56 tokens and the answer starts after max_length 40: no trained token is left", 1),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from tunelab.models.loading import load_tokenizer

    return load_tokenizer(tiny_model)


def _options(options: dict, tokenizer=None) -> dict:
    """check_file's arguments: the tiny tokenizer where asked for, and the shapes the task trains on (as the
    CLI passes them from the stage table)."""
    options = {k: v for k, v in options.items() if k != "tokenizer" or tokenizer is not None}
    if options.get("tokenizer"):
        options["tokenizer"] = tokenizer
    if "task" in options:
        options["task_shapes"] = STAGES[options["task"]].shapes
    return options


@pytest.mark.parametrize(("name", "options", "severity", "expected", "count"), CORPUS, ids=[c[0] for c in CORPUS])
def test_each_bad_file_gets_its_message_and_line(name, options, severity, expected, count, tokenizer):
    path = BAD / name
    report = check_file(path, **_options(options, tokenizer))
    found = [str(p) for p in report.problems if p.severity == severity]
    assert any(text.startswith(f"{path}:{expected}") for text in found), found
    assert len(found) == count, found
    assert report.ok == (severity == "warning")


def test_corpus_has_at_least_15_kinds_of_bad_files():
    kinds = {check_file(BAD / name, **_options(opts)).problems[0].kind
             for name, opts, *_ in CORPUS if not opts.get("tokenizer")}  # fmt: skip
    assert len(kinds) >= 15, kinds
    assert len(CORPUS) >= 15


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    data_commands.register(app)
    return app


def test_cli_check_never_tracebacks_and_exit_code_follows_severity(tiny_model):
    runner, app = CliRunner(), _app()
    for name, options, severity, expected, _ in CORPUS:
        args = ["data", "check", str(BAD / name)]
        for src, dst in options.get("columns", {}).items():
            args += ["--column", f"{src}={dst}"]
        if "labels" in options:
            args += ["--labels", ",".join(options["labels"])]
        if "task" in options:
            args += ["--task", options["task"]]
        if options.get("tokenizer"):
            args += ["--model", str(tiny_model)]
        if "max_length" in options:
            args += ["--max-length", str(options["max_length"])]
        if "template" in options:
            args += ["--template", options["template"]]
        result = runner.invoke(app, args)
        assert result.exit_code == (2 if severity == "error" else 0), (name, result.output, result.exception)
        assert "Traceback" not in result.output
        assert f"{BAD / name}:{expected}" in result.output, (name, result.output)


def test_all_problems_of_one_file_reported_at_once(tmp_path):
    path = tmp_path / "many.jsonl"
    lines = [
        '{"question": "a", "answer": "b"}',
        '{"question": oops}',
        '["not", "an", "object"]',
        '{"question": ["x"], "answer": ""}',
        '{"instruction": "i", "output": "o"}',
        '{"question": "a", "answer": "b"}',
        "{}",
        '{"question": "c", "answer": "d"}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = check_file(path)
    got = {(p.line, p.kind) for p in report.problems}
    assert got == {(2, "invalid_json"), (3, "not_an_object"), (4, "wrong_type"), (4, "empty_field"),
                   (5, "mixed_shapes"), (6, "duplicate"), (7, "empty_row")}  # fmt: skip
    assert [p.line for p in report.problems] == sorted(p.line for p in report.problems)
    assert len(report.errors) == 5 and len(report.warnings) == 2
    assert any("skipped 1 empty rows" in n for n in report.notes)  # dropped on purpose, and said so


def test_json_format_for_machines(tmp_path):
    result = CliRunner().invoke(_app(), ["data", "check", str(BAD / "invalid_json.jsonl"), "--format", "json"])
    assert result.exit_code == 2
    data = json.loads(result.output)
    assert data["ok"] is False and data["errors"] == 1
    problem = data["problems"][0]
    assert problem["line"] == 3 and problem["kind"] == "invalid_json" and problem["severity"] == "error"
    assert problem["text"].startswith(f"{BAD / 'invalid_json.jsonl'}:3: invalid JSON")


def _config(tmp_path: Path, tiny_model: Path, **data) -> object:
    raw = {"name": "t", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model),
           "data": {"train": str(BAD / "leak_train.jsonl"), "max_length": 64, **data}}  # fmt: skip
    return config_from_dict(raw)


def test_leakage_between_given_train_and_test(tmp_path, tiny_model):
    cfg = _config(tmp_path, tiny_model, test=str(BAD / "leak_test.jsonl"), split={"validation": 0.0})
    report = check_config(cfg)
    leaks = [str(p) for p in report.problems if p.kind == "leakage"]
    assert leaks == [f"{BAD / 'leak_test.jsonl'}:2: test prompt also appears in the training data "
                     f"({BAD / 'leak_train.jsonl'}:2) (expected held-out rows whose prompt is not in the training data)"]
    assert report.ok and report.split_counts == {"train": 3, "validation": 0, "test": 2}


def test_config_check_with_tokenizer_counts_lengths(tmp_path, tiny_model, qa_file, tokenizer):
    cfg = _config(tmp_path, tiny_model, train=str(qa_file), max_length=20)
    report = check_config(cfg, tokenizer=tokenizer)
    s = report.lengths.summary()
    assert s["rows"] == 48 and s["over"] == len([p for p in report.problems if p.kind in ("too_long", "no_answer_left")])
    assert s["p95"] <= s["p99"] <= s["max"]
    assert any("longer than max_length 20" in n for n in report.notes)


def test_batched_lengths_match_the_trainers_encoding(qa_file, tokenizer):
    rows = [json.loads(line) for line in qa_file.read_text().splitlines()[:6]]
    examples = [to_example(r, "qa", file="f", line=i) for i, r in enumerate(rows, 1)]
    for template in (None, "Q: {question}\nA: {answer}"):
        fmt = PromptFormat.build(tokenizer, shape="qa", template=template)
        measured, failures = measure(examples, fmt, tokenizer, 16)
        assert not failures
        for ex, m in zip(examples, measured, strict=True):
            enc = fmt.encode(ex, tokenizer, 10**9)
            assert m.total == len(enc["input_ids"])
            assert m.trained == sum(label != -100 for label in enc["labels"])
            assert m.cut == max(0, m.total - 16)


def test_training_preflight_raises_all_errors_with_the_same_messages(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n{"question": "c"}\n{"question": 1, "answer": []}\n')
    cfg = _config(tmp_path, tiny_model, train=str(bad))
    report = check_for_training(cfg)
    assert [str(p) for p in report.errors] == [
        f"{bad}:2: answer: missing for shape qa; the row has keys 'question' (expected question/answer (fields question, answer))",
        f"{bad}:3: answer: is a list, not a string (expected a string)",
    ]
    with pytest.raises(DataErrors) as info:
        report.raise_for_errors()
    assert isinstance(info.value, TunelabError) and info.value.line == 2
    text = str(info.value)
    assert text.splitlines()[:2] == [str(p) for p in report.errors] and "2 errors in the data" in text


def test_preflight_is_fast_on_chatterbot(tmp_path, tiny_model):
    cfg = _config(tmp_path, tiny_model, train="builtin:chatterbot")
    started = time.perf_counter()
    report = check_for_training(cfg)
    elapsed = time.perf_counter() - started
    assert report.ok and report.sources[0].rows == 2144
    assert any("skipped 44 pairs" in n for n in report.notes)  # the built-in's own drops are reported
    assert elapsed < 3, elapsed  # ~0.1 s unloaded; generous for a shared CI machine


def test_classification_labels_unseen_in_training(tmp_path, tiny_model):
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text('{"text": "good", "label": "fresh"}\n{"text": "bad", "label": "rotten"}\n')
    test.write_text('{"text": "fine", "label": "fresh"}\n{"text": "odd", "label": "meh"}\n')
    report = check_file(train)
    assert report.ok and report.shape == "classification"
    doctor = Doctor(columns={}, shape="auto", task="classify", labels=None)
    doctor.check_sources({"train": str(train), "test": str(test)}, base_dir=None)
    assert [str(p) for p in doctor.report.errors] == [
        f"{test}:2: label: label 'meh' does not occur in the training data (expected one of fresh, rotten)"
    ]


def _same_splits(got, want) -> None:
    for name in ("train", "validation", "test"):
        assert getattr(got, name) == getattr(want, name), name  # the same Examples, in the same order
    assert (got.shape, got.source, got.notes) == (want.shape, want.source, want.notes)


@pytest.mark.parametrize(
    "data",
    [
        {"split": {"validation": 0.1, "test": 0.2, "seed": 7}},
        {"split": {"validation": 0.1, "test": 0.1, "seed": 3}, "limit": 20},
        {"train": str(BAD / "leak_train.jsonl"), "test": str(BAD / "leak_test.jsonl"), "split": {"validation": 0.3}},
        {"train": str(BAD / "duplicate_rows.jsonl"), "shape": "qa"},
        {"train": str(BAD / "empty_row.jsonl")},
    ],
    ids=["carved", "limit", "given-test", "explicit-shape", "empty-row"],
)
def test_training_preflight_hands_over_the_splits_training_would_load(tmp_path, tiny_model, qa_file, data):
    from tunelab.data.splits import splits_from_config

    cfg = _config(tmp_path, tiny_model, **{"train": str(qa_file), **data})
    report = check_for_training(cfg)
    assert report.ok
    _same_splits(report.splits, splits_from_config(cfg.data, cfg._source_dir))
    checked = check_config(cfg)  # the full check carves the same splits
    _same_splits(checked.splits, report.splits)
    assert checked.split_counts == {n: len(getattr(report.splits, n)) for n in ("train", "validation", "test")}


def test_preflight_splits_match_the_loader_on_chatterbot(tmp_path, tiny_model):
    pytest.importorskip("chatterbot_corpus")  # located without importing: find_spec is enough
    from tunelab.data.splits import splits_from_config

    cfg = _config(tmp_path, tiny_model, train="builtin:chatterbot", split={"validation": 0.05, "test": 0.05, "seed": 11})
    report = check_for_training(cfg)
    assert report.ok and len(report.splits.train) + len(report.splits.validation) + len(report.splits.test) == 2144
    _same_splits(report.splits, splits_from_config(cfg.data, cfg._source_dir))


def test_preflight_reads_each_source_once(tmp_path, tiny_model, qa_file, monkeypatch):
    from tunelab.data import splits

    calls = []
    real = splits.read_rows
    monkeypatch.setattr(splits, "read_rows", lambda path, **kw: calls.append(path) or real(path, **kw))
    cfg = _config(tmp_path, tiny_model, train=str(qa_file), test=str(BAD / "leak_test.jsonl"))
    report = check_for_training(cfg)
    assert report.ok and report.splits is not None
    assert calls == [str(qa_file), str(BAD / "leak_test.jsonl")]


def test_preflight_refuses_what_the_loader_refuses(tmp_path, tiny_model, qa_file):
    """Errors only carving finds, and rows the majority vote accepts but training's first-row rule does not."""
    with pytest.raises(TunelabError, match="data.split: validation 0.6 [+] test 0.5 holds out 110%"):
        _config(tmp_path, tiny_model, train=str(qa_file), split={"validation": 0.6, "test": 0.5})  # the config refuses it
    cfg = _config(tmp_path, tiny_model, train=str(qa_file))
    cfg.data.split.validation, cfg.data.split.test = 0.6, 0.5  # each in range: only carving sees the sum
    report = check_for_training(cfg)
    assert [(p.kind, p.message) for p in report.errors] == [
        ("config", "validation_fraction + test_fraction is 1.1, leaving nothing to train on")]  # fmt: skip
    assert report.splits is None
    from tunelab.data.splits import load_splits

    first = tmp_path / "first.jsonl"  # the first row is also question/answer; most rows are Alpaca only
    both = {"question": "q", "answer": "a", "instruction": "i", "output": "o"}
    first.write_text("\n".join(json.dumps(r) for r in [both, {"instruction": "j", "output": "p"},
                                                       {"instruction": "k", "output": "r"}]) + "\n")  # fmt: skip
    report = check_for_training(_config(tmp_path, tiny_model, train=str(first)))
    with pytest.raises(TunelabError) as info:
        load_splits(str(first))
    assert [str(p) for p in report.errors] == [str(info.value)] and report.errors[0].kind == "mixed_shapes"


def test_task_shapes_are_passed_in_not_looked_up(tmp_path, tiny_model):
    text = BAD / "text_for_sft.jsonl"
    assert check_file(text, task="sft").ok  # no table given: the task's shapes are not checked
    report = check_file(text, task="sft", task_shapes=("qa", "messages"))
    assert [str(p) for p in report.errors] == [
        f"{text}: data: task 'sft' cannot train on rows of shape 'text' (expected rows of shape qa, messages)"]  # fmt: skip
    cfg = _config(tmp_path, tiny_model, train=str(text))
    assert [p.kind for p in check_for_training(cfg, task_shapes=STAGES["sft"].shapes).errors] == ["task_shape"]


def test_the_doctor_does_not_import_the_stages():
    import subprocess
    import sys

    code = ("import sys, tunelab.data.doctor, tunelab.data.preview, tunelab.data.prepare; "
            "print(sorted(m for m in sys.modules if m.startswith('tunelab.stages')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
