"""Attention for padding-free packed batches: each packed row attends causally to itself only.

transformers' sdpa path keeps packed rows apart with a dense (total × total) block-diagonal mask, so
attention costs grow with the square of the whole packed length and sdpa falls back to its masked
kernel. Here the packed sequence is cut where `position_ids` restart, two ways:

- short rows (the rows × heads × longest² scores within `BATCHED_SCORES_LIMIT`): the rows are laid
  side by side, padded to the longest, and attend in one batched matmul → softmax → matmul, with the
  query heads that share a key/value head stacked instead of the keys repeated. On a CPU the fused
  kernel's backward costs ~1.5 ms per call whatever the row's length, so for rows of tens of tokens
  this is ~2× faster per layer. The rows are cut into groups (`grouping`) so that one long row does not
  pad all the short ones to its length. A small group keeps its fp32 attention weights for the backward
  (`KEPT_SCORES_LIMIT`, a few MiB a layer); a larger one keeps only the queries, keys, values and its
  mask, and recomputes the weights there, as fused kernels do;
- longer rows (and attention dropout): each row runs sdpa with `is_causal=True` on its own.

Both give the packed rows' attention (tested against the block mask), with work Σ rowᵢ² or
rows × longest² instead of (Σ rowᵢ)². Rows that share their first tokens with the row before them
(`training/shared_prefix.py`: their positions start at s > 0) attend to those tokens too: their keys are
the shared tokens and then their own, and the shared tokens' gradient is summed over the rows.

Used only while training (`packed_attention(model)`); every other call (padded batches, generation
with a cache) goes to transformers' own sdpa unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tunelab.training import shared_prefix

NAME = "tunelab_packed_sdpa"
# the most rows × heads × longest² attention scores one layer computes at once on the batched path
# (fp32: 16 MiB, freed after the layer); more goes row by row
BATCHED_SCORES_LIMIT = 2**22
# what one more group of rows costs on the batched path beyond its scores, in scores (rows × heads ×
# longest²): its dozen small ops; measured on SmolLM2's attention (9 heads, 3 key/value heads, dim 64), bf16
GROUP_COST_SCORES = 100_000
# a group with at most this many scores keeps its fp32 attention weights for the backward (4 MiB a layer)
# instead of recomputing them there: for short rows the recomputation was a fifth of the attention's time
KEPT_SCORES_LIMIT = 2**20


def kept_weights(rows: int, longest: int, heads: int, keys: int | None = None) -> bool:
    """Whether a group's fp32 attention weights (rows × heads × longest queries × `keys`, default
    `longest`) are kept for the backward (else recomputed there): the planner asks this too."""
    return rows * heads * longest * (keys or longest) <= KEPT_SCORES_LIMIT


def batched(rows: int, longest: int, heads: int, keys: int | None = None) -> bool:
    """Whether packed rows attend in one padded batch (else row by row): the planner asks this too."""
    return rows * heads * longest * (keys or longest) <= BATCHED_SCORES_LIMIT


@dataclass
class Group:
    """Packed rows that attend together, each padded to the longest of them."""

    rows: int
    longest: int
    tokens: Any  # the group's token positions in the packed sequence, row after row; None: all, in order
    flat: Any  # where those tokens sit in the (rows × longest) padded layout
    bias: Any  # (rows, 1, 1, longest, keys) fp32: 0 where a query may attend (causal, inside its row), else -inf
    keys: int = 0  # the longest row's keys: its shared tokens and its own (0: `longest`, nothing shared)
    key_tokens: Any = None  # with shared tokens: each row's keys' positions in the packed sequence, row after row
    key_flat: Any = None  # where those keys sit in the (rows × keys) padded layout


@dataclass
class Layout:
    """Where a packed sequence's rows are, worked out once per forward (every layer reuses it)."""

    segments: list[tuple[int, int]]
    longest: int
    shared: dict[int, tuple[int, int]] = field(default_factory=dict)  # a row's start → (base, n): it reads the
    # n first tokens of the row starting at base (`training/shared_prefix.py`)
    groups: list[Group] = field(default_factory=list)  # the rows on the batched path
    alone: list[tuple[int, int]] = field(default_factory=list)  # rows too long for it: sdpa, one by one
    order: Any = None  # puts the groups' and lone rows' outputs, concatenated, back in packed order (None: they are)


