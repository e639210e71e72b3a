"""`tunelab plan CONFIG`: a table, JSON that parses, one error line with exit 2 for a bad config, a
hub id planned from its cached config.json, and `--measure` beside the estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli


def write_config(tmp_path: Path, model: Path | str, method: str = "lora", extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\nmodel: {model}\nmethod: {method}\n"
                    f"data:\n  train: {tmp_path / 'qa.jsonl'}\n  max_length: 64\n"
                    f"training:\n  batch_size: 4\n  precision: fp32\n{extra}", encoding="utf-8")  # fmt: skip
    return path


def test_plan_prints_a_table_and_json(tmp_path, tiny_model, capsys):
    cfg = write_config(tmp_path, tiny_model)
    code, out, err = run_cli(["plan", str(cfg), "--device", "cpu", "--rows", "100"], capsys)
    assert code == 0, err
    for text in ("peak", "activations", "FLOPs per step", "what fits where", "H100 80 GB", "QLoRA"):
        assert text in out
    code, out, err = run_cli(["plan", str(cfg), "--json", "--device", "cpu", "--set", "training.batch_size=2"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["workload"]["batch_size"] == 2 and data["memory"]["peak_bytes"] > data["memory"]["peak_allocated_bytes"]
    assert data["trainable"]["trainable"] > 0 and len(data["fits"]) == 11 and data["flops"]["per_step"] > 0


def test_bad_config_is_one_error_line_and_exit_2(tmp_path, tiny_model, capsys):
    cfg = write_config(tmp_path, tiny_model, extra="  batch_sise: 4\n")
    code, out, err = run_cli(["plan", str(cfg)], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "training.batch_sise: unknown key" in err and "Traceback" not in err
    code, _, err = run_cli(["plan", str(write_config(tmp_path, tiny_model)), "--strategy", "zero9"], capsys)
    assert code == 2 and "--strategy" in err
    code, _, err = run_cli(["plan", str(write_config(tmp_path, tmp_path / "no-such-model"))], capsys)
    assert code == 2 and "unknown model" in err


def test_a_hub_id_is_planned_from_its_cached_config(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hub
    from transformers import LlamaConfig

    snapshot = tmp_path / "hub" / "models--someone--tiny-llama" / "snapshots" / "abc123"
    LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256).save_pretrained(snapshot)  # fmt: skip
    (tmp_path / "hub" / "models--someone--tiny-llama" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-llama" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, err = run_cli(["plan", str(write_config(tmp_path, "someone/tiny-llama")), "--json", "--device", "cpu"],
                             capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["architecture"]["parameters"] > 0
    code, _, err = run_cli(["plan", str(write_config(tmp_path, "someone/not-cached"))], capsys)
    assert code == 2 and "not in the Hugging Face cache" in err


def test_measure_trains_a_few_steps_beside_the_estimate(tmp_path, tiny_model, capsys, one_thread):
    cfg = write_config(tmp_path, tiny_model)
    code, out, err = run_cli(["plan", str(cfg), "--measure", "--steps", "2", "--json"], capsys)
    assert code == 0, err
    measured = json.loads(out)["measured"]
    assert measured["steps"] == 2 and measured["peak_bytes"] > 0 and measured["tokens"] == 2 * 4 * 64
    assert not (tmp_path / "runs").exists()  # nothing is written for a measurement


def test_a_4bit_load_on_cpu_counts_the_checkpoint_pages_left_mapped(tmp_path, tiny_model, capsys):
    """QLoRA on CPU quantizes from the memory-mapped checkpoint, whose pages stay in the RSS: a term sized
    from the safetensors files on disk (quantized parameters × bytes per parameter), absent for LoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.planning import plan

    size = sum(f.stat().st_size for f in Path(tiny_model).glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    params = sum(p.numel() for p in model.parameters())
    # what bitsandbytes quantizes: the blocks' linear layers (the head stays in float)
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    got = {}
    for method in ("qlora", "lora"):
        result = plan(write_config(tmp_path, tiny_model, method), device="cpu").to_dict()
        got[method] = {t["label"]: t["bytes"] for t in result["memory"]["terms"]}
    assert got["qlora"]["checkpoint pages still mapped (CPU, 4-bit load)"] == pytest.approx(linear * size / params)
    assert not any("mapped" in k for k in got["lora"])
