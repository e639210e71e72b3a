"""Continued pretraining on raw text: documents packed into fixed-length blocks, judged by perplexity.

The recipe: load text → tokenize and pack → base perplexity on held-out blocks → apply the method →
train → save → tuned perplexity on the same blocks.
"""

from __future__ import annotations

import math
from typing import Any

from tunelab.data.templates import PromptFormat
from tunelab.evaluation.bootstrap import perplexity_metric
from tunelab.evaluation.metrics import perplexity
from tunelab.stages.base import Context, Stage
from tunelab.stages.common import load_base_model, load_data, setup, train_and_save, write_results


def pack(ctx: Context, fmt: PromptFormat, examples: list) -> list[dict[str, Any]]:
    """Concatenate documents (each ending in EOS) and cut into max_length blocks; the tail is kept."""
    block = ctx.cfg.data.max_length
    stream: list[int] = []
    for enc in fmt.encode_many(examples, ctx.tokenizer, max_length=10**12):
        stream += enc["input_ids"]
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    if blocks and len(blocks[-1]) < 2:
        blocks.pop()
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


def carve_blocks(blocks: list[dict[str, Any]], split: Any) -> tuple[list, list, list]:
    import random

    order = list(blocks)
    random.Random(split.seed).shuffle(order)
    n = len(order)
    n_val = max(1, round(n * split.validation)) if split.validation > 0 and n >= 3 else 0
    n_test = max(1, round(n * split.test)) if split.test > 0 and n >= 3 else 0
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def block_perplexity(model: Any, tokenizer: Any, blocks: list[dict[str, Any]], batch_size: int,
                     label: str) -> tuple[dict[str, float], list[list[float]]]:  # fmt: skip
    """Token-weighted perplexity over blocks (every token after the first of a block is predicted),
    and each block's [NLL sum, tokens] for the bootstrap."""
    from tunelab.inference.scoring import sequence_nll

    nll = sequence_nll(model, tokenizer, blocks, batch_size=batch_size, description=f"perplexity {label}")
    total_nll, total_tokens = sum(v for v, _ in nll), sum(n for _, n in nll)
    metrics = {
        "perplexity": round(perplexity(total_nll, total_tokens), 4),
        "eval_loss": round(total_nll / max(total_tokens, 1), 4) if total_tokens else math.nan,
        "tokens": total_tokens,
    }
    return metrics, [[v, n] for v, n in nll]


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    setup(ctx)
    splits = load_data(ctx)
    fmt = PromptFormat.build(ctx.tokenizer, shape="text")
    train_rows = pack(ctx, fmt, splits.train)
    eval_rows = pack(ctx, fmt, splits.validation)
    test_rows = pack(ctx, fmt, splits.test or splits.validation)
    if not eval_rows and not test_rows:
        # too few documents to hold whole ones out (e.g. one .txt file): hold out blocks instead
        train_rows, eval_rows, test_rows = carve_blocks(train_rows, cfg.data.split)
        ctx.notes.append("held-out blocks were carved from the packed text (too few documents to split by document)")
    if cfg.evaluation.max_examples:
        test_rows = test_rows[: cfg.evaluation.max_examples]
    ctx.notes.append(
        f"packed into {len(train_rows)} train / {len(eval_rows)} validation / {len(test_rows)} test blocks of {cfg.data.max_length} tokens"
    )

    model = load_base_model(ctx)
    ev = cfg.evaluation
    base = tuned = None
    if ev.enabled and ev.compare_base and test_rows:
        base, base_blocks = block_perplexity(model, ctx.tokenizer, test_rows, ev.batch_size, "base")
    trained = train_and_save(ctx, model, train_rows, eval_rows, fmt)
    if ev.enabled and test_rows:
        tuned, tuned_blocks = block_perplexity(trained["model"], ctx.tokenizer, test_rows, ev.batch_size, "tuned")
    paired = (perplexity_metric(), base_blocks, tuned_blocks) if base and tuned else None
    return write_results(ctx, trained, base=base, tuned=tuned, n_test=len(test_rows), paired=paired)


STAGE = Stage(name="pretrain", summary="continued pretraining on raw text (packed blocks)", run=run,
              model_kind="causal_lm", shapes=("text",), loss="causal_lm", headline_metrics=("perplexity", "eval_loss"))
