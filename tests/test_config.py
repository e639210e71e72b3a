from pathlib import Path

import pytest
import yaml

from tunelab.config import RunConfig, config_from_dict, dump_config, load_config
from tunelab.errors import TunelabError
from tunelab.yaml_files import parse_overrides


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_shorthand():
    cfg = config_from_dict({"model": "smollm2-135m-instruct", "data": {"train": "builtin:chatterbot"}})
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.method == "lora" and cfg.lora.r == 8 and cfg.training.precision == "auto"
    assert isinstance(cfg, RunConfig)


def test_unknown_key_did_you_mean_with_line(tmp_path):
    path = write(tmp_path, "data:\n  train: x.jsonl\ntraining:\n  epochs: 1\n  lrr: 0.1\n")
    with pytest.raises(TunelabError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:5: training.lrr: unknown key")
    assert "did you mean 'lr'" in msg


def test_wrong_type_names_key_and_expected(tmp_path):
    path = write(tmp_path, "data:\n  train: x.jsonl\ntraining:\n  batch_size: lots\n")
    with pytest.raises(TunelabError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:4: training.batch_size: got 'lots' (expected an integer)"


def test_missing_required_and_unknown_method(tmp_path):
    with pytest.raises(TunelabError, match="data: required key is missing"):
        config_from_dict({"name": "x"})
    with pytest.raises(TunelabError, match="unknown method 'lorra' \\(did you mean 'lora'\\?\\)"):
        config_from_dict({"method": "lorra", "data": {"train": "a.jsonl"}})


def test_options_for_another_method_refused():
    with pytest.raises(TunelabError, match="options section 'lora:' given but method is 'full'"):
        config_from_dict({"method": "full", "lora": {"r": 4}, "data": {"train": "a.jsonl"}})


def test_overrides_are_typed_and_nested(tmp_path):
    assert parse_overrides(["training.lr=1e-4", "data.limit=10", "name=x"]) == {
        "training": {"lr": 1e-4},
        "data": {"limit": 10},
        "name": "x",
    }
    path = write(tmp_path, "data:\n  train: x.jsonl\n")
    cfg = load_config(path, ["training.lr=1e-4", "lora.r=4"])
    assert cfg.training.lr == pytest.approx(1e-4) and cfg.lora.r == 4
    with pytest.raises(TunelabError, match="KEY.SUB=VALUE"):
        parse_overrides(["training.lr"])


def test_scientific_notation_in_yaml(tmp_path):
    path = write(tmp_path, "data:\n  train: x.jsonl\ntraining:\n  lr: 2e-4\n")
    assert load_config(path).training.lr == pytest.approx(2e-4)


def test_dump_round_trips(tmp_path):
    cfg = config_from_dict({"data": {"train": "a.jsonl"}, "training": {"max_steps": 3}})
    path = write(tmp_path, dump_config(cfg))
    assert load_config(path).model_dump() == cfg.model_dump()


def test_invalid_yaml_has_line(tmp_path):
    path = write(tmp_path, "data:\n  train: [unclosed\n")
    with pytest.raises(TunelabError, match=r"run.yaml:\d+: invalid YAML"):
        load_config(path)


def test_data_shape_is_checked_against_the_shape_table_with_line(tmp_path):
    from tunelab.data.shapes import ROW_SHAPES

    path = write(tmp_path, "data:\n  train: x.jsonl\n  shape: alpacca\n")
    with pytest.raises(TunelabError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}:3: data.shape: unknown shape 'alpacca' (did you mean 'alpaca'?); "
        f"expected auto or one of {', '.join(ROW_SHAPES)}"
    )
    for shape in ("auto", *ROW_SHAPES):  # every shape of the table, classification included
        assert config_from_dict({"data": {"train": "x.jsonl", "shape": shape}}).data.shape == shape


def test_merge_dicts_and_key_lines_are_public():
    from tunelab.yaml_files import key_lines, merge_dicts

    base = {"data": {"train": "a", "split": {"seed": 1}}, "name": "x"}
    assert merge_dicts(base, {"data": {"split": {"seed": 2}}}) == {"data": {"train": "a", "split": {"seed": 2}},
                                                                  "name": "x"}  # fmt: skip
    assert base["data"]["split"]["seed"] == 1
    assert key_lines("data:\n  train: a\n  split:\n    seed: 1\n") == {
        ("data",): 1, ("data", "train"): 2, ("data", "split"): 3, ("data", "split", "seed"): 4}  # fmt: skip


def test_each_method_brings_its_learning_rate_unless_the_config_sets_one(tmp_path):
    from tunelab.methods.registry import METHODS

    for name, method in METHODS.items():
        cfg = config_from_dict({"data": {"train": "x.jsonl"}, "method": name})
        assert cfg.training.lr == method.training_defaults["lr"] > 0
        assert cfg.method_defaults_note().startswith(f"training.lr = {cfg.training.lr:g}: method {name}'s default")
        assert yaml.safe_load(dump_config(cfg))["training"]["lr"] == cfg.training.lr  # the resolved config shows it
    ia3 = config_from_dict({"data": {"train": "x.jsonl"}, "method": "ia3"}).training.lr
    assert ia3 != config_from_dict({"data": {"train": "x.jsonl"}, "method": "lora"}).training.lr
    own = config_from_dict({"data": {"train": "x.jsonl"}, "method": "ia3", "training": {"lr": 1e-4}})
    assert own.training.lr == 1e-4 and own.method_defaults_note() is None
    # a method switched by --set gets the new method's default, not the old one's
    path = write(tmp_path, "method: lora\ndata:\n  train: x.jsonl\n")
    assert load_config(path, ["method=ia3"]).training.lr == ia3
    # a saved run config pins the value it trained with
    assert load_config(write(tmp_path, dump_config(load_config(path)))).method_defaults_note() is None


def test_learning_rate_zero_is_allowed_but_not_negative():
    assert config_from_dict({"data": {"train": "x.jsonl"}, "training": {"lr": 0}}).training.lr == 0
    with pytest.raises(TunelabError, match="training.lr"):
        config_from_dict({"data": {"train": "x.jsonl"}, "training": {"lr": -1e-4}})


def test_key_lines_give_list_items_their_own_lines():
    from tunelab.yaml_files import key_lines

    lines = key_lines("lora:\n  target_modules:\n    - q_proj\n    - v_proj\n  modules_to_save: [a, b]\n")
    assert lines[("lora", "target_modules", "1")] == 4 and lines[("lora", "modules_to_save", "1")] == 5


def test_non_finite_numbers_and_nul_strings_are_refused_anywhere_with_their_line(tmp_path):
    path = write(tmp_path, "data:\n  train: x.jsonl\ntraining:\n  lr: .inf\n")
    with pytest.raises(TunelabError, match=r"run.yaml:4: training.lr: got inf \(expected a finite number\)"):
        load_config(path)
    with pytest.raises(TunelabError, match="given by --set"):
        load_config(write(tmp_path, "data:\n  train: x.jsonl\n"), ["training.epochs=nan"])
    with pytest.raises(TunelabError, match="data.train: the value contains a NUL character"):
        config_from_dict({"data": {"train": "a\0b.jsonl"}})
