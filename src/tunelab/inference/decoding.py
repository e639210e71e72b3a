"""The one decoder: batched generation from prompt token ids, for evaluation, `tunelab generate`,
batch files, chat and the server alike.

Each row carries its own options — greedy (temperature 0) or sampled (temperature, top-p, a seed),
a token limit, stop strings — and may stream: `on_text` receives each new piece of text as soon as
it is complete UTF-8 (held back while it could still become a stop string).

Rows are decoded longest prompt first in batches of `batch_size` (little padding, memory peaks
early), fewer where their KV cache would pass a budget (`kv_cache.CPU_KV_CACHE_BUDGET`, or half the free
GPU memory). On a CPU, decoding is bound by reading the weights: 128 rows per step cost little more than
16, so evaluation decodes many rows at once (`evaluation.generation_batch_size`). For models whose forward takes ``position_ids``, a KV cache that can drop rows and
``logits_to_keep``, decoding is one loop that removes a row from the batch (and the cache) once it
is done, so a batch no longer runs every row until its longest answer ends. Models that prepend
virtual tokens (peft prompt learning) manage their own cache inside ``model.generate``; they decode
through it, with a per-row stopping criterion that feeds the same bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunelab.methods.base import uses_virtual_tokens
from tunelab.progress import progress_bar


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Sequence:
    """One row to decode; `on_text` receives each new piece of text (called on the decoding thread).
    `pause`, asked after each new token, parks the row ("paused"); the next `decode` of it resumes where it
    stopped (same tokens, text and sampler), so a scheduler can let other rows in between."""

    prompt_ids: list[int]
    options: SamplingOptions
    on_text: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None
    pause: Callable[[], bool] | None = None
    # filled in while decoding
    token_ids: list[int] = field(default_factory=list)  # new tokens, without the final EOS
    text: str = ""
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "cancelled"; "paused": not yet
    _sent: int = 0  # characters of `text` already handed to on_text
    _cut: bool = False  # `text` was cut at a stop string
    _generator: Any = None

    @property
    def streams(self) -> bool:
        return self.on_text is not None or bool(self.options.stop)


@dataclass
class Generation:
    """A finished greedy answer, as evaluation and `tunelab generate` report it."""

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
    """Greedy answers for many prompts (decode's common case)."""
    rows = [Sequence(list(p), SamplingOptions(max_new_tokens=max_new_tokens)) for p in prompts]
    decode(model, tokenizer, rows, batch_size=batch_size, description=description, show_progress=show_progress)
    return [Generation(r.text.strip(), len(r.token_ids), r.finish_reason == "length") for r in rows]


def decode(model: Any, tokenizer: Any, rows: list[Sequence], *, batch_size: int = 16, description: str = "generate",
           show_progress: bool = False) -> list[Sequence]:  # fmt: skip
    """Decode every row to its end (EOS, a stop string, its token limit or cancellation) or its pause."""
    if not rows:
        return rows
    from tunelab.inference.kv_cache import rows_that_fit

    eos = eos_ids(model, tokenizer)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].prompt_ids))
    shrinking = supports_shrinking(model)
    was_training = model.training
    model.eval()
    try:
        with progress_bar(description if show_progress else None, len(rows)) as advance:
            start = 0
            while start < len(order):
                # longest first: the batch's first row is its widest
                n = rows_that_fit(model, rows[order[start]], batch_size) if shrinking else _same_length(rows, order, start, batch_size)
                batch = [rows[i] for i in order[start : start + n]]
                start += n
                for row in batch:
                    _prepare(row)
                live = [r for r in batch if r.finish_reason is None]
                if shrinking:
                    _decode_shrinking(model, tokenizer, live, eos)
                else:
                    for group in _same_sampling(live):
                        _decode_with_generate(model, tokenizer, group, eos)
                for row in batch:
                    if row.finish_reason is None:  # only a model-wide limit can leave a row unfinished
                        _finish(row, "length", tokenizer)
                advance(len(batch))
    finally:
        model.train(was_training)
    return rows


def _same_length(rows: list[Sequence], order: list[int], start: int, batch_size: int) -> int:
    """How many rows from `start` (in `order`) are as long as the first, at most `batch_size`. Virtual-token
    models decode through peft's `generate`, which ignores position ids: left padding would shift every
    prompt token's position (batches of 16 answered 12 of 19 held-out rows in the trained form, one at a
    time 19 of 19), so they decode in batches of equal length, without padding."""
    width = len(rows[order[start]].prompt_ids) + len(rows[order[start]].token_ids)
    n = 1
    while n < batch_size and start + n < len(order) and \
            len(rows[order[start + n]].prompt_ids) + len(rows[order[start + n]].token_ids) == width:
        n += 1
    return n


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokenizer's EOS plus any end-of-turn ids the model's generation config adds."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(i) for i in extra)
    return ids


