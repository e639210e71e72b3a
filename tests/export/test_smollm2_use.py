"""The real SmolLM2-135M-Instruct: a 3-step LoRA run → merge → plain transformers, and → GGUF → read back."""

import pytest

import tunelab

pytestmark = pytest.mark.integration


def test_smollm2_merge_and_gguf_round_trip(tmp_path):
    from inference.runs import plain_greedy
    from tunelab.export.gguf import export_gguf
    from tunelab.export.merge import merge_run

    cfg = {
        "name": "smollm2-use",
        "output_dir": str(tmp_path),
        "model": "smollm2-135m-instruct",
        "method": "lora",
        "data": {"train": "builtin:chatterbot", "limit": 32},
        "training": {"max_steps": 3},
        "evaluation": {"enabled": False},
    }
    run = tunelab.train(cfg).run_dir
    prompt = "What is the capital of France?"

    merged = merge_run(run, tmp_path / "merged")
    assert merged.max_abs_logit_diff < 1e-3
    assert plain_greedy(tmp_path / "merged", prompt, 24) == tunelab.generate(run, prompt, max_new_tokens=24)

    gguf = export_gguf(run, tmp_path / "smollm2-f16.gguf", dtype="f16")
    assert gguf.arch == "llama" and gguf.tensors == 30 * 9 + 2
    assert gguf.tokenizer_match and gguf.same_tokens and gguf.tokens_compared > 0, gguf.notes
