"""DPO, KTO, ORPO and SimPO end to end on the tiny model: pairs (or unpaired feedback, or whole
dialogues) → TRL's trainer → held-out preference metrics that plain transformers + peft reproduce,
losses that a hand computation reproduces, a reload that answers as the trained model did, and bad
pairs caught with their file and line before any model is loaded."""

from __future__ import annotations

import json

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
def test_bad_pairs_name_file_line_and_field(tmp_path, tiny_model, case, train_refused):
    row, field = BAD_PAIRS[case]
    good = {"prompt": "What is 1 plus 1?", "chosen": "2", "rejected": "3"}
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [good, good | {"prompt": "x"}, row]))
    cfg = config(tmp_path, tiny_model, "dpo", "lora") | {"data": {"train": str(data), "shape": "preference"}}
    code, err = train_refused(cfg)
    assert code == 2 and "Traceback" not in err
    assert f"{data}:3:" in err and field in err, err


# every method on the policy stages: a few steps, saved, reloaded with the answers it gave in memory
MATRIX_OPTIONS = {"freeze": {"trainable_layers": 1}, "prompt": {"num_virtual_tokens": 4},
                  "ptuning": {"num_virtual_tokens": 4}, "prefix": {"num_virtual_tokens": 4}}  # fmt: skip


@pytest.mark.parametrize("task", ["dpo", "kto", "orpo", "simpo", "grpo", "rloo"])
@pytest.mark.parametrize("method", ["full", "freeze", "lora", "dora", "qlora", "ia3", "prompt", "ptuning", "prefix"])
def test_every_method_on_the_policy_stages(tmp_path, tiny_model, task, method):
    if (task, method) in {("dpo", "full"), ("kto", "lora"), ("dpo", "ia3")}:
        pytest.skip("trained above")
    cfg = config(tmp_path, tiny_model, task, method, max_steps=2, save_steps=None, eval_steps=None)
    cfg["training"]["lr"] = 1e-3
    if method in MATRIX_OPTIONS:
        cfg[method] = MATRIX_OPTIONS[method]
    if task in ("grpo", "rloo"):
        cfg["data"] = {"train": "builtin:arithmetic-prompts", "max_length": 48, "split": {"validation": 0.0, "test": 0.03}}
        cfg[task] = {"reward": "arithmetic", "gold": "exact-answer", "num_generations": 2, "max_completion_length": 4}
    result = tunelab.train(cfg)
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert tunelab.generate(result.run_dir, preds[0]["input"], max_new_tokens=4) == preds[0]["outputs"]["tuned"]


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


SUMS = [(a, b) for a in range(2, 9) for b in range(3, 7)]


def sum_pairs() -> list[dict]:
    return [{"prompt": f"What is {a} plus {b}?", "chosen": str(a + b), "rejected": str(a + b + 1), "answer": str(a + b)}
            for a, b in SUMS]  # fmt: skip


def seq_logps(model, enc) -> torch.Tensor:
    """Per-token log-probabilities of the labelled tokens of one encoded row (0 elsewhere), and its mask."""
    ids = torch.tensor([enc["input_ids"]])
    labels = torch.tensor(enc["labels"][1:])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    keep = labels != -100
    return logp.gather(1, labels.clamp(min=0)[:, None])[:, 0] * keep, keep


