"""Judging a tuned policy on held-out prompts, the same way for preference tuning and RL: its greedy
answers, the stage's gold rule on them (a `tunelab.rewards` rule, never trained on), and the KL to the
base over those answers (with an adapter the base is the same model with the adapter switched off)."""

from __future__ import annotations

from typing import Any

from tunelab.data.templates import IGNORE_INDEX, PromptFormat
from tunelab.inference.prompts import display_input
from tunelab.stages import common
from tunelab.stages.base import Context

# the fields of a row that are its prompt and responses; the others go to the gold rule
_ROW_TEXT = ("prompt", "chosen", "rejected", "completion", "label")


def answers(model: Any, ctx: Context, fmt: PromptFormat, examples: list, label: str) -> dict[str, Any]:
    """Greedy answers to the held-out prompts, with their token ids (for the KL)."""
    from tunelab.inference.decoding import SamplingOptions, Sequence, decode

    ev = ctx.cfg.evaluation
    prompts = [fmt.prompt_ids(ex, ctx.tokenizer) for ex in examples]
    rows = [Sequence(list(p), SamplingOptions(max_new_tokens=ev.max_new_tokens)) for p in prompts]
    decode(model, ctx.tokenizer, rows, batch_size=ev.generation_batch_size, description=f"answer {label}", show_progress=True)
    return {"prompts": prompts, "texts": [r.text.strip() for r in rows], "ids": [list(r.token_ids) for r in rows]}


def gold_rule(ctx: Context, examples: list) -> Any:
    """The stage's gold rule (None without one), checked against the rows' columns."""
    from tunelab.rewards import check_fields, resolve_reward

    options = ctx.cfg.task_options()
    if options is None or not options.gold:
        return None
    where = f"{ctx.cfg.task}.gold"
    fn = resolve_reward(options.gold, field=where, folder=ctx.cfg._source_dir)
    check_fields(fn, row_fields(examples), field=where, source=ctx.splits.source if ctx.splits else None)
    return fn


def gold_scores(fn: Any, examples: list, texts: list[str]) -> list[float] | None:
    """A gold rule on answers to `examples` (None without one)."""
    if fn is None:
        return None
    fields = {k: [ex.meta.get(k, ex.fields.get(k)) for ex in examples] for k in row_fields(examples)}
    prompts = [display_input(ex) for ex in examples]
    return [float(v) for v in fn(prompts=prompts, completions=texts, **fields)]


def row_fields(examples: list) -> list[str]:
    """The columns a gold rule is given: the rows' extra fields (e.g. `answer`)."""
    keys: dict[str, None] = {}
    for ex in examples[:1]:
        keys.update(dict.fromkeys(ex.meta))
        keys.update(dict.fromkeys(k for k in ex.fields if k not in _ROW_TEXT))
    return list(keys)


def kl_to_base(model: Any, ctx: Context, said: dict[str, Any]) -> float | None:
    """Mean log π(y|x) − log π_base(y|x) per token over the tuned model's own greedy answers y."""
    from tunelab.inference.scoring import sequence_nll

    rows = [{"input_ids": p + ids, "labels": [IGNORE_INDEX] * len(p) + ids} for p, ids in zip(said["prompts"], said["ids"], strict=True) if ids]
    if not rows:
        return None
    kw = {"batch_size": ctx.cfg.evaluation.batch_size}
    tuned = sequence_nll(model, ctx.tokenizer, rows, description="KL: tuned", **kw)
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            base = sequence_nll(model, ctx.tokenizer, rows, description="KL: base", **kw)
    else:
        reference = common.load_base_model(ctx)
        base = sequence_nll(reference, ctx.tokenizer, rows, description="KL: base", **kw)
        del reference
    tokens = sum(t for _, t in tuned)
    return sum(b - t for (t, _), (b, _) in zip(tuned, base, strict=True)) / max(tokens, 1)


def mean_tokens(said: dict[str, Any] | None) -> float | None:
    """Mean tokens per answer (None without answers)."""
    if not said or not said["ids"]:
        return None
    return sum(len(i) for i in said["ids"]) / len(said["ids"])


def win_rate(base: list[float], tuned: list[float]) -> dict[str, Any]:
    """Prompt by prompt, the tuned answer against the base's by a score (the gold rule, else the reward):
    wins, ties, losses and the win rate (a tie counts half; 50 is no change)."""
    wins = sum(t > b for b, t in zip(base, tuned, strict=True))
    losses = sum(t < b for b, t in zip(base, tuned, strict=True))
    ties = len(base) - wins - losses
    return {"win_rate": 100.0 * (wins + 0.5 * ties) / max(len(base), 1), "wins": wins, "ties": ties, "losses": losses}
