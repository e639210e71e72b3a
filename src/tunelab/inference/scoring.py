"""The one scorer: teacher-forced negative log-likelihood of token sequences (perplexity, the
reference answers' likelihood, multiple-choice answers) and a classifier's class probabilities."""

from __future__ import annotations

from typing import Any

from tunelab.progress import progress_bar


def sequence_nll(
    model: Any, tokenizer: Any, rows: list[dict], *, batch_size: int = 16, max_batch_tokens: int = 1024,
    description: str | None = None,
) -> list[tuple[float, int]]:
    """Per row of {input_ids, labels}: (summed negative log-likelihood in nats, scored token count) of
    the tokens whose label is not IGNORE_INDEX, teacher-forced in right-padded batches of similar
    length (longest first, at most max_batch_tokens per batch). `description` shows a progress bar."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with progress_bar(description, len(rows)) as advance:
            start = 0
            while start < len(order):
                width = len(rows[order[start]]["input_ids"])
                idx = order[start : start + max(1, min(batch_size, max_batch_tokens // max(width, 1)))]
                start += len(idx)
                for i, value in zip(idx, _batch_nll(model, [rows[i] for i in idx], width, pad, device), strict=True):
                    results[i] = value
                advance(len(idx))
    finally:
        model.train(was_training)
    return results


def _batch_nll(model: Any, rows: list[dict], width: int, pad: int, device: Any) -> list[tuple[float, int]]:
    """(Σ nll, scored tokens) of each row of one right-padded batch.

    Where the model takes a KV cache and `logits_to_keep`, two things the answer does not depend on are
    skipped: the tokens every row starts with (a chat template's system prompt) run once, as a cache the
    rows share, and the LM head runs only from the first position that predicts a scored token."""
    import torch

    from tunelab.data.templates import IGNORE_INDEX
    from tunelab.inference.decoding import common_prefix_length, supports_shrinking

    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[r, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        mask[r, :n] = 1
        labels[r, :n] = torch.tensor(row["labels"], dtype=torch.long)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    scored = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
    if scored.numel() == 0:
        return [(0.0, 0)] * len(rows)
    with torch.inference_mode():
        if supports_shrinking(model):
            first = int(scored[0])  # the first position whose logits predict a scored token
            shared = min(common_prefix_length([row["input_ids"] for row in rows]), first)
            cache = None
            if shared:
                from transformers import DynamicCache

                cache = DynamicCache(config=model.config)
                model(input_ids=ids[:1, :shared], position_ids=torch.arange(shared, device=device)[None],
                      past_key_values=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
                cache.batch_repeat_interleave(len(rows))
            positions = torch.arange(shared, width, device=device).expand(len(rows), -1)
            logits = model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=cache is not None, logits_to_keep=width - first).logits
        else:
            first = 0
            logits = model(input_ids=ids, attention_mask=mask).logits
            logits = logits[:, -width:]  # prompt-learning adapters prepend virtual-token positions
    target = labels[:, first + 1 :]
    token_nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(target.shape)
    nll, counts = token_nll.sum(dim=1), (target != IGNORE_INDEX).sum(dim=1)
    return [(float(nll[r]), int(counts[r])) for r in range(len(rows))]


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


def class_probabilities(model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 16,
                        max_length: int | None = None, description: str | None = None) -> list[list[float]]:  # fmt: skip
    """Softmax of a classifier's logits for each text: batched, padded as the tokenizer pads, truncated
    to `max_length` as in training. `description` shows a progress bar."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    probs: list[list[float]] = []
    with progress_bar(description, len(texts)) as advance:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            batch = tokenizer(chunk, truncation=max_length is not None, max_length=max_length, padding=True,
                              return_tensors="pt")  # fmt: skip
            inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode():
                logits = model(**inputs).logits
            probs += torch.softmax(logits.float(), dim=-1).tolist()
            advance(len(chunk))
    return probs


def sequence_scores(model: Any, tokenizer: Any, sequences: list[list[int]], *, batch_size: int = 16,
                    description: str | None = None) -> list[float]:  # fmt: skip
    """A one-score head's value (a reward model's reward) for each token sequence, in right-padded
    batches, as TRL's preference collator batches them in training."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    with progress_bar(description, len(sequences)) as advance:
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, seq in enumerate(chunk):
                ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[r, : len(seq)] = 1
            with torch.inference_mode():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores += logits.float()[:, 0].tolist()
            advance(len(chunk))
    return scores
