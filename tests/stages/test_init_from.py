"""Chaining runs (`model.init_from`), as in the InstructGPT recipe: SFT → reward model → RL, and SFT →
DPO with the SFT model as the reference. The chained run starts from the earlier run's trained weights
(checked against plain peft), keeps them in its own folder, and pairings that cannot work are refused
before any model loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import tunelab
from tunelab.runs import RunDir

PAIRS = "builtin:arithmetic-preference"


def base_config(tmp_path, tiny_model, name: str, task: str, method: str = "lora") -> dict:
    return {
        "name": name, "output_dir": str(tmp_path / "runs"), "model": str(tiny_model), "task": task, "method": method,
        "data": {"train": PAIRS, "max_length": 48, "split": {"validation": 0.0, "test": 0.03, "seed": 1}},
        "training": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "logging_steps": 1, "eval_steps": None,
                     "save_steps": None, "precision": "fp32", "warmup_ratio": 0.0},
        "evaluation": {"max_new_tokens": 4, "batch_size": 8},
    }  # fmt: skip


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("chain")
    cfg = base_config(tmp, tiny_model, "sft", "sft")
    cfg["data"]["columns"] = {"prompt": "question"}  # question + the sum (answer): Q/A rows
    return tunelab.train(cfg)


def chained(sft_run, tiny_model, name: str, task: str, method: str = "lora", **extra) -> dict:
    cfg = base_config(sft_run.run_dir.parent.parent, tiny_model, name, task, method)
    del cfg["model"]
    cfg["model"] = {"init_from": str(sft_run.run_dir)}
    return cfg | extra


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_a_dpo_run_starts_from_the_sft_model_and_keeps_it_as_reference(sft_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = tunelab.train(chained(sft_run, tiny_model, "dpo-from-sft", "dpo", dpo={"gold": "exact-answer"}))
    run = RunDir(result.run_dir)
    assert run.init_model_ready and result.config.model.name == str(tiny_model)  # the SFT run's own base
    # the chained run's base is the SFT model: plain peft, SFT adapter on the tiny model, gives its logits
    plain_sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                          sft_run.run_dir / "adapter").eval()  # fmt: skip
    base = tunelab.load_run(result.run_dir, base=True)
    ids = base.tokenizer("What is 2 plus 3?")["input_ids"]
    assert torch.allclose(logits(base.model, ids), logits(plain_sft, ids), atol=1e-4)
    # the reference is the SFT model too: its own implicit rewards tie, and its answers are the SFT run's
    ev = result.results
    assert ev["metrics"]["base"]["preference_accuracy"] == 50.0
    preds = [json.loads(line) for line in run.predictions.read_text().splitlines()]
    assert [p["outputs"]["base"] for p in preds[:4]] == [
        a.strip() for a in tunelab.generate(sft_run.run_dir, [p["input"] for p in preds[:4]], max_new_tokens=4)
    ]
    assert "started from run" in run.report.read_text()
    # self-contained: the SFT run can go, this one still loads and answers as trained
    moved = sft_run.run_dir.with_name("sft-moved")
    shutil.move(sft_run.run_dir, moved)
    try:
        assert tunelab.generate(result.run_dir, preds[0]["input"], max_new_tokens=4) == preds[0]["outputs"]["tuned"]
    finally:
        shutil.move(moved, sft_run.run_dir)


def test_the_instructgpt_chain_sft_reward_grpo(sft_run, tiny_model):
    rm = tunelab.train(chained(sft_run, tiny_model, "rm-from-sft", "reward"))
    assert RunDir(rm.run_dir).init_model_ready and rm.results["metrics"]["tuned"]["n"] > 0
    cfg = chained(sft_run, tiny_model, "grpo-from-sft", "grpo", method="qlora")
    cfg["data"] = {"train": "builtin:arithmetic-prompts", "max_length": 48, "split": {"validation": 0.0, "test": 0.03}}
    cfg["grpo"] = {"reward": str(rm.run_dir), "gold": "exact-answer", "num_generations": 2, "max_completion_length": 4}
    result = tunelab.train(cfg)
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert tunelab.generate(result.run_dir, preds[0]["input"], max_new_tokens=4) == preds[0]["outputs"]["tuned"]


REFUSED = {
    "classifier into dpo": ("rm", "dpo", "score head"),
    "prompt tuning": ("prompt", "dpo", "virtual tokens"),
    "unfinished run": ("unfinished", "dpo", "not complete"),
    "another base": ("sft", "dpo", "was trained from"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_pairings_that_cannot_work_are_refused_before_loading(sft_run, tiny_model, case, train_refused):
    source, task, message = REFUSED[case]
    runs = sft_run.run_dir.parent
    init = runs / source
    if source == "rm" and not (runs / "rm").is_dir():
        tunelab.train(base_config(runs.parent, tiny_model, "rm", "reward"))
    if source == "prompt" and not init.is_dir():
        cfg = base_config(runs.parent, tiny_model, "prompt", "sft", "prompt")
        cfg["data"]["columns"] = {"prompt": "question"}
        tunelab.train(cfg | {"prompt": {"num_virtual_tokens": 2}})
    if source == "unfinished":
        init.mkdir(exist_ok=True)
        shutil.copy(sft_run.run_dir / "config.yaml", init / "config.yaml")
    cfg = chained(sft_run, tiny_model, f"refused-{task}", task)
    cfg["model"]["init_from"] = str(init)
    if case == "another base":
        cfg["model"]["name"] = "smollm2-135m-instruct"
    code, err = train_refused(cfg, "chain.json")
    assert code == 2 and "Traceback" not in err
    assert message in err and ("model.init_from" in err or "model.name" in err), err
    assert not (runs / f"refused-{task}").exists()
