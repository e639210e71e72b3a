"""Batched greedy generation from token ids: left padding, KV cache, deterministic.

Used by evaluation (many held-out prompts) and by `tunelab generate` alike, so both see the same
prompts and the same decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.progress import make_progress


@dataclass
class Generation:
    text: str
    new_tokens: int
    hit_limit: bool  # stopped by max_new_tokens, not by EOS


def generate_from_ids(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    description: str = "generate",
    show_progress: bool = True,
) -> list[Generation]:
    import torch
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad, use_cache=True
    )
    # longest first: batches hold rows of similar length (less padding), and memory peaks early
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    progress = make_progress() if show_progress else None
    try:
        if progress is not None:
            progress.start()
            task = progress.add_task(description, total=len(prompts), info="")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                p = prompts[i]
                ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p) :] = 1
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config
                )
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                stopped = eos in new
                if stopped:
                    new = new[: new.index(eos)]
                else:
                    new = [t for t in new if t != pad] if pad != eos else new
                text = tokenizer.decode(new, skip_special_tokens=True).strip()
                results[i] = Generation(text=text, new_tokens=len(new), hit_limit=not stopped)
            if progress is not None:
                progress.advance(task, len(idx))
    finally:
        if progress is not None:
            progress.stop()
        model.train(was_training)
    return [r for r in results if r is not None]
