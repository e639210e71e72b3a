"""DPO and KTO end to end on the tiny model: pairs → TRL's trainer → held-out preference metrics that
plain transformers + peft reproduce, a reload that answers as the trained model did, and bad pairs
caught with their file and line before any model is loaded."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import tunelab
from tunelab.runs import RunDir

ARITHMETIC = "builtin:arithmetic-preference"


def config(tmp_path, tiny_model, task: str, method: str, **training) -> dict:
    return {
        "name": f"{task}-{method}", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model), "task": task,
        "method": method,
        "data": {"train": ARITHMETIC, "max_length": 48, "split": {"validation": 0.02, "test": 0.06, "seed": 2}},
        "training": {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "logging_steps": 2, "eval_steps": 3, "save_steps": 3,
                     "precision": "fp32", "warmup_ratio": 0.0, **training},
        "evaluation": {"max_new_tokens": 4, "batch_size": 8}, task: {"gold": "exact-answer"},
    }  # fmt: skip


def completion_logps(model, tokenizer, fmt, examples) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) per pair, by plain teacher forcing, one row at a time."""
    from tunelab.data.shapes import rejected_example

    out = []
    for ex in examples:
        pair = []
        for side in (ex, rejected_example(ex)):
            enc = fmt.encode(side, tokenizer, 48)
            ids = torch.tensor([enc["input_ids"]])
            labels = torch.tensor(enc["labels"][1:])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            keep = labels != -100
            pair.append(float(logp[keep].gather(1, labels[keep][:, None]).sum()))
        out.append(tuple(pair))
    return out


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model):
    return tunelab.train(config(tmp_path_factory.mktemp("dpo"), tiny_model, "dpo", "lora"))


def test_dpo_metrics_match_plain_peft(dpo_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.splits import splits_from_config

    results = dpo_run.results
    base, tuned = results["metrics"]["base"], results["metrics"]["tuned"]
    assert base["preference_accuracy"] == 50.0  # the base is its own reference: every implicit reward ties
    cfg = dpo_run.config
    test = splits_from_config(cfg.data, cfg._source_dir).test
    run = RunDir(dpo_run.run_dir)
    tok = AutoTokenizer.from_pretrained(run.tokenizer_dir)
    fmt = run.read_format()
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ref = completion_logps(plain_base, tok, fmt, test)
    plain_tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run.path / "adapter").eval()
    got = completion_logps(plain_tuned, tok, fmt, test)
    wins = [(c - rc) - (r - rr) for (c, r), (rc, rr) in zip(got, ref, strict=True)]
    expected = 100 * sum(1.0 if w > 1e-4 else 0.5 if abs(w) <= 1e-4 else 0.0 for w in wins) / len(wins)
    assert tuned["preference_accuracy"] == pytest.approx(expected, abs=100 / len(wins) + 1e-6)
    margin = sum(c - r for c, r in got) / len(got)
    assert tuned["logp_margin"] == pytest.approx(margin, rel=1e-3, abs=1e-3)
    assert results["learning_check"]["metric"] == "preference_accuracy" and "gold_check" in results


def test_dpo_run_reloads_and_answers_as_trained(dpo_run):
    preds = [json.loads(line) for line in (dpo_run.run_dir / "predictions.jsonl").read_text().splitlines()]
    answers = tunelab.generate(dpo_run.run_dir, [p["input"] for p in preds[:6]], max_new_tokens=4)
    assert answers == [p["outputs"]["tuned"] for p in preds[:6]]
    assert (dpo_run.run_dir / "signals.png").is_file()  # rewards / margins / accuracies curves


@pytest.mark.parametrize("task,method", [("dpo", "full"), ("kto", "lora"), ("dpo", "ia3")])
def test_other_pairings_train_save_and_reload(tmp_path, tiny_model, task, method):
    result = tunelab.train(config(tmp_path, tiny_model, task, method, max_steps=3, save_steps=None, eval_steps=None))
    tuned = result.results["metrics"]["tuned"]
    assert 0 <= tuned["preference_accuracy"] <= 100 and tuned["n"] > 0
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert tunelab.generate(result.run_dir, preds[0]["input"], max_new_tokens=4) == preds[0]["outputs"]["tuned"]


BAD_PAIRS = {
    "missing rejected": ({"prompt": "a", "chosen": "b"}, "rejected"),
    "chosen equals rejected": ({"prompt": "a", "chosen": "b", "rejected": "b"}, "rejected"),
    "empty prompt": ({"prompt": "  ", "chosen": "b", "rejected": "c"}, "prompt"),
    "chosen not a string": ({"prompt": "a", "chosen": {"text": "b"}, "rejected": "c"}, "chosen"),
    "rejected is a list": ({"prompt": "a", "chosen": "b", "rejected": ["c"]}, "rejected"),
}


@pytest.mark.parametrize("case", list(BAD_PAIRS))
def test_bad_pairs_name_file_line_and_field(tmp_path, tiny_model, case, capsys, monkeypatch):
    from tunelab.cli import main

    row, field = BAD_PAIRS[case]
    good = {"prompt": "What is 1 plus 1?", "chosen": "2", "rejected": "3"}
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [good, good | {"prompt": "x"}, row]))
    cfg = config(tmp_path, tiny_model, "dpo", "lora") | {"data": {"train": str(data), "shape": "preference"}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    import tunelab.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(sys, "argv", ["tunelab", "train", str(path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"{data}:3:" in err and field in err, err


# every method on the policy stages: a few steps, saved, reloaded with the answers it gave in memory
MATRIX_OPTIONS = {"freeze": {"trainable_layers": 1}, "prompt": {"num_virtual_tokens": 4},
                  "ptuning": {"num_virtual_tokens": 4}, "prefix": {"num_virtual_tokens": 4}}  # fmt: skip


@pytest.mark.parametrize("task", ["dpo", "kto", "grpo"])
@pytest.mark.parametrize("method", ["full", "freeze", "lora", "dora", "qlora", "ia3", "prompt", "ptuning", "prefix"])
def test_every_method_on_the_policy_stages(tmp_path, tiny_model, task, method):
    if (task, method) in {("dpo", "full"), ("kto", "lora"), ("dpo", "ia3")}:
        pytest.skip("trained above")
    cfg = config(tmp_path, tiny_model, task, method, max_steps=2, save_steps=None, eval_steps=None)
    cfg["training"]["lr"] = 1e-3
    if method in MATRIX_OPTIONS:
        cfg[method] = MATRIX_OPTIONS[method]
    if task == "grpo":
        cfg["data"] = {"train": "builtin:arithmetic-prompts", "max_length": 48, "split": {"validation": 0.0, "test": 0.03}}
        cfg["grpo"] = {"reward": "arithmetic", "gold": "exact-answer", "num_generations": 2, "max_completion_length": 4}
    result = tunelab.train(cfg)
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert tunelab.generate(result.run_dir, preds[0]["input"], max_new_tokens=4) == preds[0]["outputs"]["tuned"]