def context_length(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def supports_shrinking(model: Any) -> bool:
    """Whether the shrinking loop can drive this model exactly like `model.generate` would."""
    if uses_virtual_tokens(model):
        return False  # virtual tokens are injected by peft's own generate
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    return {"position_ids", "past_key_values", "logits_to_keep", "attention_mask"} <= _forward_params(model)


def _forward_params(model: Any) -> set[str]:
    import inspect

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(target.forward).parameters)
    except (TypeError, ValueError):
        return set()


# -- per-row bookkeeping ----------------------------------------------------------------------------


def _prepare(row: Sequence) -> None:
    if row.finish_reason == "paused":  # resumed: keeps its tokens, text and sampler
        row.finish_reason = None
        return
    row.token_ids, row.text, row.finish_reason, row._sent, row._cut = [], "", None, 0, False
    if not row.options.greedy:
        import torch

        row._generator = torch.Generator(device="cpu")
        if row.options.seed is not None:
            row._generator.manual_seed(row.options.seed)
        else:
            row._generator.seed()
    if row.options.max_new_tokens <= 0:
        row.finish_reason = "length"


def _advance(row: Sequence, token: int, tokenizer: Any, eos: set[int]) -> bool:
    """Add one new token to a row; False once the row is finished."""
    if row.cancelled is not None and row.cancelled():
        _finish(row, "cancelled", tokenizer)
        return False
    if token in eos:
        _finish(row, "stop", tokenizer)
        return False
    row.token_ids.append(token)
    if row.streams:
        text = tokenizer.decode(row.token_ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 sequence waits for its next byte
            row.text = text
            for stop in row.options.stop:
                at = row.text.find(stop)
                if at != -1:
                    row.text, row._cut = row.text[:at], True
                    _finish(row, "stop", tokenizer)
                    return False
            _emit(row, final=False)
    if len(row.token_ids) >= row.options.max_new_tokens:
        _finish(row, "length", tokenizer)
        return False
    if row.pause is not None and row.pause():
        row.finish_reason = "paused"
        return False
    return True


def _emit(row: Sequence, *, final: bool) -> None:
    # hold back the tail that could still become a stop string
    hold = 0 if final else max((len(s) - 1 for s in row.options.stop), default=0)
    upto = max(row._sent, len(row.text) - hold)
    if upto > row._sent and row.on_text is not None:
        row.on_text(row.text[row._sent : upto])
    row._sent = upto


def _finish(row: Sequence, reason: str, tokenizer: Any) -> None:
    row.finish_reason = reason
    if not row._cut:
        row.text = tokenizer.decode(row.token_ids, skip_special_tokens=True)
    _emit(row, final=True)


def _pick(logits: Any, greedy_ids: list[int], rows: list[Sequence | None]) -> list[int]:
    """The next token of each batch row: the argmax for greedy rows, a top-p sample for the others."""
    import torch

    picked = list(greedy_ids)
    for r, row in enumerate(rows):
        if row is None or row.options.greedy:
            continue
        probs = torch.softmax(logits[r].float() / row.options.temperature, dim=-1)
        if row.options.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            sorted_probs[cumulative - sorted_probs >= row.options.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        picked[r] = int(torch.multinomial(probs.cpu(), 1, generator=row._generator).item())
    return picked


# -- the shrinking loop ------------------------------------------------------------------------------

# On CPU, MKL multiplies 16 or more rows at a time several times faster per row than 4–15 rows
# (which cost about as much as that many single rows), while 1–3 rows cost about as much as one.
# So a batch only shrinks when what is left is still ≥ 16 rows, or down to ≤ 3 rows; in between,
# finished rows ride along (computed, ignored) — measured on a 2-core AVX-512 CPU, torch 2.13 + MKL.
_CPU_EFFICIENT_ROWS = 16
_CPU_FEW_ROWS = 3


def _shrink_to(live: int, current: int, device_type: str) -> bool:
    if live == current:
        return False
    if device_type != "cpu":
        return True
    return live >= _CPU_EFFICIENT_ROWS or live <= _CPU_FEW_ROWS


def _left_padded(rows: list[Sequence], pad: int, device: Any) -> tuple[Any, Any]:
    import torch

    seqs = [r.prompt_ids + r.token_ids for r in rows]  # token_ids: what a resumed row already has
    width = max(len(s) for s in seqs)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer: Any, eos: set[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)


# A shared prefix shorter than this is not worth its own forward.
_MIN_SHARED_PREFIX = 4


def common_prefix_length(seqs: list[list[int]]) -> int:
    """How many leading tokens every sequence has in common."""
    shortest = min(len(s) for s in seqs)
    n = 0
    while n < shortest and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def _prefill(model: Any, rows: list[Sequence], pad: int, device: Any) -> tuple[Any, Any, Any]:
    """Run the prompts through the model into a KV cache with room for every new token; returns the
    output (last-position logits and the cache), the attention mask and each row's next position.

    Rows that start alike (a chat template's system prompt) share that prefix: it runs once, its cache
    is copied to every row, and only the rest of each prompt runs as the left-padded batch — the padding
    then sits between the prefix and the rest, masked like any padding."""
    import torch

    from tunelab.inference.kv_cache import reserved_cache

    seqs = [r.prompt_ids + r.token_ids for r in rows]  # token_ids: what a resumed row already has
    # at least one token of each row runs in the batch, to give its next-token logits
    shared = min(common_prefix_length(seqs), min(len(s) for s in seqs) - 1) if len(rows) > 1 else 0
    if shared < _MIN_SHARED_PREFIX:
        shared = 0
    rest = [s[shared:] for s in seqs]
    width = max(len(s) for s in rest)
    cache = reserved_cache(model, width + max(r.options.max_new_tokens for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for i, s in enumerate(rest):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, shared + width - len(s) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = mask.cumsum(-1)[:, shared:] - 1
    positions.masked_fill_(mask[:, shared:] == 0, 1)
    if shared:
        prefix = torch.tensor([seqs[0][:shared]], dtype=torch.long, device=device)
        model(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None], past_key_values=cache,
              use_cache=True, logits_to_keep=1)  # fmt: skip
        cache.batch_repeat_interleave(len(rows))
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                logits_to_keep=1)  # fmt: skip
    return out, mask, positions[:, -1:] + 1


def _decode_shrinking(model: Any, tokenizer: Any, rows: list[Sequence], eos: set[int]) -> None:
    """Left-padded batch, KV cache; finished rows leave the batch (and the cache). Position ids follow
    the attention mask, as `generate` computes them for left padding."""
    import torch

    if not rows:
        return
    device = next(model.parameters()).device
    slots: list[Sequence | None] = list(rows)  # batch row → its sequence (None: finished, riding along)
    with torch.inference_mode():
        out, mask, next_pos = _prefill(model, rows, _pad_id(tokenizer, eos), device)
        cache = out.past_key_values
        if not hasattr(cache, "batch_select_indices"):
            raise RuntimeError("the model's KV cache cannot drop rows")
        for _ in range(max(r.options.max_new_tokens for r in rows)):
            logits = out.logits[:, -1, :]
            picked = _pick(logits, logits.argmax(dim=-1).tolist(), slots)
            live = []
            for r, token in enumerate(picked):
                row = slots[r]
                if row is None:
                    continue
                if _advance(row, token, tokenizer, eos):
                    live.append(r)
                else:
                    slots[r] = None
            if not live:
                break
            step = torch.tensor(picked, dtype=torch.long, device=device)
            if _shrink_to(len(live), len(slots), device.type):
                index = torch.tensor(live, device=device)
                cache.batch_select_indices(index)
                mask, next_pos, step = mask[index], next_pos[index], step[index]
                slots = [slots[r] for r in live]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(input_ids=step[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                        use_cache=True, logits_to_keep=1)  # fmt: skip
            next_pos = next_pos + 1


# -- through model.generate (virtual-token models) ------------------------------------------------------


def _same_sampling(rows: list[Sequence]) -> list[list[Sequence]]:
    """Rows that `model.generate` can decode together: one temperature / top-p / seed per call."""
    groups: dict[tuple, list[Sequence]] = {}
    for r in rows:
        o = r.options
        key = ("greedy",) if o.greedy else (o.temperature, o.top_p, o.seed)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _decode_with_generate(model: Any, tokenizer: Any, rows: list[Sequence], eos: set[int]) -> None:
    import torch
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    if not rows:
        return
    done = [False] * len(rows)

    class _PerRow(StoppingCriteria):
        """Sees each new token of every row (after generate appended it): the same bookkeeping as the loop."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            for r, token in enumerate(input_ids[:, -1].tolist()):
                if not done[r]:
                    done[r] = not _advance(rows[r], int(token), tokenizer, eos)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    options = rows[0].options
    config = GenerationConfig(
        max_new_tokens=max(r.options.max_new_tokens for r in rows),
        do_sample=not options.greedy,
        temperature=options.temperature if not options.greedy else None,
        top_p=options.top_p if not options.greedy else None,
        eos_token_id=sorted(eos),
        pad_token_id=_pad_id(tokenizer, eos),
        use_cache=True,
    )
    if not options.greedy and options.seed is not None:
        torch.manual_seed(options.seed)
    ids, mask = _left_padded(rows, _pad_id(tokenizer, eos), next(model.parameters()).device)
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                       stopping_criteria=StoppingCriteriaList([_PerRow()]))  # fmt: skip
