"""One tiny fine-tuned run shared by the inference, export and serve tests (trained once per session)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

_RUNS: dict[str, Path] = {}

PROMPTS = [f"What colour is the {thing} number {i}?" for i, thing in
           enumerate(["sky", "grass", "sun", "snow", "coal", "plum", "sea", "leaf"] * 2)]


def tiny_lora_run(tmp_path_factory, tiny_model: Path) -> Path:
    """A LoRA SFT run on the tiny Llama with the ChatML template (a few seconds)."""
    if "lora" not in _RUNS:
        import tunelab
        from conftest import qa_rows

        d = tmp_path_factory.mktemp("use-run")
        data = d / "qa.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n")
        cfg = {
            "name": "tiny-lora",
            "output_dir": str(d / "runs"),
            "model": str(tiny_model),
            "data": {"train": str(data), "max_length": 64, "split": {"validation": 0.1, "test": 0.1, "seed": 1}},
            "training": {"max_steps": 8, "batch_size": 4, "lr": 1e-2, "logging_steps": 4, "eval_steps": None,
                         "save_steps": None, "precision": "fp32", "warmup_ratio": 0.0},
            "evaluation": {"max_new_tokens": 4, "batch_size": 8, "compare_base": False, "max_examples": 2},
        }
        _RUNS["lora"] = tunelab.train(cfg).run_dir
    return _RUNS["lora"]


def cli_command() -> list[str]:
    """argv prefix for the `tunelab` CLI with the `use` commands (chat, merge, export, serve, generate)."""
    from tunelab.commands import COMMAND_MODULES

    if "use" in COMMAND_MODULES:
        return [sys.executable, "-m", "tunelab.cli"]
    # not wired into the CLI yet: register the commands the way commands.register_all will
    boot = "from tunelab import cli; from tunelab.commands import use; use.register(cli.app); cli.main()"
    return [sys.executable, "-c", boot]


def plain_greedy(directory, prompt, max_new_tokens, **load):
    """Greedy answer with plain transformers only: the model's own tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, **load)
    model = AutoModelForCausalLM.from_pretrained(directory, **load).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
