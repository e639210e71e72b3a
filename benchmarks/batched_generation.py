"""Batched vs one-prompt-at-a-time greedy generation for evaluation, on held-out SmolLM2 prompts.

Same model (SmolLM2-135M-Instruct, fp32), same prompts (held-out chatterbot questions in the chat
template, exactly as `tunelab eval` formats them), same decoding (greedy, KV cache, max_new_tokens),
same function (`tunelab.inference.decoding.generate_from_ids`): once with ``batch_size`` rows per
batch (left padding, longest prompts first), once with ``batch_size=1``. The ratio is the sequential
time per prompt × prompts over the batched time for all prompts.

The sequential side can run on an evenly spaced subset (``--sequential N``, spaced over the prompts
sorted by length) and be extrapolated to all prompts — the output says so when it does. The two
sides are interleaved batch by batch (a batch, then its sampled prompts one at a time), so on a
shared machine both see the same background load; wall-clock and process CPU time are reported. Outputs of the prompts both sides generated are
compared (greedy decoding is deterministic; with left padding a few can differ in the last digits of
the logits, which shows up as an agreement below 100%).

    .venv/bin/python benchmarks/batched_generation.py                    # 200 prompts, all sequential
    .venv/bin/python benchmarks/batched_generation.py --sequential 50    # extrapolate the sequential side
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def held_out_prompts(n: int, tokenizer, seed: int = 42) -> list[list[int]]:
    from tunelab.data.splits import load_splits
    from tunelab.data.templates import PromptFormat

    splits = load_splits("builtin:chatterbot", validation_fraction=0.05, test_fraction=0.10, seed=seed)
    pool = splits.test + splits.validation  # held-out rows only, never training rows
    if len(pool) < n:
        sys.exit(f"only {len(pool)} held-out rows, asked for {n}")
    fmt = PromptFormat.build(tokenizer, shape=splits.shape)
    return [fmt.prompt_ids(ex, tokenizer) for ex in pool[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--sequential", type=int, default=None, help="run batch_size=1 on N evenly spaced prompts (default: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (tunelab's default: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the demo run's evaluation setting")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")
    import torch

    from tunelab.inference.decoding import generate_from_ids
    from tunelab.models.loading import load_model, load_tokenizer, resolve_model
    from tunelab.progress import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model("smollm2-135m-instruct").path
    tokenizer = load_tokenizer(path)
    model = load_model(path, "causal_lm")
    model.eval()
    prompts = held_out_prompts(args.prompts, tokenizer)
    # generate_from_ids sorts prompts longest first and cuts batches in that order; do the same here,
    # so that each batch can be timed next to the one-at-a-time runs of some of its own prompts
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    n_seq = min(args.sequential or len(prompts), len(prompts))
    step = len(prompts) / n_seq
    seq_positions = {int(k * step) for k in range(n_seq)}  # evenly spaced over the length order
    load_before = os.getloadavg()

    def timed(items: list[list[int]], batch_size: int) -> tuple[float, float, list]:
        wall, cpu = time.perf_counter(), time.process_time()
        outs = generate_from_ids(model, tokenizer, items, max_new_tokens=args.max_new_tokens, batch_size=batch_size,
                                 show_progress=False)
        return time.perf_counter() - wall, time.process_time() - cpu, outs

    timed(prompts[:2], 2)  # warm-up: first-call allocations and kernel selection are not the comparison
    batched_wall = batched_cpu = seq_wall = seq_cpu = 0.0
    batched: dict[int, object] = {}
    sequential: dict[int, object] = {}
    # interleaved: batch b, then the sampled prompts of batch b one at a time — both sides see the same
    # background load (this machine is shared), instead of one side running in a quiet minute
    for start in range(0, len(order), args.batch_size):
        chunk = order[start : start + args.batch_size]
        w, c, outs = timed([prompts[i] for i in chunk], args.batch_size)
        batched_wall, batched_cpu = batched_wall + w, batched_cpu + c
        batched.update(zip(chunk, outs, strict=True))
        for pos in range(start, start + len(chunk)):
            if pos in seq_positions:
                i = order[pos]
                w, c, outs = timed([prompts[i]], 1)
                seq_wall, seq_cpu = seq_wall + w, seq_cpu + c
                sequential[i] = outs[0]
        print(f"  {start + len(chunk)}/{len(order)} prompts: batched {batched_wall:.1f} s, "
              f"one at a time {seq_wall:.1f} s for {len(sequential)}", file=sys.stderr, flush=True)
    n_run = len(sequential)
    seq_all = seq_wall / n_run * len(prompts)
    seq_all_cpu = seq_cpu / n_run * len(prompts)
    same = sum(batched[i].text == out.text for i, out in sequential.items())
    new_tokens = sum(o.new_tokens for o in batched.values())
    result = {
        "model": "smollm2-135m-instruct (fp32)",
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "batched_seconds": round(batched_wall, 1),
        "batched_cpu_seconds": round(batched_cpu, 1),
        "batched_new_tokens_per_second": round(new_tokens / batched_wall, 1),
        "mean_new_tokens": round(new_tokens / len(prompts), 1),
        "sequential_prompts_run": n_run,
        "sequential_seconds_measured": round(seq_wall, 1),
        "sequential_seconds_per_prompt": round(seq_wall / n_run, 3),
        "sequential_seconds_for_all": round(seq_all, 1),
        "sequential_cpu_seconds_for_all": round(seq_all_cpu, 1),
        "sequential_extrapolated": n_run < len(prompts),
        "speedup": round(seq_all / batched_wall, 2),
        "speedup_cpu_time": round(seq_all_cpu / batched_cpu, 2),
        "identical_outputs": f"{same}/{n_run}",
    }
    print(json.dumps(result, indent=2))
    extra = f" (extrapolated from {n_run} evenly spaced prompts)" if result["sequential_extrapolated"] else ""
    print(
        f"\n{len(prompts)} held-out prompts, max_new_tokens={args.max_new_tokens}: batched (batch {args.batch_size}) "
        f"{batched_wall:.1f} s vs one at a time {seq_all:.1f} s{extra} → {result['speedup']:.2f}× faster "
        f"(CPU time: {result['speedup_cpu_time']:.2f}×); identical outputs {same}/{n_run}; "
        f"load average {result['load_average_before'][0]} → "
        f"{result['load_average_after'][0]} on {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