_LAST: tuple[Any, Layout] | None = None  # the position_ids of the forward in progress and their layout


def _segments(position_ids: Any) -> list[tuple[int, int, int, int]]:
    """(start, end, shared, base) of each row: see `training/shared_prefix.py`."""
    return [(r.start, r.end, r.shared, r.base) for r in shared_prefix.rows(position_ids)]


def grouping(lengths: list[int], heads: int, keys: list[int] | None = None) -> tuple[list[list[int]], list[int]]:
    """Which rows attend together: (groups of row indices, rows that go alone through sdpa).

    A group costs its rows × heads × longest queries × longest keys (a row's keys: `keys`, default its
    `lengths`) scores plus a fixed `GROUP_COST_SCORES` for its dozen small ops, so one long row no longer
    pads every short one to its length: the rows, most keys first, are cut into runs at the least total
    cost (dynamic programming over the cut points). A row whose own scores pass `BATCHED_SCORES_LIMIT`
    goes alone; so do all rows when the limit is 0."""
    keys = keys or lengths
    alone = [i for i, n in enumerate(lengths) if not batched(1, n, heads, keys[i])]
    rest = sorted((i for i, n in enumerate(lengths) if batched(1, n, heads, keys[i])), key=lambda i: -keys[i])
    best = [0.0] + [float("inf")] * len(rest)  # best[i]: the cheapest way to group rest[:i]
    cut = [0] * (len(rest) + 1)
    for i in range(1, len(rest) + 1):
        longest = 0
        for j in range(i - 1, -1, -1):  # rest[j:i] as one group, padded to rest[j]'s keys
            longest = max(longest, lengths[rest[j]])
            if not batched(i - j, longest, heads, keys[rest[j]]):
                break
            cost = best[j] + (i - j) * heads * longest * keys[rest[j]] + GROUP_COST_SCORES
            if cost < best[i]:
                best[i], cut[i] = cost, j
    groups, i = [], len(rest)
    while i > 0:
        groups.append(sorted(rest[cut[i]:i]))
        i = cut[i]
    return sorted(groups), alone


def _group(segments: list[tuple[int, int, int, int]], rows: list[int], everything: bool, device: Any) -> Group:
    import torch

    lengths = torch.tensor([segments[r][1] - segments[r][0] for r in rows])
    longest = int(lengths.max())
    at = torch.arange(longest)
    valid = at[None, :] < lengths[:, None]  # (rows, longest)
    flat = torch.nonzero(valid.flatten()).flatten().to(device)
    tokens = None if everything else torch.cat([torch.arange(*segments[r][:2]) for r in rows]).to(device)
    shared = torch.tensor([segments[r][2] for r in rows])
    if not shared.any():
        causal = torch.ones(longest, longest, dtype=torch.bool).tril()
        keep = (causal[None] & valid[:, None, :])[:, None, None]
        bias = torch.zeros(keep.shape).masked_fill_(~keep, float("-inf")).to(device)
        return Group(len(rows), longest, tokens, flat, bias)
    # a row's keys are its shared tokens, then its own; its query i sits at key position shared + i
    counts = shared + lengths
    keys = int(counts.max())
    key_at = torch.arange(keys)
    key_valid = key_at[None, :] < counts[:, None]  # (rows, keys)
    key_flat = torch.nonzero(key_valid.flatten()).flatten().to(device)
    key_tokens = torch.cat([torch.cat([torch.arange(base, base + n), torch.arange(a, b)])
                            for a, b, n, base in (segments[r] for r in rows)]).to(device)  # fmt: skip
    causal = key_at[None, None, :] <= shared[:, None, None] + at[None, :, None]  # (rows, longest, keys)
    keep = (causal & key_valid[:, None, :])[:, None, None]
    bias = torch.zeros(keep.shape).masked_fill_(~keep, float("-inf")).to(device)
    return Group(len(rows), longest, tokens, flat, bias, keys, key_tokens, key_flat)


