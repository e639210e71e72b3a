"""The GPU checks issue 14 asks for, as one short script for a session that has a GPU machine.

1. The planner's estimate against `torch.cuda.max_memory_allocated` (`tunelab plan --measure`) for
   SmolLM2-135M + LoRA and for a ≥1B model built from a config with random weights (a Llama-3.2-1B
   shape with SmolLM2's vocabulary, so SmolLM2's tokenizer serves it), LoRA and full.
2. A DeepSpeed ZeRO-3 run of that model under the launcher (`--nproc 1`, one GPU), and its tokens/s
   and MFU (model FLOPs per token from the planner × tokens/s over the GPU's dense bf16 peak).

    .venv/bin/python benchmarks/gpu_checks.py --out results/ [--gpu-tflops 989]

Each step runs in its own process and prints one JSON line; nothing in CI runs this.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ONE_B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
         "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
         "max_position_embeddings": 8192, "vocab_size": 49152, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
         "rope_theta": 500000.0, "hidden_act": "silu"}  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1"}


def build_random_1b(directory: Path) -> Path:
    """Random weights (bf16 safetensors) for the 1B shape, with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunelab.models.loading import resolve_model

    if (directory / "model.safetensors").is_file() or list(directory.glob("model-*.safetensors")):
        return directory
    smol = resolve_model("smollm2-135m-instruct").path
    tok = AutoTokenizer.from_pretrained(smol)
    config = LlamaConfig(**{k: v for k, v in ONE_B.items() if k not in ("architectures", "model_type")},
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


def config(directory: Path, name: str, model: str, method: str, *, batch: int, length: int, steps: int = 20,
           distributed: str = "") -> Path:  # fmt: skip
    path = directory / f"{name}.yaml"
    path.write_text(
        f"name: {name}\noutput_dir: {directory / 'runs'}\nmodel: {model}\nmethod: {method}\n"
        f"data: {{train: builtin:chatterbot, max_length: {length}}}\n"
        f"training: {{max_steps: {steps}, batch_size: {batch}, lr: 1.0e-4, eval_steps: null, save_steps: null}}\n"
        f"evaluation: {{enabled: false}}\n{distributed}",
        encoding="utf-8",
    )
    return path


def plan_measure(path: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "tunelab", "plan", str(path), "--measure", "--steps", "3", "--json"],
                          env=ENV, capture_output=True, text=True, timeout=1800)  # fmt: skip
    if done.returncode:
        return {"config": path.name, "error": done.stderr.strip().splitlines()[-1:]}
    data = json.loads(done.stdout)
    estimate, measured = data["memory"]["peak_allocated_bytes"], data["measured"]["peak_bytes"]
    return {"config": path.name, "estimate_gib": round(estimate / 2**30, 3), "max_allocated_gib": round(measured / 2**30, 3),
            "error_pct": round(100 * (estimate - measured) / measured, 1),
            "flops_per_token": data["flops"]["per_token"]}  # fmt: skip


def train(path: Path, nproc: int | None) -> dict:
    start = time.time()
    cmd = [sys.executable, "-m", "tunelab", "train", str(path)] + (["--nproc", str(nproc)] if nproc else [])
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        return {"config": path.name, "error": done.stderr.strip().splitlines()[-3:]}
    name = path.stem
    summary = json.loads((path.parent / "runs" / name / "run.json").read_text())["summary"]
    return {"config": name, "tokens_per_second": summary["train_tokens_per_second"],
            "peak_memory_gib": summary["peak_memory_gib"], "wall_s": round(time.time() - start, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    parser.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    one_b = str(build_random_1b(args.out / "llama-1b-random"))
    results = []
    for name, model, method, batch, length in (("smol-lora", "smollm2-135m-instruct", "lora", 16, 512),
                                               ("1b-lora", one_b, "lora", 8, 1024), ("1b-full", one_b, "full", 4, 1024)):
        results.append(plan_measure(config(args.out, name, model, method, batch=batch, length=length)))
        print(json.dumps(results[-1]), flush=True)
    zero3 = "distributed: {strategy: deepspeed, deepspeed: {zero_stage: 3}}\n"
    ds = train(config(args.out, "1b-full-zero3", one_b, "full", batch=4, length=1024, distributed=zero3), nproc=1)
    flops = next((r.get("flops_per_token") for r in results if r.get("config") == "1b-full.yaml"), None)
    if flops and ds.get("tokens_per_second"):
        ds["mfu"] = round(ds["tokens_per_second"] * flops / (args.gpu_tflops * 1e12), 3)
    results.append(ds)
    print(json.dumps(ds), flush=True)
    (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
