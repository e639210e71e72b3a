"""DDP scaling on this machine: training tokens/s of one process against two (torchrun, gloo).

The same job each time — LoRA (r 16, all linear layers) on SmolLM2-135M-Instruct, the built-in
chatterbot rows, max_length 256, 8 rows per optimizer step, no evaluation, no checkpoints — run as
`tunelab train` in its own process(es), one case after another:

  * 1 process × 1 thread   (one core's worth: the per-core reference)
  * 1 process × 2 threads  (the usual single-process run on a 2-core machine)
  * 2 processes × 1 thread (DDP: 4 rows each per step, gradients all-reduced over gloo)

Throughput is the run's own figure: non-padding training tokens of every process over rank 0's
training seconds. On 2 cores, two processes compete with the intra-op threads of one process for
the same cores, so this measures whether data parallelism beats thread parallelism here, not how
DDP scales on GPUs (where each process has its own device).

    .venv/bin/python benchmarks/ddp_scaling.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = (("1 process × 1 thread", 1, 1), ("1 process × 2 threads", 1, 2), ("2 processes × 1 thread", 2, 1))


def write_config(directory: Path, name: str, *, steps: int, batch: int, threads: int) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(
        f"name: {name}\noutput_dir: {directory / 'runs'}\nmodel: smollm2-135m-instruct\nmethod: lora\n"
        "lora: {r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}\n"
        "data: {train: builtin:chatterbot, max_length: 256, split: {validation: 0.03, test: 0.05, seed: 42}}\n"
        f"training: {{max_steps: {steps}, batch_size: {batch}, lr: 5.0e-4, threads: {threads}, eval_steps: null, "
        "save_steps: null, logging_steps: 5}\nevaluation: {enabled: false}\n",
        encoding="utf-8",
    )
    return path


def run_case(directory: Path, label: str, nproc: int, threads: int, steps: int) -> dict:
    name = f"p{nproc}t{threads}"
    config = write_config(directory, name, steps=steps, batch=8 // nproc, threads=threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "tunelab", "train", str(config)] + (["--nproc", str(nproc)] if nproc > 1 else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"case": label, "error": done.stderr.strip().splitlines()[-1:]}
    summary = json.loads((directory / "runs" / name / "run.json").read_text())["summary"]
    return {"case": label, "processes": nproc, "threads_each": threads,
            "tokens_per_second": summary["train_tokens_per_second"], "train_seconds": summary["train_seconds"],
            "peak_memory_gib_rank0": summary["peak_memory_gib"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, nproc, threads in CASES:
            results.append(run_case(Path(tmp), label, nproc, threads, args.steps))
            print(json.dumps(results[-1]), flush=True)
    base = next((r["tokens_per_second"] for r in results if r.get("processes") == 1 and r["threads_each"] == 2), None)
    print("\n| case | tokens/s | × 1 process, 2 threads | train s | peak RSS rank 0 (GiB) |\n|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['case']} | failed: {r['error']} | | | |")
            continue
        ratio = f"{r['tokens_per_second'] / base:.2f}" if base else "—"
        print(f"| {r['case']} | {r['tokens_per_second']} | {ratio} | {r['train_seconds']} | {r['peak_memory_gib_rank0']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