@pytest.mark.parametrize("task", ["orpo", "simpo"])
def test_reference_free_losses_match_a_hand_computation(tmp_path, tiny_model, task):
    """With lr 0 and one batch holding every training pair, the first logged loss is the paper's loss of
    the untouched model on those pairs, computed here with plain torch from the same encoded rows:
    ORPO: NLL(chosen) − β·mean log σ(log odds(chosen) − log odds(rejected)) with mean per-token log-probs
    (TRL's NLL counts the prompt tokens too); SimPO: −mean log σ(β·(mean logp chosen − rejected) − γ)."""
    from transformers import AutoModelForCausalLM

    from tunelab.data.shapes import rejected_example
    from tunelab.data.splits import splits_from_config

    cfg = config(tmp_path, tiny_model, task, "full", max_steps=1, lr=0.0, batch_size=len(SUMS), logging_steps=1,
                 eval_steps=None, save_steps=None)  # fmt: skip
    cfg["data"] = {"train": write_rows(tmp_path / "pairs.jsonl", sum_pairs()), "max_length": 48,
                   "split": {"validation": 0.0, "test": 0.0}}  # fmt: skip
    cfg["evaluation"]["enabled"] = False
    cfg[task] = {"beta": 0.5} | ({"gamma": 0.3} if task == "simpo" else {})
    result = tunelab.train(cfg)
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    loss = next(r["loss"] for r in logged if "loss" in r)

    run = RunDir(result.run_dir)
    from transformers import AutoTokenizer

    tok, fmt = AutoTokenizer.from_pretrained(run.tokenizer_dir), run.read_format()
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    train = splits_from_config(result.config.data, result.config._source_dir).train
    assert len(train) == len(SUMS)
    means, nll_sum, nll_n = {"chosen": [], "rejected": []}, 0.0, 0
    with torch.no_grad():
        for ex in train:
            for side, row in (("chosen", ex), ("rejected", rejected_example(ex))):
                enc = fmt.encode(row, tok, 48)
                lp, keep = seq_logps(model, enc)
                means[side].append(lp.sum() / keep.sum())
                if side == "chosen":  # every token after the first, prompt included
                    full = seq_logps(model, {"input_ids": enc["input_ids"], "labels": enc["input_ids"]})[0]
                    nll_sum, nll_n = nll_sum - float(full.sum()), nll_n + full.numel()
    c, r = torch.stack(means["chosen"]), torch.stack(means["rejected"])
    if task == "orpo":
        log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
        expected = nll_sum / nll_n - 0.5 * float(torch.nn.functional.logsigmoid(log_odds).mean())
    else:
        expected = float(-torch.nn.functional.logsigmoid(0.5 * (c - r) - 0.3).mean())
    assert loss == pytest.approx(expected, rel=1e-4)


