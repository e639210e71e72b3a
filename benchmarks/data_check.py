"""`tunelab data check` on a 100,000-row JSONL: wall time of the real command, end to end (a fresh process:
imports, reading, every row check, duplicates and, with a model, token lengths of every row).

The file is built from chatterbot question/answer pairs, each made unique with a row number, with a few
bad rows sprinkled in (invalid JSON, a missing answer, a list answer, an exact duplicate) so the doctor's
error paths are part of the timing. Target: ≤ 30 s on a 2-core CPU.

    .venv/bin/python benchmarks/data_check.py                       # rows only, then + SmolLM2 tokenizer
    .venv/bin/python benchmarks/data_check.py --rows 20000 --no-model
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


def build(path: Path, n: int) -> int:
    """Write n rows; returns how many of them are bad on purpose."""
    from tunelab.data.builtin import load_builtin

    pairs = [(r.data["question"], r.data["answer"]) for r in load_builtin("chatterbot")]
    bad = 0
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            q, a = pairs[i % len(pairs)]
            if i % 10_000 == 1234:
                f.write('{"question": "broken", "answer": }\n')
            elif i % 10_000 == 2345:
                f.write(json.dumps({"question": f"{q} #{i}"}) + "\n")
            elif i % 10_000 == 3456:
                f.write(json.dumps({"question": f"{q} #{i}", "answer": [a]}) + "\n")
            elif i % 10_000 == 4567:
                f.write(json.dumps({"question": f"{pairs[0][0]} #0", "answer": pairs[0][1]}) + "\n")
            else:
                f.write(json.dumps({"question": f"{q} #{i}", "answer": a, "topic": "bench"}) + "\n")
                continue
            bad += 1
    return bad


def run(args: list[str]) -> tuple[float, dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "check", *args, "--format", "json"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 2):
        sys.exit(f"tunelab data check failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer for the length checks")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-model", action="store_true", help="only the row checks (no tokenizer)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        bad = build(path, args.rows)
        size = path.stat().st_size / 1e6
        print(f"{args.rows:,} rows ({size:.1f} MB), {bad} bad on purpose; load average {os.getloadavg()[0]:.2f}")
        runs = [("rows only", [str(path)])]
        if not args.no_model:
            runs.append((f"+ {args.model} token lengths",
                         [str(path), "--model", args.model, "--max-length", str(args.max_length)]))  # fmt: skip
        for label, cli_args in runs:
            elapsed, report = run(cli_args)
            lengths = report.get("lengths") or {}
            extra = f", p99 {lengths['p99']} tokens" if lengths.get("rows") else ""
            print(f"{label:<40} {elapsed:6.1f} s  ({report['errors']} errors, {report['warnings']} warnings{extra})")


if __name__ == "__main__":
    main()
