"""`tunelab serve` under load: 32 concurrent clients for 60 s, streaming and not, with poison requests.

The server runs in its own process on 127.0.0.1 (a random free port) exactly as `tunelab serve` runs
it (`serve_latency.start_server`). Each client is a thread that sends requests back to back until the
time is up: short chat answers, story completions of 48 tokens and, one in ten, a long story (up to
the server's --max-tokens-cap), half of them streamed, greedy or seeded sampling. Every 8th request
is a poison request (a seed the sampler cannot take, a tiny temperature, max_tokens over the cap, a
wrong Content-Type, malformed JSON, NaN, n=2) that must get its own 4xx naming the field.

    .venv/bin/python benchmarks/serve_load.py                          # trains a 3-step SmolLM2 LoRA run first
    .venv/bin/python benchmarks/serve_load.py --run runs/demo --seconds 60

Reports requests; errors among the good requests (any non-200 or malformed answer: must be 0);
poison requests answered with the right status and field; p50/p99 latency of streamed and
non-streamed answers (and time to first token); completion tokens/s. Writes the JSON to
benchmarks/results/serve_load.json (or --json). Exit status 1 if a good request failed or a poison
request was not refused as expected.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_latency import QUESTIONS, free_port, make_run, start_server  # noqa: E402


def poison_requests(cap: int) -> list[dict]:
    """(name, path, raw body, content type, expected status, param, code) of each poison kind."""
    chat = [{"role": "user", "content": "What is AI?"}]

    def kind(name, path, body, status, param=None, code=None, content_type="application/json"):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return {"name": name, "path": path, "raw": raw, "content_type": content_type, "status": status,
                "param": param, "code": code}

    return [
        kind("seed >= 2**64", "/v1/chat/completions", {"messages": chat, "temperature": 1, "seed": 2**64}, 400,
             "seed"),
        kind("temperature 1e-45", "/v1/chat/completions", {"messages": chat, "temperature": 1e-45, "stream": True},
             400, "temperature"),
        kind("max_tokens over the cap", "/v1/completions", {"prompt": "AI is", "max_tokens": cap + 1}, 400,
             "max_tokens", "invalid_value"),
        kind("text/plain", "/v1/chat/completions", {"messages": chat}, 415, None, "unsupported_media_type",
             content_type="text/plain"),
        kind("form-urlencoded", "/v1/completions", {"prompt": "AI is"}, 415, None, "unsupported_media_type",
             content_type="application/x-www-form-urlencoded"),
        kind("malformed JSON", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": ', 400, None,
             "invalid_json"),
        kind("NaN temperature", "/v1/completions", b'{"prompt": "AI is", "temperature": NaN}', 400, None,
             "invalid_json"),
        kind("n=2", "/v1/chat/completions", {"messages": chat, "n": 2}, 400, "n"),
    ]


STORIES = [  # completions the chat-tuned model continues at length (raw questions mostly end at once)
    "Once upon a time, in a small village,", "Here is a list of ten fruits:\n1.", "The history of computers began",
    "The best way to learn to cook is", "Our trip to the mountains started when",
]


def good_request(n: int, cap: int) -> dict:
    """Short chat answers, story completions of 48 tokens, and one in ten a long story (up to the cap)."""
    long = n % 10 == 4
    chat = not long and n % 4 != 3
    stream = n % 2 == 1
    body: dict = {"model": "any", "max_tokens": cap if long else 48 if not chat else (16, 32, 24)[n % 3],
                  "temperature": 0, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}]
    else:
        body["prompt"] = STORIES[n % len(STORIES)]
    if n % 5 == 2:
        body |= {"temperature": 0.8, "top_p": 0.95, "seed": n}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return {"path": "/v1/chat/completions" if chat else "/v1/completions", "body": body, "long": long}


def check_answer(path: str, body: dict, status: int, content_type: str, payload: bytes) -> int:
    """Completion tokens of a well-formed 200 answer; raises AssertionError on anything else."""
    assert status == 200, f"HTTP {status}: {payload[:300]!r}"
    chat = path.endswith("chat/completions")
    if not body["stream"]:
        data = json.loads(payload)
        (choice,) = data["choices"]
        assert isinstance(choice["message"]["content"] if chat else choice["text"], str)
        assert choice["finish_reason"] in ("stop", "length")
        usage = data["usage"]
    else:
        assert content_type.startswith("text/event-stream"), content_type
        events = [line[len("data: "):] for line in payload.decode().split("\n\n") if line]
        assert events and events[-1] == "[DONE]", events[-3:]
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks), chunks
        reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert reasons and all(r is None for r in reasons[:-1]) and reasons[-1] in ("stop", "length"), events[-3:]
        usage = chunks[-1]["usage"]
    assert 0 <= usage["completion_tokens"] <= body["max_tokens"], usage
    return usage["completion_tokens"]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {"streaming": [], "non_streaming": [], "long": [], "short_chat": []}
        self.ttft: list[float] = []
        self.good = self.good_errors = self.poison = self.poison_ok = self.tokens = 0
        self.failures: list[str] = []
        self.poison_by_kind: dict[str, list[int]] = {}


def client(base: str, index: int, deadline: float, cap: int, tally: Tally) -> None:
    import httpx

    poisons = poison_requests(cap)
    n = -1
    with httpx.Client(base_url=base, timeout=600) as http:
        while time.perf_counter() < deadline:
            n += 1
            if (n + index) % 8 == 0:  # a poison request (the clients take turns, from the first request on)
                p = poisons[(index + n) // 8 % len(poisons)]
                r = http.post(p["path"], content=p["raw"], headers={"Content-Type": p["content_type"]})
                try:
                    error = r.json()["error"]
                    ok = (r.status_code == p["status"] and set(error) == {"message", "type", "param", "code"}
                          and error["param"] == p["param"] and (p["code"] is None or error["code"] == p["code"]))
                except (ValueError, KeyError, TypeError):
                    ok = False
                with tally.lock:
                    tally.poison += 1
                    tally.poison_ok += ok
                    tally.poison_by_kind.setdefault(p["name"], [0, 0])[ok] += 1
                    if not ok:
                        tally.failures.append(f"poison {p['name']}: HTTP {r.status_code} {r.text[:300]}")
                continue
            g = good_request(index * 100003 + n, cap)
            started = time.perf_counter()
            first = None
            try:
                with http.stream("POST", g["path"], json=g["body"]) as r:
                    if g["body"]["stream"] and r.status_code == 200:
                        lines = []
                        for line in r.iter_lines():
                            if line:
                                lines.append(line)
                            if first is None and line.startswith("data: {"):
                                choices = json.loads(line[len("data: "):]).get("choices") or [{}]
                                if choices[0].get("delta", {}).get("content") or choices[0].get("text"):
                                    first = time.perf_counter() - started
                        payload = "\n\n".join(lines).encode()
                    else:
                        payload = r.read()
                    tokens = check_answer(g["path"], g["body"], r.status_code, r.headers.get("content-type", ""),
                                          payload)
                failed = None
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failed, tokens = f"{type(exc).__name__}: {exc}"[:300], 0
                if not isinstance(exc, AssertionError):
                    failed += " " + traceback.format_exc(limit=1).strip().splitlines()[-1]
            elapsed = time.perf_counter() - started
            with tally.lock:
                tally.good += 1
                if failed:
                    tally.good_errors += 1
                    tally.failures.append(f"good {g['path']} {json.dumps(g['body'])[:200]}: {failed}")
                else:
                    tally.tokens += tokens
                    tally.latency["streaming" if g["body"]["stream"] else "non_streaming"].append(elapsed)
                    if g["long"] or g["path"] == "/v1/chat/completions":
                        tally.latency["long" if g["long"] else "short_chat"].append(elapsed)
                    if g["body"]["stream"] and first is not None:
                        tally.ttft.append(first)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished run (default: train a 3-step SmolLM2 LoRA run)")
    parser.add_argument("--seconds", type=float, default=60, help="how long the clients send requests")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--max-batch", type=int, default=8, help="server --max-batch")
    parser.add_argument("--max-tokens-cap", type=int, default=128, help="server --max-tokens-cap (the long answers)")
    parser.add_argument("--threads", type=int, help="server --threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "serve_load.json",
                        help="where to write the results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")

    tmp = None
    run = args.run
    if run is None:
        tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
        print("training a 3-step SmolLM2 LoRA run …", flush=True)
        run = make_run(Path(tmp.name))
    port = free_port()
    server = start_server(run, port, args.max_batch, args.threads, max_tokens_cap=args.max_tokens_cap)
    tally = Tally()
    try:
        base = f"http://127.0.0.1:{port}"
        check_answer("/v1/completions", {"stream": False, "max_tokens": 4}, *_warm_up(base))
        started = time.perf_counter()
        deadline = started + args.seconds
        with ThreadPoolExecutor(args.clients) as pool:
            for f in [pool.submit(client, base, i, deadline, args.max_tokens_cap, tally) for i in range(args.clients)]:
                f.result()
        wall = time.perf_counter() - started
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if tmp is not None:
            tmp.cleanup()

    def latency(name: str) -> dict:
        values = tally.latency[name]
        return {"requests": len(values), "p50_s": percentile(values, 0.5), "p99_s": percentile(values, 0.99),
                "mean_s": round(statistics.fmean(values), 3) if values else None}

    result = {
        "run": str(run) if args.run else "3-step SmolLM2-135M-Instruct LoRA run",
        "seconds": args.seconds, "clients": args.clients, "max_batch": args.max_batch,
        "max_tokens_cap": args.max_tokens_cap, "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1), "wall_s": round(wall, 1),
        "requests": tally.good + tally.poison,
        "good_requests": tally.good, "good_errors": tally.good_errors,
        "poison_requests": tally.poison, "poison_refused_correctly": tally.poison_ok,
        "poison_by_kind": {k: {"correct": v[1], "wrong": v[0]} for k, v in sorted(tally.poison_by_kind.items())},
        "streaming": {**latency("streaming"), "ttft_p50_s": percentile(tally.ttft, 0.5),
                      "ttft_p99_s": percentile(tally.ttft, 0.99)},
        "non_streaming": latency("non_streaming"),
        "short_chat_answers": latency("short_chat"),  # at most 32 tokens: fairness keeps these quick
        "long_answers": latency("long"),  # up to --max-tokens-cap tokens
        "completion_tokens_per_s": round(tally.tokens / wall, 1),
        "server_alive_at_end": alive,
        "failures": tally.failures[:20],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['run']}: {args.clients} clients for {args.seconds:g} s, server --max-batch {args.max_batch} "
          f"--max-tokens-cap {args.max_tokens_cap}, {os.cpu_count()} CPU cores, load average {result['load_average']}")
    print(f"requests {result['requests']}: good {tally.good} (errors {tally.good_errors}), poison {tally.poison} "
          f"(refused correctly {tally.poison_ok}); {result['completion_tokens_per_s']} completion tokens/s")
    for name in ("streaming", "non_streaming", "short_chat_answers", "long_answers"):
        r = result[name]
        extra = f", ttft p50 {r['ttft_p50_s']} s p99 {r['ttft_p99_s']} s" if name == "streaming" else ""
        print(f"{name}: {r['requests']} answers, p50 {r['p50_s']} s, p99 {r['p99_s']} s{extra}")
    for line in tally.failures[:20]:
        print("  failed:", line)
    print(f"wrote {args.json}")
    if tally.good_errors or tally.poison_ok != tally.poison or not alive:
        sys.exit(1)


def _warm_up(base: str) -> tuple[int, str, bytes]:
    import httpx

    r = httpx.post(base + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=600)
    return r.status_code, r.headers.get("content-type", ""), r.content


if __name__ == "__main__":
    main()
