"""Every method learns a fixed mapping, not just runs: on a tiny model, held-out questions about six
things answered "It is red." or "It is blue." by the thing. Before training the answer is noise
(perplexity in the thousands); after 60 steps (P-tuning: 120) the held-out answers' perplexity is near the two-answer
floor and the model answers in the trained form, checked by hand on predictions.jsonl.

The tiny model is initialised with a larger weight scale than transformers' 0.02: with 64-dim tied
embeddings of that scale, no adapter could make any token likely (a logit of at most ~1.3), and only
methods that train the embeddings would pass. Learning rates are the tiny model's, not the methods'
defaults (those are for pretrained models: benchmarks/learning.py checks them on the real ones).
"""

import json

import pytest

import tunelab

# methods whose trainable part is small train with a larger step on the tiny model
LR = {"full": 3e-3, "freeze": 1e-2, "ia3": 3e-1, "prompt": 1e-1, "ptuning": 3e-2, "prefix": 1e-1}
STEPS = {"ptuning": 120}  # its prompt encoder (an MLP from noise) needs longer on the tiny model
THINGS = ["sky", "grass", "sun", "snow", "coal", "plum", "cherry", "sea", "leaf", "lemon", "night", "rose"]


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    from conftest import build_tiny_model

    root = tmp_path_factory.mktemp("learning")
    model = build_tiny_model(root / "model", initializer_range=0.3)
    rows = [{"question": f"What colour is the {t} number {i}?", "answer": f"It is {['red', 'blue'][n % 2]}."}
            for i in range(96) for n, t in [(i % len(THINGS), THINGS[i % len(THINGS)])]]  # fmt: skip
    data = root / "colours.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return root, model, data


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "dora", "qlora", "ia3", "prompt", "ptuning", "prefix"])
def test_every_method_learns_a_fixed_mapping(learnable, method, one_thread):
    root, model, data = learnable
    result = tunelab.train({
        "name": method, "output_dir": str(root / "runs"), "model": str(model), "method": method,
        "data": {"train": str(data), "max_length": 48, "split": {"validation": 0.1, "test": 0.2, "seed": 0}},
        "training": {"max_steps": STEPS.get(method, 60), "batch_size": 8, "lr": LR.get(method, 1e-2), "logging_steps": 5,
                     "eval_steps": None, "save_steps": None, "precision": "fp32", "warmup_ratio": 0.0,
                     "scheduler": "constant"},
        "evaluation": {"max_new_tokens": 10, "batch_size": 16, "probes": []},
    })  # fmt: skip
    base, tuned = result.results["metrics"]["base"], result.results["metrics"]["tuned"]
    assert base["perplexity"] > 500 and tuned["perplexity"] < 6, (base["perplexity"], tuned["perplexity"])
    predictions = [json.loads(line) for line in (result.run_dir / "predictions.jsonl").read_text().splitlines()]
    # the answer's form; which colour is in the perplexity (a tiny random model stops poorly: no EM)
    trained_form = sum(p["outputs"]["tuned"].startswith(("It is red", "It is blue")) for p in predictions)
    assert trained_form >= 0.75 * len(predictions), [p["outputs"]["tuned"] for p in predictions]
    assert not any(p["outputs"]["base"].startswith("It is") for p in predictions)
    assert not result.results["warnings"]
