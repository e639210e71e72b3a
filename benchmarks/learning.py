"""Does every method learn? Every method × task on the real built-in models, each with the method's
own defaults (learning rate and family settings: only `method:` changes between runs), judged
against a stated bar per method; also wall time and peak memory.

Tasks (each a small, learnable job):
- sft: SmolLM2-135M-Instruct, `builtin:chatterbot-topics` (question → "That is a question about
  TOPIC.", six topics), a `### Question/### Answer` template, 30 steps × 8 rows (≈ 3.5 epochs) →
  exact match on the 26 held-out questions;
- classify: MiniLM-L6, Rotten Tomatoes, 100 steps × 32 → accuracy on 400 held-out reviews (an
  untrained head ≈ 50%);
- pretrain: SmolLM2, Shakespeare, 30 steps × 4 blocks of 128 tokens → held-out perplexity.

"Learned" means the run's own learning check passed (tuned better than base, the 95% paired
bootstrap interval of the difference excluding zero) and the method's bar below was reached.

    .venv/bin/python benchmarks/learning.py                   # everything (~35 min on a 2-core CPU)
    .venv/bin/python benchmarks/learning.py --only sft-ia3 sft-lora --set training.lr=1e-2
Results: a table on stdout (markdown, for the README) and benchmarks/results/learning.json.
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

METHODS = ["full", "freeze", "lora", "dora", "qlora", "ia3", "prompt", "ptuning", "prefix"]
TASKS = {
    "sft": {
        "model": "smollm2-135m-instruct",
        "data": {"train": "builtin:chatterbot-topics", "template": "### Question:\n{question}\n### Answer:\n{answer}",
                 "max_length": 128, "split": {"validation": 0.1, "test": 0.25, "seed": 7}},
        "training": {"max_steps": 30, "batch_size": 8, "logging_steps": 2, "save_steps": None},
        "evaluation": {"max_new_tokens": 16, "batch_size": 16},
    },
    "classify": {
        "model": "minilm-l6",
        "data": {"train": "builtin:rotten-tomatoes", "max_length": 64, "split": {"validation": 0.02, "test": 0.05}},
        "training": {"max_steps": 100, "batch_size": 32, "logging_steps": 10, "eval_steps": 50, "save_steps": None},
        "evaluation": {"batch_size": 64, "max_examples": 400},
    },
    "pretrain": {
        "model": "smollm2-135m-instruct",
        "data": {"train": "builtin:shakespeare", "max_length": 128, "split": {"validation": 0.01, "test": 0.1}},
        # no validation passes: the held-out test blocks judge it (the validation split has ~390 blocks)
        "training": {"max_steps": 30, "batch_size": 4, "logging_steps": 2, "eval_steps": None, "save_steps": None},
        "evaluation": {"max_examples": 48, "batch_size": 8},
    },
}
# metric, and the bar per method family: what "it learned" means for it on this job
BARS = {
    "sft": ("exact_match", {"full": 80, "freeze": 80, "lora": 80, "dora": 80, "qlora": 80, "ia3": 50,
                            "prompt": 50, "ptuning": 50, "prefix": 50}),
    "classify": ("accuracy", {"full": 75, "freeze": 70, "lora": 70, "dora": 70, "qlora": 70, "ia3": 60,
                              "prompt": 60, "ptuning": 60, "prefix": 60}),
    # perplexity: the bar is a share of the base's (lower is better)
    "pretrain": ("perplexity", {"full": 0.8, "freeze": 0.9, "lora": 0.8, "dora": 0.8, "qlora": 0.8, "ia3": 0.95,
                                "prompt": 0.97, "ptuning": 0.97, "prefix": 0.97}),
}


def config(task: str, method: str, overrides: list[str]) -> dict:
    from tunelab.yaml_files import merge_dicts, parse_overrides

    cfg = {"task": task, "method": method, **json.loads(json.dumps(TASKS[task]))}
    return merge_dicts(cfg, parse_overrides(overrides))


def run_one(task: str, method: str, overrides: list[str]) -> dict:
    import tunelab

    cfg = {**config(task, method, overrides), "name": f"{task}-{method}",
           "output_dir": tempfile.mkdtemp(prefix="tunelab-learning-")}  # fmt: skip
    started = time.time()
    run = tunelab.train(cfg)
    r = run.results
    metric, bars = BARS[task]
    base, tuned = (r["metrics"]["base"] or {}).get(metric), (r["metrics"]["tuned"] or {}).get(metric)
    bar = bars[method] * base if task == "pretrain" else bars[method]
    reached = tuned <= bar if task == "pretrain" else tuned >= bar
    return {
        "task": task, "method": method, "metric": metric, "base": base, "tuned": tuned, "bar": bar,
        "learned": bool(reached and not r["warnings"]), "warnings": r["warnings"],
        "lr": run.config.training.lr, "train_loss": r["training"]["train_loss"],
        "wall_s": round(time.time() - started, 1),
        "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "trainable": r["trainable"],
    }  # fmt: skip


def row(r: dict) -> str:
    if "error" in r:
        return f"| `{r['task']}` | `{r['method']}` | failed | | | | |"
    pct = r["task"] == "pretrain"
    bar = f"≤ {r['bar']:.1f}" if pct else f"≥ {r['bar']:g}"
    minutes, seconds = divmod(round(r["wall_s"]), 60)
    return (f"| `{r['task']}` | `{r['method']}` | {r['lr']:g} | {r['base']:.1f} → **{r['tuned']:.1f}** | {bar} | "
            f"{'yes' if r['learned'] else '**no**'} | {minutes}m{seconds:02d}s · {r['peak_gib']:.1f} GiB |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="TASK-METHOD names, e.g. sft-lora classify-ia3")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override KEY=VALUE")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "learning.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")
    if args.child:
        from tunelab.progress import quiet_libraries

        quiet_libraries()
        task, method = args.child.split("-", 1)
        print(json.dumps(run_one(task, method, args.overrides)))
        return
    names = args.only or [f"{t}-{m}" for t in TASKS for m in METHODS]
    results = []
    print("| task | method | lr (default) | base → tuned | bar | learned | wall · peak memory |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, *(f"--set={o}" for o in args.overrides)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        task, method = name.split("-", 1)
        if proc.returncode != 0:
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            results.append({"task": task, "method": method, "error": proc.stderr[-500:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(row(results[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
