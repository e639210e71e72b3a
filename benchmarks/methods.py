"""Real-model results for every training method: quality, wall time, peak memory.

Runs (each in its own process, so peak memory is the run's own):
- classify: LoRA on minilm-l6, Rotten Tomatoes → held-out accuracy (untrained head ≈ 50%);
- pretrain: LoRA on SmolLM2, Shakespeare → held-out perplexity, base vs tuned;
- sft: lora, dora, qlora, ia3, prompt, ptuning on SmolLM2 + chatterbot → held-out ROUGE-L, with the
  base model's; QLoRA vs LoRA base-weight memory.

    .venv/bin/python benchmarks/methods.py                 # everything (~25 min on a quiet 2-core CPU)
    .venv/bin/python benchmarks/methods.py --only sft-lora sft-qlora --steps 40
Results: a table on stdout and benchmarks/results/methods.json.
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
from pathlib import Path

SFT_METHODS = ["lora", "dora", "qlora", "ia3", "prompt", "ptuning"]
SFT_LR = {"lora": 5e-4, "dora": 5e-4, "qlora": 5e-4, "ia3": 5e-3, "prompt": 3e-2, "ptuning": 3e-3}


def configs(steps: int) -> dict[str, dict]:
    out: dict[str, dict] = {
        "classify-minilm-lora": {
            "model": "minilm-l6", "task": "classify", "method": "lora",
            "lora": {"r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"]},
            "data": {"train": "builtin:rotten-tomatoes", "max_length": 96, "split": {"validation": 0.0, "test": 0.05}},
            "training": {"max_steps": 150, "batch_size": 32, "lr": 1e-3, "eval_steps": None, "save_steps": None},
            "evaluation": {"batch_size": 64},
        },
        "pretrain-smollm2-lora": {
            "model": "smollm2-135m-instruct", "task": "pretrain", "method": "lora",
            "data": {"train": "builtin:shakespeare", "max_length": 128, "split": {"validation": 0.0, "test": 0.1}},
            "training": {"max_steps": steps, "batch_size": 4, "lr": 5e-4, "eval_steps": None, "save_steps": None},
            "evaluation": {"max_examples": 32, "batch_size": 8},
        },
    }
    for method in SFT_METHODS:
        out[f"sft-{method}"] = {
            "model": "smollm2-135m-instruct", "task": "sft", "method": method,
            "data": {"train": "builtin:chatterbot", "max_length": 256, "split": {"validation": 0.0, "test": 0.05}},
            "training": {"max_steps": steps, "batch_size": 8, "lr": SFT_LR[method], "warmup_ratio": 0.1,
                         "eval_steps": None, "save_steps": None},
            # the base model's scores are the same for every method (same rows): measured once, with lora
            "evaluation": {"max_new_tokens": 32, "batch_size": 16, "max_examples": 48, "compare_base": method == "lora"},
        }
    return out


def run_one(name: str, cfg: dict) -> dict:
    import tunelab

    cfg = {**cfg, "name": name, "output_dir": tempfile.mkdtemp(prefix="tunelab-bench-")}
    started = time.time()
    result = tunelab.train(cfg)
    r = result.results
    return {
        "name": name,
        "wall_s": round(time.time() - started, 1),
        "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "metrics": r["metrics"],
        "trainable": r["trainable"],
        "train_tokens_per_second": r["training"]["train_tokens_per_second"],
        "weight_memory": r.get("weight_memory"),
        "steps": r["training"]["global_step"],
    }


def headline(result: dict) -> str:
    base, tuned = result["metrics"]["base"] or {}, result["metrics"]["tuned"] or {}
    for key in ("accuracy", "rougeL", "perplexity"):  # sft rows also carry reference perplexity
        if key in tuned:
            return f"{key} base {base.get(key, float('nan')):.2f} → tuned {tuned[key]:.2f}"
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps for the SmolLM2 runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")
    all_configs = configs(args.steps)
    if args.child:
        from tunelab.progress import quiet_libraries

        quiet_libraries()
        print(json.dumps(run_one(args.child, all_configs[args.child])))
        return
    names = args.only or list(all_configs)
    results = []
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            results.append({"name": name, "error": proc.stderr[-500:]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name:24s} {headline(r):44s} {r['wall_s']:7.1f} s {r['peak_gib']:5.2f} GiB  {r['trainable']}", flush=True)
    by_name = {r["name"]: r for r in results if "error" not in r}
    if "sft-lora" in by_name and "sft-qlora" in by_name:
        lo, q = by_name["sft-lora"]["weight_memory"], by_name["sft-qlora"]["weight_memory"]
        print(f"base weights in memory: lora {lo['weights_bytes']:,d} B · qlora {q['weights_bytes']:,d} B "
              f"({100 * (1 - q['weights_bytes'] / lo['weights_bytes']):.0f}% less)")
    out = Path(__file__).parent / "results" / "methods.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
