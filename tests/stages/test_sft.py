"""End-to-end SFT on the tiny model: train → save → evaluate → report → reload."""

import json

import pytest
import torch

import tunelab
from tunelab.errors import TunelabError
from tunelab.runs import RunDir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model):
    from conftest import qa_rows

    d = tmp_path_factory.mktemp("sft")
    data = d / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n")
    cfg = {
        "name": "lora",
        "output_dir": str(d / "runs"),
        "model": str(tiny_model),
        "data": {"train": str(data), "max_length": 64, "split": {"validation": 0.1, "test": 0.1, "seed": 1}},
        "training": {"max_steps": 40, "batch_size": 4, "lr": 1e-2, "logging_steps": 5, "eval_steps": 20,
                     "save_steps": 20, "precision": "fp32", "warmup_ratio": 0.0},
        "evaluation": {"max_new_tokens": 10, "batch_size": 8},
    }
    return tunelab.train(cfg), cfg


def test_run_directory_is_complete(lora_run):
    result, _ = lora_run
    run = RunDir(result.run_dir)
    assert run.is_complete
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "lr.png", "eval.json", "predictions.jsonl",
                 "report.html", "template.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (run.path / name).is_file(), name
    # weights are safetensors only: nothing pickled in what the run delivers, and in each checkpoint
    # the weights are safetensors too; the only pickles are transformers Trainer's own resume state
    pickled = {p for p in run.path.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")}
    assert not {p for p in pickled if run.checkpoints not in p.parents}, pickled
    assert {p.name for p in pickled} <= {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
    checkpoints = sorted(run.checkpoints.glob("checkpoint-*"))
    assert checkpoints and all((c / "adapter_model.safetensors").is_file() for c in checkpoints)


def test_loss_goes_down_and_metrics_logged(lora_run):
    result, _ = lora_run
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    # the curve starts where training did: the untrained model's validation loss at step 0
    assert [s for s, _ in evals] == [0, 20, 40]
    assert evals[-1][1] < evals[0][1] * 0.9  # a random 2-layer model learns slowly through rank-8 adapters
    assert any("learning_rate" in r for r in rows)
    ev = json.loads((result.run_dir / "eval.json").read_text())
    assert set(ev["metrics"]["base"]) >= {"rougeL", "bleu", "exact_match", "token_f1"}
    assert ev["training"]["train_tokens_per_second"] > 0
    assert ev["trainable"].startswith("trainable params: ")


def test_trainable_report_matches_peft(lora_run, tiny_model):
    from peft import get_peft_model

    from tunelab.config import config_from_dict
    from tunelab.methods.lora import peft_lora_config
    from tunelab.models.kinds import MODEL_KINDS
    from tunelab.models.loading import load_model
    from tunelab.stages.common import trainable_report

    result, cfg = lora_run
    lora = peft_lora_config(config_from_dict(cfg).lora, MODEL_KINDS["causal_lm"])
    model = get_peft_model(load_model(tiny_model, "causal_lm"), lora)
    trainable, total = model.get_nb_trainable_parameters()
    expected = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    assert trainable_report(model) == expected == result.results["trainable"]


def test_plain_peft_reload_gives_same_greedy_output(lora_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _ = lora_run
    prompt = "What colour is the sky number 3?"
    ours = tunelab.generate(result.run_dir, prompt, max_new_tokens=12)
    tok = AutoTokenizer.from_pretrained(result.run_dir / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, result.run_dir / "adapter").eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    plain = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert ours == plain


def test_existing_run_dir_is_refused(lora_run):
    _, cfg = lora_run
    with pytest.raises(TunelabError, match="run directory already exists"):
        tunelab.train(cfg)


def test_full_finetune_saves_model_and_reloads(tiny_config):
    result = tunelab.train(tiny_config(name="full", method="full", training={"max_steps": 8, "eval_steps": 4,
                                                                               "save_steps": 4}))
    assert (result.run_dir / "model" / "model.safetensors").is_file()
    assert isinstance(tunelab.generate(result.run_dir, "What colour is the sun number 1?", max_new_tokens=4), str)


def test_custom_template_run(tiny_config):
    result = tunelab.train(tiny_config(name="custom", data={"template": "Q: {question}\nA: {answer}"},
                                       training={"max_steps": 4, "eval_steps": None, "save_steps": None}))
    fmt = json.loads((result.run_dir / "template.json").read_text())
    assert fmt["kind"] == "custom" and fmt["template"] == "Q: {question}\nA: {answer}"


def test_failed_run_is_marked_failed(tiny_config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n')
    with pytest.raises(TunelabError, match=r"bad.jsonl:2:"):
        tunelab.train(tiny_config(name="bad", data={"train": str(bad)}))
    run = RunDir(tmp_path / "runs" / "bad")
    assert run.read_status()["status"] == "failed" and not run.is_complete
    with pytest.raises(TunelabError, match="run is not complete"):
        tunelab.generate(run.path, "hi")


def test_resume_continues_from_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config(name="resume", training={"max_steps": 12, "eval_steps": 6, "save_steps": 6})
    first = tunelab.train(cfg)
    run = RunDir(first.run_dir)
    # simulate an interrupted run: drop the final artefacts and the completion mark, keep checkpoint-6
    import shutil

    shutil.rmtree(run.checkpoints / "checkpoint-12", ignore_errors=True)
    run.write_status(status="running")
    result = tunelab.resume(run.path)
    assert RunDir(result.run_dir).is_complete
    assert result.results["training"]["global_step"] == 12
    # the totals cover the whole run (steps 1-6 from the checkpoint, 7-12 trained again)
    for key in ("train_tokens", "train_loss"):
        assert result.results["training"][key] == first.results["training"][key]
    # steps 7-12 were logged by the first run and again by the resumed one: they appear once
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    logged = [(r["step"], key) for r in rows for key in ("loss", "eval_loss") if key in r]
    assert len(logged) == len(set(logged)) and [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert {(0, "eval_loss"), (10, "loss"), (12, "eval_loss")} <= set(logged)


@pytest.mark.parametrize("damage", ["no trainer state", "truncated weights"])
def test_resume_skips_a_checkpoint_cut_short(tiny_config, damage):
    """A kill or a full disk during a save leaves the newest checkpoint incomplete: resume falls back
    to the previous complete one, says so, and ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    cfg = tiny_config(name="cut", training={"max_steps": 12, "eval_steps": 6, "save_steps": 6, "save_total_limit": 3})
    first = tunelab.train(cfg)
    expected = load_file(first.run_dir / "adapter" / "adapter_model.safetensors")
    run = RunDir(first.run_dir)
    newest = run.checkpoints / "checkpoint-12"
    if damage == "no trainer state":
        (newest / "trainer_state.json").unlink()
    else:
        weights = newest / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    run.write_status(status="running")
    result = tunelab.resume(run.path)
    assert result.results["training"]["global_step"] == 12
    assert "checkpoint-12 was incomplete" in (result.run_dir / "report.html").read_text()
    got = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-7)
