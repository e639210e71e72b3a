"""Property-based fuzzing of every reader of user input: whatever text, bytes or structure it is given,
the only exception it may raise is `TunelabError` (a one-line message for the CLI), and the data doctor's
collecting mode raises nothing at all. Bounded: 200 examples each (TUNELAB_FUZZ_EXAMPLES to change it), the whole file well under 30 s."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config import config_from_dict, load_config
from tunelab.data.doctor import check_file
from tunelab.data.shapes import Example
from tunelab.data.sources import parse_json, read_rows
from tunelab.data.templates import PromptFormat, parse_template
from tunelab.errors import TunelabError
from tunelab.yaml_files import load_yaml, parse_overrides

# TUNELAB_FUZZ_EXAMPLES=5000 for a longer hunt
FUZZ = settings(max_examples=int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FOLDER = Path(tempfile.mkdtemp(prefix="tunelab-fuzz-"))

# scalars as YAML/JSON give them, with what breaks naive readers mixed in
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", "\0", "\ud800", "{", "}", "{question}", "all-linear", "1e999", "inf", ".nan", "-1", "--1"]),
)  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=12)
KEYS = [("name",), ("output_dir",), ("model",), ("task",), ("method",), ("data", "train"), ("data", "shape"),
        ("data", "template"), ("data", "columns"), ("data", "max_length"), ("data", "limit"), ("data", "split"),
        ("data", "split", "validation"), ("training", "lr"), ("training", "epochs"), ("training", "batch_size"),
        ("training", "optimizer"), ("training", "seed"), ("lora", "target_modules"), ("lora", "alpha"),
        ("classify", "labels"), ("evaluation", "max_new_tokens"), ("training",), ("data",), ("freeze", "modules")]  # fmt: skip
SHAPED_ROWS = st.fixed_dictionaries({}, optional={
    k: VALUES for k in ("question", "answer", "instruction", "input", "output", "prompt", "completion", "chosen",
                        "rejected", "text", "label", "messages", "conversations", "topic")})  # fmt: skip
TURNS = st.lists(st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system", "bot"]) | SCALARS,
                                                     "content": SCALARS, "from": SCALARS, "value": SCALARS}), max_size=4)  # fmt: skip


def _only_tunelab_errors(fn, *args, **kwargs):  # noqa: ANN001, ANN202
    try:
        return fn(*args, **kwargs)
    except TunelabError as err:
        assert str(err), "an empty message"
        return None


def _file(name: str, content: bytes) -> Path:
    path = FOLDER / name
    path.write_bytes(content)
    return path


def _config_with(raw_value: object, key: tuple[str, ...]) -> dict:
    cfg: dict = {"name": "fuzz", "output_dir": str(FOLDER / "runs"), "data": {"train": "x.jsonl"}}
    node = cfg
    for part in key[:-1]:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else node
    node[key[-1]] = raw_value
    return cfg


# -- configs ---------------------------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=300))
def test_yaml_text_as_a_config(text: str) -> None:
    path = _file("run.yaml", text.encode("utf-8", "surrogatepass"))
    _only_tunelab_errors(load_config, path)


@FUZZ
@given(st.binary(max_size=300))
def test_bytes_as_a_config(raw: bytes) -> None:
    _only_tunelab_errors(load_config, _file("run.yaml", raw))


@FUZZ
@given(st.sampled_from(KEYS), VALUES)
def test_any_value_at_any_config_key(key: tuple[str, ...], value: object) -> None:
    raw = _config_with(value, key)
    _only_tunelab_errors(config_from_dict, raw)
    try:  # the same through a YAML file, where it can be written
        text = yaml.safe_dump(raw, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    _only_tunelab_errors(load_config, _file("run.yaml", text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=4))
def test_set_overrides(items: list[str]) -> None:
    def resolve() -> None:
        parse_overrides(items)
        load_config(_file("run.yaml", b"data:\n  train: x.jsonl\n"), items)

    _only_tunelab_errors(resolve)


@FUZZ
@given(st.text(alphabet="[]{}&*ab:, -\n!", max_size=200))
def test_yaml_structure_characters(text: str) -> None:
    """Anchors, aliases, flow and block collections in any arrangement (bombs and cycles included)."""
    _only_tunelab_errors(load_yaml, text, "run.yaml")


# -- data files ------------------------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(["d.jsonl", "d.json", "d.csv", "d.tsv", "d.txt"]), st.binary(max_size=400))
def test_bytes_as_a_data_file(name: str, raw: bytes) -> None:
    path = _file(name, raw)
    _only_tunelab_errors(read_rows, path)
    problems: list[TunelabError] = []
    read_rows(path, problems=problems)  # collecting mode: never raises
    assert all(isinstance(p, TunelabError) for p in problems)


@FUZZ
@given(st.sampled_from(["d.jsonl", "d.json", "d.csv", "d.tsv"]), st.text(alphabet='{}[]",:0123456789eE.-+ \\nu\ntrufalsNI', max_size=300))
def test_json_and_csv_syntax_characters(name: str, text: str) -> None:
    path = _file(name, text.encode())
    _only_tunelab_errors(read_rows, path)
    read_rows(path, problems=[])


@FUZZ
@given(st.lists(SHAPED_ROWS | st.fixed_dictionaries({"messages": TURNS}) | VALUES, min_size=1, max_size=5),
       st.sampled_from(["jsonl", "json", "csv"]))  # fmt: skip
def test_any_rows_through_the_data_doctor(rows: list, fmt: str) -> None:
    """Structures of any shape, through reading, shape detection and row checks."""
    if fmt == "jsonl":
        text = "\n".join(json.dumps(r) for r in rows)
    elif fmt == "json":
        text = json.dumps(rows)
    else:
        dicts = [r for r in rows if isinstance(r, dict)]
        columns = sorted({str(k) for r in dicts for k in r})
        text = "\n".join([",".join(json.dumps(c) for c in columns)]
                         + [",".join(json.dumps(str(r.get(c, ""))) for c in columns) for r in dicts])  # fmt: skip
    path = _file(f"rows.{fmt}", text.encode("utf-8", "surrogatepass"))
    report = check_file(path, task="sft", task_shapes=("qa", "alpaca", "messages", "conversations"))
    assert all(str(p) for p in report.problems)
    _only_tunelab_errors(read_rows, path)


@FUZZ
@given(VALUES)
def test_parse_json_of_any_json_text(value: object) -> None:
    from tunelab.data.sources import JsonProblem

    try:
        text = json.dumps(value)
    except (ValueError, UnicodeEncodeError):
        return
    try:
        parse_json(text)
    except JsonProblem:
        pass


# -- templates ------------------------------------------------------------------------------------------


class _Tokenizer:
    eos_token = "</s>"


@FUZZ
@given(st.text(max_size=80), st.dictionaries(st.sampled_from(["question", "answer", "topic", "context"]), SCALARS,
                                             max_size=4))  # fmt: skip
def test_any_template_parses_and_renders_or_refuses(template: str, fields: dict) -> None:
    _only_tunelab_errors(parse_template, template)

    def render() -> None:
        fmt = PromptFormat.build(_Tokenizer(), shape="qa", template=template)
        example = Example(shape="qa", fields=fields, messages=None, text=None, source="d.jsonl:1", meta={})
        fmt.segments(example, _Tokenizer())
        fmt.prompt_text(example, _Tokenizer())

    _only_tunelab_errors(render)


@FUZZ
@given(st.text(alphabet="{}!:.[]0aq ", max_size=40))
def test_template_brace_syntax(template: str) -> None:
    template = template + "{answer}"

    def render() -> None:
        fmt = PromptFormat.build(_Tokenizer(), shape="qa", template=template)
        example = Example(shape="qa", fields={"question": "q", "answer": "a"}, messages=None, text=None,
                          source="d.jsonl:1", meta={})  # fmt: skip
        fmt.segments(example, _Tokenizer())

    _only_tunelab_errors(render)


@pytest.fixture(scope="module", autouse=True)
def _clean_up() -> object:
    yield
    import shutil

    shutil.rmtree(FOLDER, ignore_errors=True)