def test_kto_on_unpaired_feedback_matches_plain_peft(tmp_path, tiny_model):
    """KTO on prompt/completion/label rows: feedback accuracy (the implicit reward's sign agrees with the
    label) recomputed with plain transformers + peft; the base scores exactly 50."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.data.splits import splits_from_config

    rows = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2),
             "answer": p["answer"]} for i, p in enumerate(sum_pairs() * 2)]  # fmt: skip
    cfg = config(tmp_path, tiny_model, "kto", "lora", max_steps=4, save_steps=None, eval_steps=None)
    cfg["data"] = {"train": write_rows(tmp_path / "feedback.jsonl", rows), "max_length": 48,
                   "split": {"validation": 0.0, "test": 0.25, "seed": 3}}  # fmt: skip
    result = tunelab.train(cfg)
    base, tuned = result.results["metrics"]["base"], result.results["metrics"]["tuned"]
    assert base["feedback_accuracy"] == 50.0 and "preference_accuracy" not in tuned
    assert result.results["learning_check"]["metric"] == "feedback_accuracy"
    run = RunDir(result.run_dir)
    tok, fmt = AutoTokenizer.from_pretrained(run.tokenizer_dir), run.read_format()
    test = splits_from_config(result.config.data, result.config._source_dir).test
    plain_base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    plain_tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run.path / "adapter").eval()
    agree, gap = [], {True: [], False: []}
    with torch.no_grad():
        for ex in test:
            enc = fmt.encode(ex, tok, 48)
            reward = float(seq_logps(plain_tuned, enc)[0].sum() - seq_logps(plain_base, enc)[0].sum())
            agree.append(100.0 if (reward > 0) == ex.fields["label"] else 0.0)
            gap[ex.fields["label"]].append(reward)
    assert tuned["feedback_accuracy"] == pytest.approx(sum(agree) / len(agree), abs=100 / len(agree) + 1e-6)
    expected_gap = sum(gap[True]) / len(gap[True]) - sum(gap[False]) / len(gap[False])
    assert tuned["reward_gap"] == pytest.approx(expected_gap, rel=1e-3, abs=1e-3)


def test_dialogue_pairs_train_on_the_last_answer_only(tmp_path, tiny_model):
    """Anthropic HH rows (whole dialogues, no prompt field): the shared turns, earlier assistant turn
    included, are the prompt TRL is given; only the last answers differ."""
    from tunelab.data.templates import PromptFormat
    from tunelab.stages.preference import encode_pairs

    hh = [{"chosen": f"\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: What is {a} plus {b}?\n\nAssistant: {a + b}",
           "rejected": f"\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: What is {a} plus {b}?\n\nAssistant: {a + b + 1}"}
          for a, b in SUMS]  # fmt: skip
    cfg = config(tmp_path, tiny_model, "dpo", "lora", max_steps=2, save_steps=None, eval_steps=None)
    cfg["data"] = {"train": write_rows(tmp_path / "hh.jsonl", hh), "max_length": 64, "split": {"validation": 0.0, "test": 0.2}}
    del cfg["dpo"]  # no answer field for a gold rule
    result = tunelab.train(cfg)
    assert result.results["metrics"]["tuned"]["n"] > 0
    from transformers import AutoTokenizer

    from tunelab.data.splits import splits_from_config
    from tunelab.stages.base import Context

    tok = AutoTokenizer.from_pretrained(RunDir(result.run_dir).tokenizer_dir)
    test = splits_from_config(result.config.data, result.config._source_dir).test
    fmt = PromptFormat.build(tok, shape="preference_dialogue", template=None, system_prompt=None)
    ctx = Context(cfg=result.config, run=RunDir(result.run_dir), stage=None, method=None, resume=False, tokenizer=tok)
    rows = encode_pairs(ctx, fmt, test, "test")
    for ex, row in zip(test, rows, strict=True):
        assert row["prompt_ids"] == fmt.prompt_ids(ex, tok)  # "Hi", "Hello", the question: all prompt
        assert "Hello" in tok.decode(row["prompt_ids"]) and tok.decode(row["chosen_ids"]).startswith(ex.fields["chosen"])
        assert tok.decode(row["rejected_ids"]).startswith(ex.fields["rejected"])


BAD_ROWS = {  # (task, good row, bad row, the field the message names)
    "dialogues differ before the answer": (
        "dpo", {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: B"},
        {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: P\n\nAssistant: B"}, "chosen"),
    "prompt ends with an answer": (
        "orpo", {"prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"},
        {"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "chosen": "A",
         "rejected": "B"}, "prompt[1]"),
    "feedback label is a string": (
        "kto", {"prompt": "Q", "completion": "A", "label": True}, {"prompt": "Q", "completion": "A", "label": "good"},
        "label"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_conversational_and_feedback_rows_exit_2_with_file_and_line(tmp_path, tiny_model, case, train_refused):
    task, good, bad, field = BAD_ROWS[case]
    data = write_rows(tmp_path / "rows.jsonl", [good, good, bad])
    cfg = config(tmp_path, tiny_model, task, "lora") | {"data": {"train": data}}
    del cfg[task]
    code, err = train_refused(cfg)
    assert code == 2 and "Traceback" not in err
    assert f"{data}:3: {field}:" in err, err


@pytest.mark.parametrize(("task", "change", "key"), [
    ("kto", {"training": {"batch_size": 1}}, "training.batch_size"),
    ("dpo", {"data": {"train": ARITHMETIC, "train_on_prompt": True}}, "data.train_on_prompt"),
    ("reward", {"data": {"train": ARITHMETIC, "train_on_prompt": True}}, "data.train_on_prompt"),
])  # fmt: skip
def test_settings_a_stage_cannot_train_with_are_refused_when_read(tiny_model, tmp_path, task, change, key):
    from tunelab.config import resolve_config
    from tunelab.errors import TunelabError

    cfg = {"model": str(tiny_model), "task": task, "data": {"train": ARITHMETIC}}
    for section, values in change.items():
        cfg[section] = cfg.get(section, {}) | values
    with pytest.raises(TunelabError) as err:
        resolve_config(cfg, None)
    assert err.value.field == key