def _layout(position_ids: Any, heads: int) -> Layout:
    import torch

    global _LAST
    if _LAST is not None and _LAST[0] is position_ids:
        return _LAST[1]
    rows = _segments(position_ids)
    lengths = [b - a for a, b, _, _ in rows]
    layout = Layout([(a, b) for a, b, _, _ in rows], max(lengths))
    layout.shared = {a: (base, n) for a, _, n, base in rows if n}
    groups, alone = grouping(lengths, heads, [n + b - a for a, b, n, _ in rows])
    if groups:
        device = position_ids.device
        everything = len(groups) == 1 and not alone
        layout.groups = [_group(rows, members, everything, device) for members in groups]
        layout.alone = [layout.segments[r] for r in alone]
        placed = [r for members in groups for r in members] + alone  # the rows in the order their outputs come
        if placed != sorted(placed):
            where = torch.cat([torch.arange(*layout.segments[r]) for r in placed])
            layout.order = torch.empty_like(where).index_copy_(0, where, torch.arange(len(where))).to(device)
    _LAST = (position_ids, layout)
    return layout


def _batched_attention(query: Any, key: Any, value: Any, group: Group, scaling: float | None) -> Any:
    """(1, heads, total, dim) packed → (the group's tokens, heads, dim): its rows padded side by side."""
    import torch

    device = query.device.type
    if torch.is_autocast_enabled(device):  # as sdpa under autocast: the inputs in the autocast dtype
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return _RowsAttention.apply(query, key, value, group, scale)


