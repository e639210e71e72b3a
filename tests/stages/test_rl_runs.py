"""RL and preference runs after training: a GRPO (RLOO) run killed with SIGKILL in its second epoch and
resumed ends bit-identical to one never interrupted (the answers it sampled and the prompt order
included), and DPO and GRPO runs merge, export to GGUF and serve as SFT runs do: merged logits equal
the run's, the GGUF file answers as the run does, and the server's completion is `tunelab.generate`'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunelab
from tunelab.runs import RunDir

HERE = Path(__file__).parent
PROMPTS = ["What is 3 plus 4?", "What is 12 plus 9?", "What is 20 plus 20?"]


def longer_is_better(prompts, completions, **_):  # noqa: ANN001, ANN003
    """A reward the random tiny model's answers differ on (none of them is ever a right sum)."""
    return [len(c) / 10 for c in completions]


def grpo_config(tmp_path: Path, tiny_model: Path, name: str, task: str = "grpo", **training) -> dict:
    return {
        "name": name, "output_dir": str(tmp_path / "runs"), "model": str(tiny_model), "task": task, "method": "lora",
        "data": {"train": "builtin:arithmetic-prompts", "max_length": 48, "split": {"validation": 0.0, "test": 0.03}},
        "training": {"max_steps": 4, "batch_size": 4, "lr": 2e-2, "logging_steps": 1, "save_steps": None,
                     "precision": "fp32", "warmup_ratio": 0.0, "threads": 1, **training},
        "evaluation": {"enabled": False},
        task: {"reward": "stages.test_rl_runs:longer_is_better", "num_generations": 2, "max_completion_length": 4},
    }  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {name: t for file in sorted(folder.glob("*.safetensors")) for name, t in load_file(file).items()}


LOGGED = ("loss", "grad_norm", "reward", "reward_std", "kl", "completions/mean_length")


def logged(run: RunDir) -> list[tuple]:
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    return [(r["step"], k, r[k]) for r in rows for k in LOGGED if k in r]


@pytest.mark.parametrize("task", ["grpo", "rloo"])
def test_rl_run_killed_in_its_second_epoch_then_resumed_is_bit_identical(tmp_path, tiny_model, task):
    # 10 prompts, 2 a step (each sampled twice): an epoch is 5 steps; checkpoint-6 is in the second
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)}) + "\n"
                            for i in range(10)))  # fmt: skip

    def cfg(name: str) -> dict:
        out = grpo_config(tmp_path, tiny_model, name, task, max_steps=8, save_steps=3)
        out["data"] = {"train": str(data), "max_length": 48, "split": {"validation": 0.0, "test": 0.0}}
        return out

    reference = tunelab.train(cfg("reference"))
    config = tmp_path / "killed.json"
    config.write_text(json.dumps(cfg("killed")))
    killed = RunDir(tmp_path / "runs" / "killed")
    # SIGKILL just after step 7 (checkpoint-6 written, step 7 trained and lost), in a process of its own
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    proc = subprocess.run([sys.executable, str(HERE / "crash_driver.py"), str(config), "train", str(killed.path), "step:7"],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert killed.last_checkpoint().name == "checkpoint-6" and not killed.is_complete
    resumed = tunelab.resume(killed.path)

    assert resumed.results["training"]["global_step"] == 8
    rows = [json.loads(line) for line in killed.metrics.read_text().splitlines()]
    # the resumed step 7 is in the second epoch
    assert [r["epoch"] for r in rows if r.get("step") == 7 and "loss" in r] == [pytest.approx(1.4)]
    expected, got = weights(reference.run_dir / "adapter"), weights(killed.path / "adapter")
    assert expected.keys() == got.keys()
    assert any(t.abs().max() > 0 for n, t in expected.items() if "lora_B" in n)  # it did learn something
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    # the sampled answers, their rewards and the KL of the resumed steps are the uninterrupted run's
    assert logged(killed) == logged(RunDir(reference.run_dir))


# -- merge, GGUF, serve ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_runs(tmp_path_factory, tiny_model) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("policy-runs")
    dpo = {
        "name": "dpo", "output_dir": str(tmp / "runs"), "model": str(tiny_model), "task": "dpo", "method": "lora",
        "data": {"train": "builtin:arithmetic-preference", "max_length": 48, "split": {"validation": 0.0, "test": 0.02}},
        "training": {"max_steps": 3, "batch_size": 4, "lr": 2e-2, "logging_steps": 1, "save_steps": None,
                     "precision": "fp32", "warmup_ratio": 0.0},
        "evaluation": {"enabled": False},
    }  # fmt: skip
    grpo = grpo_config(tmp, tiny_model, "grpo", max_steps=3)
    return {"dpo": tunelab.train(dpo).run_dir, "grpo": tunelab.train(grpo).run_dir}


def _logits(model, tokenizer, prompts) -> list[torch.Tensor]:  # noqa: ANN001
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)  # fmt: skip
        with torch.no_grad():
            out.append(model(**ids).logits.float())
    return out


@pytest.mark.parametrize("task", ["dpo", "grpo"])
def test_policy_runs_merge_export_and_serve_as_they_answer(policy_runs, tmp_path, task):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serve.servers import running
    from tunelab.export.gguf import export_gguf
    from tunelab.export.merge import merge_run
    from tunelab.serve.app import create_app

    run_dir = policy_runs[task]
    loaded = tunelab.load_run(run_dir)
    expected = tunelab.generate(loaded, PROMPTS, max_new_tokens=8, batch_size=1)

    merged = merge_run(run_dir, tmp_path / "merged")
    assert merged.method == "lora" and merged.max_abs_logit_diff < 1e-4
    # the merged directory, read by plain transformers, gives the run's logits (its chat template is the run's)
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    theirs = _logits(loaded.model.eval(), loaded.tokenizer, PROMPTS)
    for a, b in zip(_logits(plain, tok, PROMPTS), theirs, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4

    gguf = export_gguf(run_dir, tmp_path / f"{task}.gguf", dtype="f32")
    assert gguf.arch == "llama" and gguf.tokenizer_match and gguf.verified and gguf.same_tokens, gguf.notes

    app = create_app(loaded, api_key="k", model_id=task, max_batch=4, default_max_tokens=8)
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60)
        for prompt, answer in zip(PROMPTS, expected, strict=True):
            r = client.chat.completions.create(model=task, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=8, temperature=0)  # fmt: skip
            assert r.choices[0].message.content.strip() == answer
