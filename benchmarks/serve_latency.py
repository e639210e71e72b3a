"""`tunelab serve` latency and throughput on SmolLM2-135M-Instruct, at 1 and 16 concurrent clients.

The server runs in its own process on 127.0.0.1 (a random free port) exactly as `tunelab serve`
runs it; clients are threads using the official `openai` client, each streaming greedy chat
answers of at most `max_tokens` tokens (an answer may stop earlier at EOS: tokens/s counts the
tokens that came back). Request counts and timeouts are bounded; the run stops by itself.

    .venv/bin/python benchmarks/serve_latency.py                   # trains a 3-step LoRA run first
    .venv/bin/python benchmarks/serve_latency.py --run runs/demo   # an existing SmolLM2 run

Reports per concurrency level: requests, p50/p95 latency (s), time to first token (streaming,
p50), requests/s and completion tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTIONS = [
    "What is AI?", "Who are you?", "What is your favourite colour?", "Tell me a joke.", "What is the capital of France?",
    "Do you like music?", "What is a computer?", "Can you cook?", "What is love?", "Where do you live?",
    "What is the meaning of life?", "Do you dream?", "What is your name?", "How old are you?", "What is money?",
    "Do you like sports?", "What is the weather like?", "Are you a robot?", "What do you eat?", "Can you sing?",
]


def make_run(directory: Path) -> Path:
    import tunelab

    cfg = {
        "name": "serve-bench",
        "output_dir": str(directory),
        "model": "smollm2-135m-instruct",
        "method": "lora",
        "data": {"train": "builtin:chatterbot", "limit": 32},
        "training": {"max_steps": 3},
        "evaluation": {"enabled": False},
    }
    return tunelab.train(cfg, overwrite=True).run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, max_batch: int, threads: int | None, **options: object) -> subprocess.Popen:
    """`tunelab serve RUN` in its own process on 127.0.0.1:PORT (OPTIONS: more of serve's keywords)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1"}
    more = "".join(f"{k}={v!r}, " for k, v in options.items())
    code = (
        "import sys; from tunelab.serve.app import serve; "
        f"serve({str(run)!r}, host='127.0.0.1', port={port}, max_batch={max_batch}, threads={threads!r}, {more}"
        "log=lambda s: None)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start within 300 s")


def one_request(client, i: int, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - started, "ttft": first, "tokens": tokens}


def level(base_url: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    one_request(client, 0, 4)  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one_request(client, i, max_tokens), range(requests)))
    wall = time.perf_counter() - started
    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "p50_s": round(statistics.median(lat), 3),
        "p95_s": round(lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 3),
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "requests_per_s": round(requests / wall, 3),
        "completion_tokens_per_s": round(tokens / wall, 1),
        "mean_completion_tokens": round(tokens / requests, 1),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished SmolLM2 run (default: train a 3-step LoRA run)")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion length per request")
    parser.add_argument("--requests-1", type=int, default=8, help="requests at concurrency 1")
    parser.add_argument("--requests-16", type=int, default=32, help="requests at concurrency 16")
    parser.add_argument("--max-batch", type=int, default=8, help="server --max-batch")
    parser.add_argument("--threads", type=int, help="server --threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")

    tmp = None
    run = args.run
    if run is None:
        tmp = tempfile.TemporaryDirectory(prefix="serve-bench-")
        print("training a 3-step SmolLM2 LoRA run …", flush=True)
        run = make_run(Path(tmp.name))
    port = free_port()
    server = start_server(run, port, args.max_batch, args.threads)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        rows = [level(base, 1, args.requests_1, args.max_tokens), level(base, 16, args.requests_16, args.max_tokens)]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if tmp is not None:
            tmp.cleanup()
    print(f"\nSmolLM2-135M-Instruct LoRA run, greedy, max_tokens={args.max_tokens}, server --max-batch {args.max_batch}, "
          f"--threads {args.threads or 'default'}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    header = ["concurrency", "requests", "p50_s", "p95_s", "ttft_p50_s", "requests_per_s", "completion_tokens_per_s",
              "mean_completion_tokens"]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(r[h]) for h in header))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
