"""The CLI: one clear message and exit code 2 for bad input, no traceback unless --debug."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TUNELAB = [sys.executable, "-m", "tunelab.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1"}
    return subprocess.run([*TUNELAB, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def write_config(tmp_path: Path, data: str, extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\ndata:\n  train: {data}\n{extra}", encoding="utf-8")
    return path


def test_unknown_config_key_exit_2_with_did_you_mean(tmp_path):
    cfg = write_config(tmp_path, "x.jsonl", "training:\n  epoch: 2\n")
    res = run("validate", str(cfg))
    assert res.returncode == 2
    assert f"{cfg}:6: training.epoch: unknown key (did you mean 'epochs'?)" in res.stderr
    assert "Traceback" not in res.stderr


def test_malformed_jsonl_names_file_and_line(tmp_path, tiny_model):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n{"question": oops}\n')
    cfg = write_config(tmp_path, str(data), f"model: {tiny_model}\n")
    res = run("train", str(cfg))
    assert res.returncode == 2, res.stderr
    assert f"{data}:3:" in res.stderr and "Traceback" not in res.stderr


def test_debug_shows_traceback(tmp_path):
    cfg = write_config(tmp_path, "missing.jsonl")
    res = run("--debug", "validate", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "Traceback" in res.stderr
    assert "nope.yaml: config file not found" in res.stderr
    del cfg


def test_missing_data_file_and_unknown_model(tmp_path, qa_file):
    missing = tmp_path / "missing.jsonl"
    res = run("train", str(write_config(tmp_path, str(missing))))
    assert res.returncode == 2 and f"{missing}: file not found" in res.stderr and "Traceback" not in res.stderr
    res = run("train", str(write_config(tmp_path, str(qa_file), "model: not-a-model\n")))
    assert res.returncode == 2
    assert "unknown model 'not-a-model'" in res.stderr and "Traceback" not in res.stderr
    cfg = write_config(tmp_path, str(qa_file), "model: smollm2-135m-instuct\n")
    assert "did you mean 'smollm2-135m-instruct'" in run("train", str(cfg)).stderr


def test_hub_id_offline_fails_fast(tmp_path, qa_file):
    cfg = write_config(tmp_path, str(qa_file), "model: HuggingFaceTB/SmolLM2-135M\n")
    res = run("train", str(cfg))
    assert res.returncode == 2 and "hub is not reachable" in res.stderr


def test_unknown_option_is_usage_error():
    res = run("train", "--no-such-flag")
    assert res.returncode == 2 and "No such option" in res.stderr


def test_models_lists_builtins():
    res = run("models")
    assert res.returncode == 0
    assert "smollm2-135m-instruct" in res.stdout and "minilm-l6" in res.stdout


def test_train_and_generate_end_to_end(tmp_path, tiny_model, qa_file):
    cfg = write_config(
        tmp_path,
        str(qa_file),
        f"model: {tiny_model}\ntraining:\n  max_steps: 6\n  batch_size: 4\n  eval_steps: 3\n  save_steps: 3\n"
        "evaluation:\n  max_new_tokens: 6\n",
    )
    res = run("train", str(cfg), "--set", "training.lr=5e-3")
    assert res.returncode == 0, res.stderr
    assert "ROUGE-L" in res.stdout and "report:" in res.stdout
    run_dir = tmp_path / "runs" / "t"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    res = run("generate", str(run_dir), "--prompt", "What colour is the sky number 1?", "--max-new-tokens", "5")
    assert res.returncode == 0, res.stderr
    res = run("train", str(cfg))
    assert res.returncode == 2 and "already exists" in res.stderr


def test_train_from_set_options_alone(tmp_path, tiny_model, qa_file):
    """No CONFIG: every key but data.train has a default, so --set options are a whole config."""
    sets = [f"data.train={qa_file}", f"model={tiny_model}", f"output_dir={tmp_path / 'runs'}", "training.max_steps=2",
            "training.batch_size=4", "evaluation.max_new_tokens=4", "evaluation.compare_base=false"]  # fmt: skip
    res = run("train", *[a for s in sets for a in ("--set", s)])
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "runs" / "run"  # the default name
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    import yaml

    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["train"] == str(qa_file)


@pytest.mark.parametrize("args", [["generate", "/nonexistent/run", "--prompt", "x"], ["train"]])
def test_bad_run_dir_or_missing_args(args):
    res = run(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_validate_shows_the_method_default_learning_rate(tmp_path):
    cfg = write_config(tmp_path, "x.jsonl", "method: prompt\n")
    res = run("validate", str(cfg))
    assert res.returncode == 0, res.stderr
    from tunelab.methods.registry import METHODS

    lr = METHODS["prompt"].training_defaults["lr"]
    import yaml

    assert yaml.safe_load(res.stdout)["training"]["lr"] == lr
    assert f"training.lr = {lr:g}: method prompt's default" in res.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_library_notices_only_with_debug(debug):
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward …" while it is imported, before any command
    has run: the CLI silences library loggers first, and --debug lets them through."""
    code = (f"from tunelab.cli import _quiet_libraries; _quiet_libraries({debug}); import logging; "
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('Failed to load CPU gemm_4bit_forward')")
    env = {k: v for k, v in os.environ.items() if k != "TUNELAB_DEBUG"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ("gemm_4bit_forward" in res.stderr) == debug


def test_help_shows_flags_without_a_type():
    res = run("train", "--help")
    assert res.returncode == 0
    assert "<bool>" not in res.stdout and "--overwrite" in res.stdout and "KEY=VALUE" in res.stdout
