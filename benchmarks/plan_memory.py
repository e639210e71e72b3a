"""The planner's peak-memory estimate against a measured peak: SmolLM2-135M-Instruct on this machine.

For each method (LoRA, full, QLoRA) × batch (2, 8) × max_length (64, 256), `tunelab plan CONFIG
--measure --json` runs in its own process, one after another (a process's peak RSS is its own and
nothing else runs beside it): the estimate, then a few real training steps of tunelab's training path
on rows of exactly max_length tokens (the estimate's worst case). On CPU the figure compared is the
growth of the process's resident set over its size just before the model loaded — the estimate's
allocated peak, framework overhead excluded — and the absolute peak RSS beside the estimate with its
overhead; on CUDA it is torch.cuda.max_memory_allocated.

`--malloc` picks the allocator each case runs on. `auto` (the default) is what the `tunelab` command
runs on (src/tunelab/allocator.py: tcmalloc, else jemalloc, else glibc's); `glibc`, `tcmalloc` and
`jemalloc` name one; `fixed` is glibc's with its mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_),
which hands freed tensors back to the system at once, so the RSS follows the live tensors. glibc's
default keeps freed medium-sized tensors in its heap. `tensors` instead reads the live tensor bytes
themselves (`plan --measure --tensors`: torch's profiler), the CPU analogue of CUDA's
max_memory_allocated, whatever the allocator keeps. Several may be given.

    .venv/bin/python benchmarks/plan_memory.py                      # 12 cases, a markdown table at the end
    .venv/bin/python benchmarks/plan_memory.py --methods lora --batches 8 --lengths 256 --malloc glibc tcmalloc
    .venv/bin/python benchmarks/plan_memory.py --json benchmarks/results/plan_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
GIB = 2**30
MALLOC_FIXED = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def write_config(directory: Path, method: str, batch: int, length: int, model: str = MODEL,
                 precision: str = "auto") -> Path:  # fmt: skip
    path = directory / f"{Path(model).name}-{method}-{batch}-{length}-{precision}.yaml"
    path.write_text(
        f"name: plan-memory\noutput_dir: {directory / 'runs'}\nmodel: {model}\nmethod: {method}\n"
        f"data:\n  train: builtin:chatterbot\n  max_length: {length}\n"
        f"training:\n  batch_size: {batch}\n  grad_accum: 1\n  precision: {precision}\n",
        encoding="utf-8",
    )
    return path


def malloc_env(malloc: str) -> dict[str, str]:
    """The environment that runs a case on allocator `malloc`, as the `tunelab` command would preload it."""
    from tunelab import allocator

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "TUNELAB_MALLOC")}
    if malloc == "fixed":
        return {**env, **MALLOC_FIXED, allocator.ENV: "system"}
    name = {"glibc": "system", "tensors": "system"}.get(malloc, malloc)
    library = allocator.preload({allocator.ENV: name})
    return {**env, "LD_PRELOAD": str(library)} if library else {**env, allocator.ENV: "system"}


def run_case(config: Path, steps: int, malloc: str, timeout: int) -> dict:
    env = {**malloc_env(malloc), "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1"}
    cmd = [sys.executable, "-m", "tunelab.cli", "plan", str(config), "--measure", "--steps", str(steps), "--json"]
    if malloc == "tensors":
        cmd.append("--tensors")
    start = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1], "seconds": round(time.time() - start, 1)}
    data = json.loads(res.stdout)
    memory, measured = data["memory"], data["measured"]
    estimate = memory["peak_allocated_bytes"]
    compared = measured["growth_bytes"] if measured["device"] == "cpu" else measured["peak_bytes"]
    if malloc == "tensors" and measured.get("tensor_peak_bytes"):
        # live tensors: the mapped checkpoint pages, the runtime's code and caches and what the allocator
        # keeps of freed blocks are RSS, not tensors
        estimate -= sum(t["bytes"] for t in memory["terms"] if t.get("key") in ("mapped", "runtime", "allocator"))
        compared = measured["tensor_peak_bytes"]
    return {
        "allocator": measured.get("malloc", "glibc"),
        "device": measured["device"],
        "precision": data["workload"]["precision"],
        "estimate_bytes": estimate,
        "estimate_with_overhead_bytes": memory["peak_bytes"],
        "measured_bytes": compared,
        "measured_peak_bytes": measured["peak_bytes"],
        "baseline_bytes": measured["baseline_bytes"],
        "error_pct": round(100 * (estimate - compared) / compared, 1) if compared > 0 else None,
        "peak_phase": memory["peak_phase"],
        "terms": {t["label"]: t["bytes"] for t in memory["terms"]},
        "seconds": round(time.time() - start, 1),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| method | batch | max_length | malloc | precision | estimate (GiB) | measured (GiB) | error | "
        "estimate + overhead (GiB) | peak RSS / allocated (GiB) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['batch']} | {r['length']} | {r['malloc']} | — | — | — | "
                         f"{r['error']} | — | — |")  # fmt: skip
            continue
        lines.append(
            f"| {r['method']} | {r['batch']} | {r['length']} | {r['allocator']} | {r['precision']} | "
            f"{r['estimate_bytes'] / GIB:.3f} | {r['measured_bytes'] / GIB:.3f} | {r['error_pct']:+.1f}% | "
            f"{r['estimate_with_overhead_bytes'] / GIB:.3f} | {r['measured_peak_bytes'] / GIB:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["lora", "full", "qlora"])
    parser.add_argument("--batches", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--lengths", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps each measurement trains")
    parser.add_argument("--malloc", nargs="+", default=["auto"],
                        choices=["auto", "glibc", "tcmalloc", "jemalloc", "fixed", "tensors"],
                        help="RSS growth on the allocator the tunelab command picks, on a named one, on glibc's with "
                        "a fixed 64 KiB mmap threshold; or live tensor bytes (torch's profiler: the CPU analogue of "
                        "CUDA's max allocated)")  # fmt: skip
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="training.precision")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny random Llama the unit tests build (tests/conftest.py) instead of SmolLM2")  # fmt: skip
    args = parser.parse_args()
    mallocs = args.malloc
    results = []
    with tempfile.TemporaryDirectory(prefix="plan-memory-") as tmp:
        model = MODEL
        if args.tiny:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from conftest import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny-llama"))
        for method in args.methods:
            for batch in args.batches:
                for length in args.lengths:
                    config = write_config(Path(tmp), method, batch, length, model, args.precision)
                    for malloc in mallocs:
                        r = {"method": method, "batch": batch, "length": length, "malloc": malloc,
                             **run_case(config, args.steps, malloc, args.timeout)}  # fmt: skip
                        results.append(r)
                        shown = r.get("error") or f"estimate {r['estimate_bytes'] / GIB:.3f} GiB, measured " \
                            f"{r['measured_bytes'] / GIB:.3f} GiB ({r['error_pct']:+.1f}%)"
                        print(f"{method} batch {batch} × {length} ({malloc} malloc): {shown} [{r['seconds']} s]",
                              file=sys.stderr, flush=True)  # fmt: skip
    print(table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
