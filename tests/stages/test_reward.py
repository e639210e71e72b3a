"""The reward stage end to end on the tiny model: preference pairs → TRL's RewardTrainer → held-out
pairwise accuracy, and the saved reward model scores exactly as plain transformers + peft load it."""

import json

import pytest
import torch

import tunelab


def preference_rows(n: int = 48) -> list[dict[str, str]]:
    """Pairs anyone would rank the same way: a real answer is preferred over a non-answer."""
    from conftest import qa_rows

    return [{"prompt": r["question"], "chosen": r["answer"], "rejected": "I do not know."} for r in qa_rows(n)]


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("reward")
    data = d / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_rows()))
    cfg = {
        "name": "rm", "output_dir": str(d / "runs"), "model": str(tiny_model), "task": "reward", "method": "lora",
        "data": {"train": str(data), "max_length": 64, "split": {"validation": 0.1, "test": 0.2, "seed": 3}},
        "training": {"max_steps": 30, "batch_size": 4, "lr": 1e-2, "logging_steps": 5, "eval_steps": 15,
                     "save_steps": 15, "precision": "fp32", "warmup_ratio": 0.0, "scheduler": "constant"},
        "evaluation": {"batch_size": 8},
    }  # fmt: skip
    return tunelab.train(cfg)


def test_reward_model_learns_to_prefer_the_chosen_response(reward_run):
    ev = json.loads((reward_run.run_dir / "eval.json").read_text())
    base, tuned = ev["metrics"]["base"], ev["metrics"]["tuned"]
    assert tuned["n"] == base["n"] >= 8
    assert tuned["pairwise_accuracy"] >= 90.0 and tuned["mean_margin"] > base["mean_margin"]
    rows = [json.loads(line) for line in (reward_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    assert any("eval_loss" in r for r in rows) and any("accuracy" in r for r in rows)  # TRL's own metrics logged


def test_saved_reward_model_scores_as_plain_peft_loads_it(reward_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = reward_run.run_dir
    tok = AutoTokenizer.from_pretrained(run / "tokenizer")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1, pad_token_id=tok.pad_token_id)
    plain = PeftModel.from_pretrained(base, run / "adapter").eval()
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    first = predictions[0]
    for side, text in (("chosen", None), ("rejected", "I do not know.")):
        answer = text or next(r["chosen"] for r in preference_rows() if r["prompt"] == first["input"])
        ids = tok.apply_chat_template([{"role": "user", "content": first["input"]},
                                       {"role": "assistant", "content": answer}], return_tensors="pt",
                                      return_dict=True)["input_ids"]  # fmt: skip
        ids = ids[:, : ids.shape[1] - 1] if tok.decode(ids[0, -1]) == "\n" else ids  # the template's trailing newline
        with torch.no_grad():
            score = plain(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].item()
        assert score == pytest.approx(first["stats"]["tuned"][f"{side}_reward"], abs=1e-3), side
    assert {p["outputs"]["tuned"] for p in predictions} <= {"chosen", "rejected"}


def test_reward_report_and_wrong_rows_are_caught_before_loading(reward_run, tiny_model, tmp_path):
    text = (reward_run.run_dir / "report.html").read_text()
    assert "pairwise_accuracy" in text or "Pairwise accuracy" in text
    assert 'id="confusion"' in text and 'id="analysis-error"' not in text
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    cfg = {"name": "bad", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model), "task": "reward",
           "data": {"train": str(bad)}}  # fmt: skip
    with pytest.raises(tunelab.TunelabError, match=r"task 'reward' cannot train on rows of shape 'qa'"):
        tunelab.train(cfg)