def _rows_attention_function() -> type:
    import torch

    def tokens(x: Any, group: Group) -> Any:
        """(1, h, total, d) packed → (the group's tokens, h, d)."""
        x = x[0].transpose(0, 1)
        return x if group.tokens is None else x.index_select(0, group.tokens)

    def padded(x: Any, group: Group, groups: int = 1) -> Any:
        """(the group's tokens, h, d) → (rows, h / groups, groups · longest, d): each row padded to the
        longest, the `groups` query heads that share a key/value head stacked along the query axis."""
        rows, longest = group.rows, group.longest
        h, d = x.shape[1], x.shape[-1]
        out = x.new_zeros(rows * longest, h, d).index_copy_(0, group.flat, x)
        out = out.view(rows, longest, h // groups, groups, d).permute(0, 2, 3, 1, 4)
        return out.reshape(rows, h // groups, groups * longest, d)

    def padded_keys(x: Any, group: Group) -> Any:
        """(1, h, total, d) packed → (rows, h, keys, d): each row's keys (its shared tokens, then its own)."""
        if group.key_tokens is None:
            return padded(tokens(x, group), group)
        h, d = x.shape[1], x.shape[-1]
        keys = x[0].transpose(0, 1).index_select(0, group.key_tokens)
        out = x.new_zeros(group.rows * group.keys, h, d).index_copy_(0, group.key_flat, keys)
        return out.view(group.rows, group.keys, h, d).transpose(1, 2)

    def unpadded_keys(x: Any, group: Group, total: int) -> Any:
        """The gradient of `padded_keys`: (rows, h, keys, d) → (1, h, total, d), a shared token's summed over
        the rows that read it."""
        if group.key_tokens is None:
            return scattered(unpadded(x, group, x.shape[1]), group, total)
        h, d = x.shape[1], x.shape[-1]
        x = x.transpose(1, 2).reshape(group.rows * group.keys, h, d).index_select(0, group.key_flat)
        return x.new_zeros(total, h, d).index_add_(0, group.key_tokens, x).transpose(0, 1)[None]

    def unpadded(x: Any, group: Group, heads: int) -> Any:
        """The inverse of `padded`: (rows, kv, groups · longest, d) → (the group's tokens, heads, d)."""
        rows, longest, d = group.rows, group.longest, x.shape[-1]
        x = x.reshape(rows, heads, longest, d).transpose(1, 2).reshape(rows * longest, heads, d)
        return x.index_select(0, group.flat)

    def scattered(x: Any, group: Group, total: int) -> Any:
        """(the group's tokens, h, d) → (1, h, total, d), zero at the other groups' tokens."""
        if group.tokens is not None:
            x = x.new_zeros(total, *x.shape[1:]).index_copy_(0, group.tokens, x)
        return x.transpose(0, 1)[None]

    def wide_matmul(a: Any, b: Any) -> Any:
        """a @ b in fp32 (fp64 for fp64 inputs): exact products, fp32 sums. bf16 inputs on a CPU go through
        oneDNN's bf16 kernels with fp32 accumulation (`fp32_precision="bf16"`, set only around this call):
        their values are bf16 already, so nothing is rounded, at ~1.6× the speed of an fp32 matmul. The
        flag is process-wide: training runs its matmuls from one Python thread."""
        wide = torch.promote_types(a.dtype, torch.float32)
        if not (a.dtype == b.dtype == torch.bfloat16 and a.device.type == "cpu"):
            return torch.matmul(a.to(wide), b.to(wide))
        flags = torch.backends.mkldnn.matmul
        before = flags.fp32_precision
        flags.fp32_precision = "bf16"
        try:
            return torch.matmul(a.to(wide), b.to(wide))
        finally:
            flags.fp32_precision = before

    def weights(q: Any, k: Any, bias: Any, scale: float) -> Any:
        rows, kv_heads, stacked, _ = q.shape
        queries, keys = bias.shape[-2], k.shape[2]
        scores = wide_matmul(q, k.transpose(-1, -2)).mul_(scale)
        scores.view(rows, kv_heads, stacked // queries, queries, keys).add_(bias)
        return torch.softmax(scores, dim=-1)

    def inputs(query: Any, key: Any, value: Any, group: Group) -> tuple[Any, Any, Any]:
        groups = query.shape[1] // key.shape[1]
        return padded(tokens(query, group), group, groups), padded_keys(key, group), padded_keys(value, group)

    class RowsAttention(torch.autograd.Function):
        """softmax(q kᵀ · scale + mask) v over one group of packed rows laid side by side. The padded q, k
        and v are kept for the backward, and the fp32 weights too for a small group; a larger one
        recomputes them there (as fused kernels do) instead of keeping rows × longest² weights. Scores and
        softmax are fp32 (exact products of bf16 inputs); the weights meet v in v's dtype."""

        @staticmethod
        def forward(ctx, query, key, value, group, scale):  # noqa: ANN001, ANN205
            with torch.autocast(query.device.type, enabled=False):
                q, k, v = inputs(query, key, value, group)
                probs = weights(q, k, group.bias, scale)
                out = torch.matmul(probs.to(v.dtype), v)
                out = unpadded(out, group, query.shape[1])  # (the group's tokens, heads, d)
            kept = kept_weights(group.rows, group.longest, query.shape[1], group.keys or None)
            ctx.save_for_backward(q, k, v, group.bias, probs if kept else None)
            ctx.group, ctx.scale, ctx.kept = group, scale, kept
            ctx.shape = (query.shape[1], key.shape[1], query.shape[2])  # heads, key/value heads, tokens
            return out

        @staticmethod
        def backward(ctx, grad_out):  # noqa: ANN001, ANN205
            # fp32 where rounding would be amplified (the scores, and dO·Vᵀ before the softmax backward's
            # subtraction); the other products in the inputs' dtype, as fused kernels do
            q, k, v, bias, probs = ctx.saved_tensors
            group, scale = ctx.group, ctx.scale
            heads, kv_heads, total = ctx.shape
            with torch.autocast(q.device.type, enabled=False):
                probs = probs if ctx.kept else weights(q, k, bias, scale)
                grad = padded(grad_out, group, heads // kv_heads).to(v.dtype)  # (rows, kv, groups · longest, d)
                grad_v = torch.matmul(probs.to(v.dtype).transpose(-1, -2), grad)
                grad_weights = wide_matmul(grad, v.transpose(-1, -2))
                # dS = P ⊙ (dP − Σ dP·P), in place in dP (the kept P is not written: it is a saved tensor)
                grad_scores = grad_weights.sub_((grad_weights * probs).sum(-1, keepdim=True)).mul_(probs).mul_(scale)
                grad_scores = grad_scores.to(q.dtype)
                grad_q = torch.matmul(grad_scores, k)
                grad_k = torch.matmul(grad_scores.transpose(-1, -2), q)
                grad_q = scattered(unpadded(grad_q, group, heads), group, total)
                grad_k = unpadded_keys(grad_k, group, total)
                grad_v = unpadded_keys(grad_v, group, total)
            return grad_q, grad_k, grad_v, None, None

    return RowsAttention


class _LazyFunction:
    """The autograd Function, built on first use (importing tunelab does not import torch)."""

    def __init__(self) -> None:
        self.function: Any = None

    def apply(self, *args: Any) -> Any:
        if self.function is None:
            self.function = _rows_attention_function()
        return self.function.apply(*args)


_RowsAttention = _LazyFunction()


# what the batched path understands; anything else (a softcap, sinks, a position bias, attention
# dropout) goes row by row
_PLAIN_KWARGS = {"dropout", "scaling", "is_causal", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                 "max_length_k", "output_attentions", "use_cache", "cache_position"}  # fmt: skip


def packed_sdpa_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    packed = (
        attention_mask is None
        and position_ids is not None
        and query.shape[0] == 1
        and position_ids.shape[-1] == query.shape[2] == key.shape[2] > 1
    )
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layout = _layout(position_ids, query.shape[1])
    plain = all(k in _PLAIN_KWARGS or v is None for k, v in kwargs.items()) and not kwargs.get("dropout")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("is_causal", "position_ids")}

    def alone(a: int, b: int) -> Any:  # sdpa_attention_forward returns (batch, seq, heads, dim)
        if a not in layout.shared:
            return sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                                          is_causal=True, **kwargs)[0][0]  # fmt: skip
        base, n = layout.shared[a]  # its keys: the shared tokens, then its own; query i sits at key n + i
        k = torch.cat([key[:, :, base:base + n], key[:, :, a:b]], dim=2)
        v = torch.cat([value[:, :, base:base + n], value[:, :, a:b]], dim=2)
        mask = torch.ones(b - a, n + b - a, dtype=torch.bool, device=query.device).tril(n)[None, None]
        return sdpa_attention_forward(module, query[:, :, a:b], k, v, mask, **kwargs)[0][0]

    if not (layout.groups and plain):
        return torch.cat([alone(a, b) for a, b in layout.segments])[None], None
    parts = [_batched_attention(query, key, value, group, kwargs.get("scaling")) for group in layout.groups]
    parts += [alone(a, b) for a, b in layout.alone]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return (out if layout.order is None else out.index_select(0, layout.order))[None], None


def packed_sdpa_mask(*, batch_size: int, q_length: int, kv_length: int, attention_mask: Any = None,
                     kv_offset: int = 0, **kwargs: Any) -> Any:  # fmt: skip
    """No mask for a single packed row without padding (the attention cuts it into rows itself);
    sdpa's own mask for everything else."""
    from transformers.masking_utils import sdpa_mask

    if batch_size == 1 and attention_mask is None and kv_offset == 0 and q_length == kv_length > 1:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, attention_mask=attention_mask,
                     kv_offset=kv_offset, **kwargs)  # fmt: skip


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, packed_sdpa_mask)


def supports(model: Any) -> bool:
    """Causal decoders on plain sdpa with full attention only (no sliding window, no encoder)."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and hasattr(model, "can_generate")
        and model.can_generate()
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and not getattr(config, "is_encoder_decoder", False)
        and not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))
        and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
        and hasattr(model, "set_attn_implementation")
    )


def _unwrapped(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper


def sharing_collator(model: Any, collator: Any) -> Any:
    """`collator` packing rows with their shared prefix once (`training/shared_prefix.py`), where `model`'s
    attention will be this module's (the only one that reads that layout); else `collator` itself."""
    from transformers import DataCollatorWithFlattening

    if isinstance(collator, DataCollatorWithFlattening) and supports(_unwrapped(model)):
        return shared_prefix.SharedPrefixCollator(collator)
    return collator


@contextmanager
def packed_attention(model: Any) -> Iterator[bool]:
    """While inside, `model` (a transformers model, or a peft model around one) uses per-row packed
    attention; yields whether it could."""
    model = _unwrapped(model)
    if not supports(model):
        yield False
        return
    global _LAST
    register()
    model.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")
        _LAST = None  # nothing of the last batch outlives training
