"""GRPO end to end on the tiny model with each kind of reward — a built-in, the user's own
`module:function`, a finished reward run — RLOO on the same recipe (a built-in reward, and a few
methods), and the reward-hacking verdict on hand-made figures."""

from __future__ import annotations

import json

import pytest

import tunelab
from tunelab.rewards import arithmetic, exact_answer, final_number
from tunelab.stages.grpo import reward_hacking


def config(tmp_path, tiny_model, reward: str, task: str = "grpo", **extra) -> dict:
    return {
        "name": task, "output_dir": str(tmp_path / "runs"), "model": str(tiny_model), "task": task,
        "method": "lora",
        "data": {"train": "builtin:arithmetic-prompts", "max_length": 48, "split": {"validation": 0.0, "test": 0.03}},
        "training": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "logging_steps": 1, "save_steps": None,
                     "precision": "fp32"},
        "evaluation": {"max_new_tokens": 4, "batch_size": 8},
        task: {"reward": reward, "gold": "exact-answer", "num_generations": 2, "max_completion_length": 4, **extra},
    }  # fmt: skip


def longer_is_better(prompts, completions, **_):  # noqa: ANN001, ANN003
    """A reward the random tiny model's answers differ on (so that every step moves the weights)."""
    return [len(c) / 10 for c in completions]


def test_builtin_rewards_by_hand():
    assert exact_answer(["q"] * 4, ["12", " 12. ", "12 apples", "13"], answer=["12"] * 4) == [1, 1, 0, 0]
    assert final_number(["q"] * 4, ["5 + 7 = 12.", "12 apples", "12 or 13", "no"], answer=["12"] * 4) == [1, 1, 0, 0]
    words = "The sum of 5 and 7 is 12"
    got = arithmetic(["q"] * 5, ["12", "12 is it", "The sum is 13 or 12", "nothing", words], answer=["12"] * 5)
    assert got == [1.0, pytest.approx(0.5 - 0.04), pytest.approx(0.5 - 0.1), 0.0, pytest.approx(0.5 - 0.02 * 7)]
    assert arithmetic(["q"], [" ".join([words] * 4)], answer=["12"]) == [0.1]  # never below 0.1


@pytest.mark.parametrize("task", ["grpo", "rloo"])
def test_grpo_with_a_builtin_reward_trains_and_judges(tmp_path, tiny_model, task):
    result = tunelab.train(config(tmp_path, tiny_model, "arithmetic", task))
    ev = result.results
    assert ev["task"] == task and ev["training"]["global_step"] == 3
    base, tuned = ev["metrics"]["base"], ev["metrics"]["tuned"]
    assert {"mean_reward", "gold_score", "kl_to_base", "mean_output_tokens"} <= set(tuned)
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    # the reported scores are the rules applied to the reported answers
    for side, metrics in (("base", base), ("tuned", tuned)):
        answers = [p["outputs"][side] for p in preds]
        refs = [p["reference"] for p in preds]
        assert metrics["mean_reward"] == pytest.approx(sum(arithmetic([""] * len(refs), answers, answer=refs)) / len(refs))
        assert metrics["gold_score"] == pytest.approx(100 * sum(exact_answer([], answers, answer=refs)) / len(refs))
    # the win rate against the base: prompt by prompt, by the gold rule, counted by hand (a tie is half)
    pairs = [(p["stats"]["base"]["gold"], p["stats"]["tuned"]["gold"]) for p in preds]
    by_hand = 100 * (sum(t > b for b, t in pairs) + 0.5 * sum(t == b for b, t in pairs)) / len(pairs)
    assert tuned["win_rate_vs_base"] == pytest.approx(by_hand) and base["win_rate_vs_base"] == 50.0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("reward" in r for r in rows) and (result.run_dir / "signals.png").is_file()
    assert not any("train loss" in w for w in ev["warnings"])  # GRPO's (RLOO's) loss is no learning signal
    assert tunelab.generate(result.run_dir, preds[0]["input"], max_new_tokens=4) == preds[0]["outputs"]["tuned"]


