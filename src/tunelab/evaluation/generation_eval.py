"""Evaluate a generative model on held-out rows: batched greedy answers scored against references,
plus the model's perplexity of the references themselves (teacher-forced, response tokens only)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunelab.evaluation.metrics import generation_metrics, perplexity
from tunelab.inference.generation import generate_from_ids
from tunelab.run import write_jsonl_atomic


def evaluate_generation(model: Any, tokenizer: Any, fmt: Any, examples: list, options: Any, *, label: str) -> dict:
    """Generate for each example's prompt and score it; returns metrics and the outputs."""
    prompts = [fmt.prompt_ids(ex, tokenizer) for ex in examples]
    references = [fmt.reference(ex) for ex in examples]
    started = time.time()
    outputs = generate_from_ids(
        model,
        tokenizer,
        prompts,
        max_new_tokens=options.max_new_tokens,
        batch_size=options.batch_size,
        description=f"evaluate {label}",
    )
    seconds = time.time() - started
    scores = generation_metrics([o.text for o in outputs], references)
    per_example = scores.pop("per_example")
    scores["mean_output_tokens"] = round(sum(o.new_tokens for o in outputs) / len(outputs), 1)
    scores["hit_token_limit"] = sum(o.hit_limit for o in outputs)
    nll = reference_nll(model, tokenizer, fmt, examples, batch_size=options.batch_size)
    total_tokens = sum(t for _, t in nll)
    if total_tokens:
        scores["perplexity"] = perplexity(sum(v for v, _ in nll), total_tokens)
    return {
        "label": label,
        "metrics": scores,
        "outputs": [o.text for o in outputs],
        "per_example": per_example,
        "stats": [
            {"new_tokens": o.new_tokens, "hit_limit": o.hit_limit, "ref_nll": v, "ref_tokens": t}
            for o, (v, t) in zip(outputs, nll, strict=True)
        ],
        "seconds": round(seconds, 1),
    }


def reference_nll(
    model: Any,
    tokenizer: Any,
    fmt: Any,
    examples: list,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    max_batch_tokens: int = 1024,
) -> list[tuple[float, int]]:
    """Per example: (summed negative log-likelihood in nats, token count) of the response tokens.

    The rows are encoded exactly as in training (`PromptFormat.encode`: prompt masked, response and
    EOS scored), teacher-forced in right-padded batches of similar length. Rows whose response was
    truncated away count zero tokens. Perplexity of the references = exp(Σ nll / Σ tokens).
    """
    if not examples:
        return []
    config = getattr(model, "config", None)
    limit = max_length or min(1024, int(getattr(config, "max_position_embeddings", 1024) or 1024))
    encoded = fmt.encode_many(examples, tokenizer, limit)
    return sequence_nll(model, tokenizer, encoded, batch_size=batch_size, max_batch_tokens=max_batch_tokens)


def sequence_nll(
    model: Any, tokenizer: Any, rows: list[dict], *, batch_size: int = 16, max_batch_tokens: int = 1024
) -> list[tuple[float, int]]:
    """Per row of {input_ids, labels}: (summed negative log-likelihood in nats, scored token count) of
    the tokens whose label is not IGNORE_INDEX, teacher-forced in right-padded batches of similar
    length (longest first, at most max_batch_tokens per batch)."""
    import torch

    from tunelab.data.templates import IGNORE_INDEX

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(order):
            width = len(rows[order[start]]["input_ids"])
            n_rows = max(1, min(batch_size, max_batch_tokens // max(width, 1)))
            idx = order[start : start + n_rows]
            start += len(idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(rows[i]["input_ids"])
                ids[r, :n] = torch.tensor(rows[i]["input_ids"], dtype=torch.long)
                mask[r, :n] = 1
                labels[r, :n] = torch.tensor(rows[i]["labels"], dtype=torch.long)
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logits = logits[:, -width:]  # prompt-learning adapters prepend virtual-token positions
            target = labels[:, 1:].to(device)
            token_nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(target.shape)
            nll = token_nll.sum(dim=1)
            counts = (target != IGNORE_INDEX).sum(dim=1)
            for r, i in enumerate(idx):
                results[i] = (float(nll[r]), int(counts[r]))
    finally:
        model.train(was_training)
    return results


def write_predictions(path: Path, examples: list, fmt: Any, base: dict | None, tuned: dict) -> None:
    rows = []
    for i, ex in enumerate(examples):
        row: dict[str, Any] = {
            "source": ex.source,
            "input": _prompt_of(ex),
            "reference": fmt.reference(ex),
            "tuned": tuned["outputs"][i],
            "tuned_scores": tuned["per_example"][i],
        }
        if tuned.get("stats"):
            row["tuned_stats"] = tuned["stats"][i]
        if base is not None:
            row["base"] = base["outputs"][i]
            row["base_scores"] = base["per_example"][i]
            if base.get("stats"):
                row["base_stats"] = base["stats"][i]
        if ex.meta:
            row["meta"] = ex.meta
        rows.append(row)
    write_jsonl_atomic(path, rows)


def _prompt_of(example: Any) -> str:
    msgs = example.messages or []
    users = [m["content"] for m in msgs if m["role"] == "user"]
    if users:
        return users[-1]
    return next((str(v) for k, v in example.fields.items() if v), "")
