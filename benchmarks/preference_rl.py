"""The third way to fine-tune, measured: a reward model, preference tuning (DPO, KTO, ORPO, SimPO) and
RL (GRPO and RLOO against a programmatic reward, GRPO against a reward model, and the InstructGPT chain
SFT → reward model → GRPO) on SmolLM2-135M-Instruct with LoRA, on
the built-in arithmetic data (`builtin:arithmetic-preference`, `builtin:arithmetic-prompts`: "What is
A plus B?", the bare sum preferred; the rule is written in tunelab.data.builtin).

Each job is an example config run as a user runs it (`tunelab train CONFIG --overwrite`), one after
the other (one heavy process at a time on a 2-core CPU). Reported per job: wall time, the held-out
figures base → tuned, and the 95% paired bootstrap intervals the runs compute (the learning check on
the headline metric, the gold rule's check, the reward's check).

    .venv/bin/python benchmarks/preference_rl.py                    # everything (~100 min on 2 cores)
    .venv/bin/python benchmarks/preference_rl.py --only dpo grpo
Results: a markdown table on stdout and benchmarks/results/preference_rl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = {  # name: (config, what to read from eval.json's tuned/base metrics; None: the stage's headline)
    "reward": ("examples/reward_arithmetic.yaml", ("pairwise_accuracy", "mean_margin")),
    "dpo": ("examples/dpo.yaml", ("preference_accuracy", "gold_score", "likelihood_accuracy", "kl_to_base")),
    "kto": ("examples/kto.yaml", ("preference_accuracy", "gold_score", "likelihood_accuracy", "kl_to_base")),
    "orpo": ("examples/orpo.yaml", ("preference_accuracy", "gold_score", "likelihood_accuracy", "kl_to_base")),
    "simpo": ("examples/simpo.yaml", ("preference_accuracy", "gold_score", "likelihood_accuracy", "kl_to_base")),
    "grpo": ("examples/grpo_arithmetic.yaml", ("gold_score", "mean_reward", "kl_to_base", "mean_output_tokens")),
    "rloo": ("examples/rloo_arithmetic.yaml", ("gold_score", "mean_reward", "kl_to_base", "mean_output_tokens")),
    "grpo-rm": ("examples/grpo_reward_model.yaml", ("gold_score", "mean_reward", "kl_to_base", "mean_output_tokens")),
    # the InstructGPT chain: each step starts from the SFT run (model.init_from)
    "rlhf-1-sft": ("examples/rlhf/1_sft.yaml", ("exact_match", "token_f1", "rougeL")),
    "rlhf-2-reward": ("examples/rlhf/2_reward.yaml", ("pairwise_accuracy", "mean_margin")),
    "rlhf-3-grpo": ("examples/rlhf/3_grpo.yaml", ("gold_score", "mean_reward", "kl_to_base", "mean_output_tokens")),
}
NEEDS = {"grpo-rm": "reward", "rlhf-2-reward": "rlhf-1-sft", "rlhf-3-grpo": "rlhf-2-reward"}  # runs another job's output


def run(name: str) -> dict:
    config, keys = JOBS[name]
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", config, "--overwrite"], cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)  # fmt: skip
    seconds = time.time() - started
    if proc.returncode != 0:
        return {"job": name, "error": proc.stderr[-2000:], "seconds": round(seconds)}
    ev = json.loads((ROOT / "runs" / _run_name(config) / "eval.json").read_text())
    base, tuned = ev["metrics"].get("base") or {}, ev["metrics"]["tuned"]
    checks = {k: ev.get(k) for k in ("learning_check", "gold_check", "reward_check") if ev.get(k)}
    return {"job": name, "config": config, "seconds": round(seconds), "n_test": ev.get("n_test"),
            "metrics": {k: (base.get(k), tuned.get(k)) for k in keys}, "checks": checks,
            "warnings": ev.get("warnings", []), "reward_hacking": ev.get("reward_hacking", [])}  # fmt: skip


def _run_name(config: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in (ROOT / config).read_text().splitlines() if line.startswith("name:"))


def table(results: list[dict]) -> str:
    lines = ["| job | minutes | held-out (base → tuned) | 95% CI of tuned − base |", "|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['job']} | {r['seconds'] / 60:.1f} | failed | |")
            continue
        figures = ", ".join(f"{k} {_fmt(b)} → {_fmt(t)}" for k, (b, t) in r["metrics"].items() if t is not None)
        cis = "; ".join(f"{c['metric']} [{c['low']:+.1f}, {c['high']:+.1f}]" for c in r["checks"].values())
        lines.append(f"| {r['job']} | {r['seconds'] / 60:.1f} | {figures} | {cis} |")
    return "\n".join(lines)


def _fmt(v: object) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(JOBS), help="run only these jobs (in the table's order)")
    names = parser.parse_args().only or list(JOBS)
    results = []
    for dep, needed in NEEDS.items():
        if dep in names and needed not in names and not (ROOT / "runs" / _run_name(JOBS[needed][0]) / "run.json").is_file():
            names.append(needed)
    for name in [n for n in JOBS if n in names]:
        print(f"== {name}", file=sys.stderr, flush=True)
        results.append(run(name))
        print(json.dumps(results[-1], indent=1)[:1500], file=sys.stderr, flush=True)
    out = ROOT / "benchmarks" / "results" / "preference_rl.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**old, **{r["job"]: r for r in results}}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