def test_grpo_with_the_users_function(tmp_path, tiny_model, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "CALLS = []\n"
        "def short(prompts, completions, answer, **fields):\n"
        "    CALLS.append(len(completions))\n"
        "    return [1.0 / (1 + len(c)) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = tunelab.train(config(tmp_path, tiny_model, "my_rewards:short"))
    import my_rewards

    assert sum(my_rewards.CALLS) >= 3 * 4  # every sampled answer of every step (and the judging)
    assert result.results["metrics"]["tuned"]["mean_reward"] > 0


def test_grpo_against_a_reward_run(tmp_path, tiny_model):
    rm = tunelab.train({
        "name": "rm", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model), "task": "reward", "method": "lora",
        "data": {"train": "builtin:arithmetic-preference", "max_length": 48, "split": {"validation": 0.02, "test": 0.05}},
        "training": {"max_steps": 2, "batch_size": 4, "save_steps": None, "precision": "fp32"},
    })  # fmt: skip
    result = tunelab.train(config(tmp_path, tiny_model, str(rm.run_dir)) | {"name": "grpo-rm"})
    assert isinstance(result.results["metrics"]["tuned"]["mean_reward"], float)


@pytest.mark.parametrize("task", ["grpo", "rloo"])
def test_a_missing_reward_is_one_message(tmp_path, tiny_model, task):
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match=rf"{task}\.reward"):
        tunelab.train(config(tmp_path, tiny_model, "no_such_module:fn", task))
    with pytest.raises(TunelabError, match=rf"a {task} run needs a reward"):
        tunelab.train(config(tmp_path, tiny_model, "", task) | {"name": "none"})


@pytest.mark.parametrize("task", ["grpo", "rloo"])
def test_batches_of_partial_groups_are_refused_before_loading(tmp_path, tiny_model, task, monkeypatch):
    import tunelab.models.loading as loading
    from tunelab.errors import TunelabError

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    partial = rf"batch_size × grad_accum \(4\) is not a multiple of {task}.num_generations \(3\)"
    with pytest.raises(TunelabError, match=partial) as err:
        tunelab.train(config(tmp_path, tiny_model, "arithmetic", task, num_generations=3))
    assert err.value.field == "training.batch_size"
    assert not (tmp_path / "runs").exists()  # refused when the config was read: nothing written


def test_a_gold_rule_needing_a_missing_column_is_refused_before_loading(tmp_path, tiny_model, monkeypatch):
    import tunelab.models.loading as loading
    from tunelab.errors import TunelabError

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "What is {i} plus 1?"}}\n' for i in range(20)))
    cfg = config(tmp_path, tiny_model, "arithmetic", "grpo")
    cfg["data"]["train"] = str(data)
    with pytest.raises(TunelabError, match="needs the column\\(s\\) answer") as err:
        tunelab.train(cfg)
    assert err.value.field == "grpo.reward" and err.value.file == str(data)


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "prompt"])
def test_rloo_on_each_kind_of_method(tmp_path, tiny_model, method):
    cfg = config(tmp_path, tiny_model, "stages.test_grpo:longer_is_better", "rloo")
    cfg |= {"name": f"rloo-{method}", "method": method}
    cfg["training"] |= {"max_steps": 2, "lr": 1e-3}
    if method == "prompt":
        cfg["prompt"] = {"num_virtual_tokens": 4}
    result = tunelab.train(cfg)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("grad_norm", 0) > 0 for r in rows)  # the answers' rewards differed: the weights moved
    preds = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    said = tunelab.generate(result.run_dir, [p["input"] for p in preds[:3]], max_new_tokens=4)
    assert said == [p["outputs"]["tuned"] for p in preds[:3]]


def test_reward_hacking_verdict():
    base = {"mean_output_tokens": 10.0, "kl_to_base": 0.0}
    up = {"base": 0.2, "tuned": 0.8, "low": 0.4, "high": 0.8, "better": True}
    flat_gold = {"base": 30.0, "tuned": 28.0, "low": -6.0, "high": 2.0, "better": False}
    better_gold = {"base": 30.0, "tuned": 60.0, "low": 20.0, "high": 40.0, "better": True}
    calm = {"mean_output_tokens": 11.0, "kl_to_base": 0.1}
    assert reward_hacking(base, calm, up, better_gold) == []
    assert "gold rule did not" in reward_hacking(base, calm, up, flat_gold)[0]
    assert "KL" in reward_hacking(base, {"mean_output_tokens": 11.0, "kl_to_base": 3.0}, up, better_gold)[0]
    assert "grew" in reward_hacking(base, {"mean_output_tokens": 25.0, "kl_to_base": 0.1}, up, better_gold)[0]
