"""Evaluation's greedy generation now vs at an earlier revision, alternately in one process.

Workload: `make demo`'s evaluation — SmolLM2-135M-Instruct (fp32), its held-out test rows
(`builtin:chatterbot`, split validation 0.03 / test 0.05, seed 42) in the model's chat template,
greedy, max_new_tokens 48. The earlier side is `src/tunelab/inference/decoding.py` as it was at
``--baseline`` (read with `git show`) with that revision's evaluation batch size (16); the new side is
the working tree's decoder with `evaluation.generation_batch_size`'s default. Both decode the same
prompt ids with the same model object, in alternating order, ``--repeats`` times. Outputs (text and
token count) are compared row by row. ``--lora`` puts a random LoRA (r=16, all linear layers) on the
model, like the tuned side of the demo; ``--run DIR`` uses a finished run's adapter instead.

    .venv/bin/python benchmarks/eval_generation.py --baseline 560c677 [--lora | --run runs/demo] [--json F]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def module_at(revision: str, path: str, name: str):
    """A module's source as it was at `revision`, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:{path}"], check=True, capture_output=True, text=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision of the earlier decoder")
    parser.add_argument("--baseline-batch-size", type=int, default=16, help="the earlier evaluation batch size")
    parser.add_argument("--lora", action="store_true", help="a random all-linear LoRA on the model")
    parser.add_argument("--run", default=None, help="a finished run: its tuned model")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TUNELAB_QUIET", "1")
    import torch

    import tunelab.inference.decoding as new
    from tunelab.config import EvaluationSection
    from tunelab.data.splits import load_splits
    from tunelab.data.templates import PromptFormat
    from tunelab.models.loading import load_model, load_tokenizer, resolve_model
    from tunelab.progress import quiet_libraries

    quiet_libraries()
    old = module_at(args.baseline, "src/tunelab/inference/decoding.py", "decoding_at_baseline")
    new_batch = EvaluationSection().generation_batch_size
    if args.run:
        from tunelab.runs.loading import load_run

        loaded = load_run(args.run)
        model, tok = loaded.model, loaded.tokenizer
        label = f"tuned model of {args.run}"
    else:
        path = resolve_model("smollm2-135m-instruct").path
        tok, model = load_tokenizer(path), load_model(path, "causal_lm")
        label = "smollm2-135m-instruct (fp32)"
        if args.lora:
            from peft import LoraConfig, get_peft_model

            torch.manual_seed(0)
            lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
            model = get_peft_model(model, lora)
            label += " + random LoRA r=16 all-linear"
    model.eval()
    splits = load_splits("builtin:chatterbot", validation_fraction=0.03, test_fraction=0.05, seed=42)
    fmt = PromptFormat.build(tok, shape=splits.shape)
    prompts = [fmt.prompt_ids(ex, tok) for ex in splits.test]
    new.generate_from_ids(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, show_progress=False)  # warm-up
    sides = {"baseline": (old, args.baseline_batch_size), "new": (new, new_batch)}
    seconds: dict[str, list[float]] = {"baseline": [], "new": []}
    outputs: dict[str, list] = {}
    for rep in range(args.repeats):
        for name in ("baseline", "new") if rep % 2 == 0 else ("new", "baseline"):
            module, batch = sides[name]
            started = time.perf_counter()
            outs = module.generate_from_ids(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=batch,
                                            show_progress=False)  # fmt: skip
            seconds[name].append(time.perf_counter() - started)
            outputs.setdefault(name, [(o.text, o.new_tokens) for o in outs])
            print(f"  {name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
    same = sum(a == b for a, b in zip(outputs["baseline"], outputs["new"], strict=True))
    ratios = [b / n for b, n in zip(seconds["baseline"], seconds["new"], strict=True)]
    result = {
        "model": label,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "baseline": {"revision": args.baseline, "batch_size": args.baseline_batch_size, "seconds": seconds["baseline"]},
        "new": {"batch_size": new_batch, "seconds": seconds["new"]},
        "new_tokens": sum(t for _, t in outputs["new"]),
        "speedup": {"min": min(ratios), "median": statistics.median(ratios)},
        "identical_outputs": f"{same}/{len(prompts)}",
    }
    print(json.dumps(result, indent=2))
    print(f"\n{label}, {len(prompts)} held-out prompts: baseline {statistics.median(seconds['baseline']):.1f} s, "
          f"new {statistics.median(seconds['new']):.1f} s → {result['speedup']['median']:.2f}× "
          f"(min {result['speedup']['min']:.2f}×); identical outputs {same}/{len(prompts)}", file=sys.stderr)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
