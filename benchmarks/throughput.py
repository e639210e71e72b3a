"""Training throughput and peak memory: tunelab's defaults vs the classic Trainer recipe.

Same model (SmolLM2-135M-Instruct), same rows (chatterbot, chat template, loss on answers), same
LoRA (r=8, alpha=16 on q,k,v,o), effective batch 8, sequences ≤ 256 tokens. Throughput counts
non-padding tokens per second of training. Each recipe runs in its own process so its peak
resident memory is its own.

    .venv/bin/python benchmarks/throughput.py            # both recipes, table at the end
    .venv/bin/python benchmarks/throughput.py --recipe tunelab --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def rows(n: int):
    from tunelab.data.splits import load_splits
    from tunelab.data.templates import PromptFormat
    from tunelab.models.loading import load_tokenizer, resolve_model

    path = resolve_model("smollm2-135m-instruct").path
    tok = load_tokenizer(path)
    splits = load_splits("builtin:chatterbot", seed=42)
    fmt = PromptFormat.build(tok, shape="qa")
    return path, tok, [fmt.encode(e, tok, 256) for e in splits.train[:n]]


def classic(steps: int) -> dict:
    """The tutorial recipe: fp32, every row padded to max length, batch 1 × accumulation 8."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    path, tok, encoded = rows(steps * 8)
    data = []
    for e in encoded:
        pad = 256 - len(e["input_ids"])
        data.append({
            "input_ids": torch.tensor(e["input_ids"] + [tok.pad_token_id] * pad),
            "attention_mask": torch.tensor([1] * len(e["input_ids"]) + [0] * pad),
            "labels": torch.tensor(e["labels"] + [-100] * pad),
        })
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, gradient_accumulation_steps=8,
                             max_steps=steps, learning_rate=2e-4, report_to="none", save_strategy="no",
                             disable_tqdm=True, use_cpu=True, logging_steps=1000)
    started = time.time()
    Trainer(model=model, args=args, train_dataset=data).train()
    seconds = time.time() - started
    tokens = sum(len(e["input_ids"]) for e in encoded)
    return {"recipe": "classic Trainer (fp32, padded to 256, 1×8)", "seconds": seconds, "tokens": tokens}


def tunelab_defaults(steps: int, block_mask: bool = False) -> dict:
    """tunelab with nothing tuned: only the model, data, LoRA shape and batch are set. With
    block_mask, packed rows are kept apart by transformers' dense block mask instead of per-row
    attention (what tunelab did before `training/packed_attention.py`)."""
    import tunelab

    if block_mask:
        import tunelab.training.packed_attention as packed

        packed.supports = lambda model: False

    cfg = {
        "name": "bench",
        "output_dir": tempfile.mkdtemp(),
        "model": "smollm2-135m-instruct",
        "method": "lora",
        "lora": LORA,
        "data": {"train": "builtin:chatterbot", "max_length": 256, "limit": steps * 8},
        "training": {"max_steps": steps, "batch_size": 8, "eval_steps": None, "save_steps": None},
        "evaluation": {"enabled": False},
    }
    result = tunelab.train(cfg)
    t = result.results["training"]
    recipe = "tunelab, packed rows under one block mask" if block_mask else "tunelab defaults (auto precision, padding-free, 8×1)"
    return {"recipe": recipe, "seconds": t["train_seconds"], "tokens": t["train_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=["classic", "tunelab", "tunelab-block-mask", "all"], default="all")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps (of 8 rows) per recipe")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")
    if args.recipe == "all":
        results = []
        for recipe in ("classic", "tunelab-block-mask", "tunelab"):
            out = subprocess.run([sys.executable, __file__, "--recipe", recipe, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{'recipe':58s} {'tok/s':>8s} {'peak GiB':>9s}")
        for r in results:
            print(f"{r['recipe']:58s} {r['tokens_per_second']:8.1f} {r['peak_gib']:9.2f}")
        print(f"speed-up vs classic: {results[2]['tokens_per_second'] / results[0]['tokens_per_second']:.1f}x; "
              f"per-row packed attention vs block mask: "
              f"{results[2]['tokens_per_second'] / results[1]['tokens_per_second']:.2f}x")
        return
    from tunelab.progress import quiet_libraries

    quiet_libraries()
    if args.recipe == "classic":
        r = classic(args.steps)
    else:
        r = tunelab_defaults(args.steps, block_mask=args.recipe == "tunelab-block-mask")
    r["tokens_per_second"] = r["tokens"] / r["seconds"]
    r["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps(r))


if __name__ == "__main__":
    main()
