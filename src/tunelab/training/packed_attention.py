"""Attention for padding-free packed batches: each packed row attends causally to itself only.

transformers' sdpa path keeps packed rows apart with a dense (total × total) block-diagonal mask, so
attention costs grow with the square of the whole packed length and sdpa falls back to its masked
kernel. Here the packed sequence is cut where `position_ids` restart, two ways:

- short rows (the rows × heads × longest² scores within `BATCHED_SCORES_LIMIT`): the rows are laid
  side by side, padded to the longest, and attend in one batched matmul → softmax → matmul, with the
  query heads that share a key/value head stacked instead of the keys repeated. On a CPU the fused
  kernel's backward costs ~1.5 ms per call whatever the row's length, so for rows of tens of tokens
  this is ~2× faster per layer. Like the fused kernel it keeps no scores for the backward (they are
  recomputed there): only the queries, keys and values, and one mask per forward;
- longer rows (and attention dropout): each row runs sdpa with `is_causal=True` on its own.

Both give the packed rows' attention (tested against the block mask), with work Σ rowᵢ² or
rows × longest² instead of (Σ rowᵢ)².

Used only while training (`packed_attention(model)`); every other call (padded batches, generation
with a cache) goes to transformers' own sdpa unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

NAME = "tunelab_packed_sdpa"
# the most rows × heads × longest² attention scores one layer computes at once on the batched path
# (fp32: 16 MiB, freed after the layer); more goes row by row
BATCHED_SCORES_LIMIT = 2**22


def batched(rows: int, longest: int, heads: int) -> bool:
    """Whether packed rows attend in one padded batch (else row by row): the planner asks this too."""
    return rows * heads * longest * longest <= BATCHED_SCORES_LIMIT


@dataclass
class Layout:
    """Where a packed sequence's rows are, worked out once per forward (every layer reuses it)."""

    segments: list[tuple[int, int]]
    longest: int
    flat: Any = None  # positions of the real tokens in the (rows × longest) padded layout
    bias: Any = None  # (rows, 1, 1, longest, longest) fp32: 0 where a query may attend (causal, inside its row), else -inf


_LAST: tuple[Any, Layout] | None = None  # the position_ids of the forward in progress and their layout


def _segments(position_ids: Any) -> list[tuple[int, int]]:
    import torch

    pos = position_ids[0]
    starts = torch.nonzero(pos == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], pos.shape[0]]
    return list(zip(starts, ends, strict=True))


def _layout(position_ids: Any, heads: int) -> Layout:
    import torch

    global _LAST
    if _LAST is not None and _LAST[0] is position_ids:
        return _LAST[1]
    segments = _segments(position_ids)
    lengths = torch.tensor([b - a for a, b in segments])
    layout = Layout(segments, int(lengths.max()))
    if batched(len(segments), layout.longest, heads):
        device = position_ids.device
        at = torch.arange(layout.longest)
        valid = at[None, :] < lengths[:, None]  # (rows, longest)
        layout.flat = torch.nonzero(valid.flatten()).flatten().to(device)
        causal = torch.ones(layout.longest, layout.longest, dtype=torch.bool).tril()
        keep = (causal[None] & valid[:, None, :])[:, None, None]
        layout.bias = torch.zeros(keep.shape).masked_fill_(~keep, float("-inf")).to(device)
    _LAST = (position_ids, layout)
    return layout


def _batched_attention(query: Any, key: Any, value: Any, layout: Layout, scaling: float | None) -> Any:
    """(1, heads, total, dim) packed → (1, total, heads, dim): the rows padded side by side, one matmul."""
    import torch

    device = query.device.type
    if torch.is_autocast_enabled(device):  # as sdpa under autocast: the inputs in the autocast dtype
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return _RowsAttention.apply(query, key, value, layout, scale)


def _rows_attention_function() -> type:
    import torch

    def padded(x: Any, layout: Layout, groups: int = 1) -> Any:
        """(1, h, total, d) packed → (rows, h / groups, groups · longest, d): each row padded to the longest,
        the `groups` query heads that share a key/value head stacked along the query axis."""
        rows, longest = len(layout.segments), layout.longest
        h, d = x.shape[1], x.shape[-1]
        out = x.new_zeros(rows * longest, h, d).index_copy_(0, layout.flat, x[0].transpose(0, 1))
        out = out.view(rows, longest, h // groups, groups, d).permute(0, 2, 3, 1, 4)
        return out.reshape(rows, h // groups, groups * longest, d)

    def packed(x: Any, layout: Layout, heads: int) -> Any:
        """The inverse of `padded`: (rows, kv, groups · longest, d) → (1, heads, total, d)."""
        rows, longest, d = len(layout.segments), layout.longest, x.shape[-1]
        x = x.reshape(rows, heads, longest, d).transpose(1, 2).reshape(rows * longest, heads, d)
        return x.index_select(0, layout.flat).transpose(0, 1)[None]

    def weights(q: Any, k: Any, bias: Any, scale: float) -> Any:
        rows, kv_heads, stacked, _ = q.shape
        longest = k.shape[2]
        wide = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        scores = torch.matmul(q.to(wide), k.to(wide).transpose(-1, -2)).mul_(scale)
        scores.view(rows, kv_heads, stacked // longest, longest, longest).add_(bias)
        return torch.softmax(scores, dim=-1)

    class RowsAttention(torch.autograd.Function):
        """softmax(q kᵀ · scale + mask) v over the packed rows laid side by side. Only the packed q, k and
        v are kept for the backward, which pads them again and recomputes the weights (as fused kernels
        do) instead of keeping rows × longest² weights. Scores and softmax are fp32 (exact products of
        bf16 inputs); the weights meet v in v's dtype."""

        @staticmethod
        def forward(ctx, query, key, value, layout, scale):  # noqa: ANN001, ANN205
            heads, kv_heads = query.shape[1], key.shape[1]
            with torch.autocast(query.device.type, enabled=False):
                q, k, v = padded(query, layout, heads // kv_heads), padded(key, layout), padded(value, layout)
                out = torch.matmul(weights(q, k, layout.bias, scale).to(v.dtype), v)
                out = packed(out, layout, heads).transpose(1, 2)  # (1, total, heads, d), as sdpa's wrapper returns
            ctx.save_for_backward(query, key, value, layout.bias)
            ctx.layout, ctx.scale = layout, scale
            return out

        @staticmethod
        def backward(ctx, grad_out):  # noqa: ANN001, ANN205
            # fp32 where rounding would be amplified (the scores, and dO·Vᵀ before the softmax backward's
            # subtraction); the other products in the inputs' dtype, as fused kernels do
            query, key, value, bias = ctx.saved_tensors
            layout, scale = ctx.layout, ctx.scale
            heads, kv_heads = query.shape[1], key.shape[1]
            groups = heads // kv_heads
            with torch.autocast(query.device.type, enabled=False):
                q, k, v = padded(query, layout, groups), padded(key, layout), padded(value, layout)
                probs = weights(q, k, bias, scale)
                grad = padded(grad_out.transpose(1, 2), layout, groups)  # (rows, kv, groups · longest, d)
                grad_v = torch.matmul(probs.to(v.dtype).transpose(-1, -2), grad.to(v.dtype))
                grad_weights = torch.matmul(grad.to(probs.dtype), v.to(probs.dtype).transpose(-1, -2))
                grad_scores = probs.mul_(grad_weights - (grad_weights * probs).sum(-1, keepdim=True)).mul_(scale)
                grad_scores = grad_scores.to(q.dtype)
                grad_q = torch.matmul(grad_scores, k.to(q.dtype))
                grad_k = torch.matmul(grad_scores.transpose(-1, -2), q)
                grad_q = packed(grad_q, layout, heads)
                grad_k, grad_v = packed(grad_k, layout, kv_heads), packed(grad_v, layout, kv_heads)
            return grad_q.to(query.dtype), grad_k.to(key.dtype), grad_v.to(value.dtype), None, None

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
    if layout.flat is not None and plain:
        return _batched_attention(query, key, value, layout, kwargs.get("scaling")), None
    kwargs = {k: v for k, v in kwargs.items() if k not in ("is_causal", "position_ids")}
    outputs = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True,
                               **kwargs)[0]
        for a, b in layout.segments
    ]  # fmt: skip
    return torch.cat(outputs, dim=1), None  # sdpa_attention_forward returns (batch, seq, heads, dim)


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


@contextmanager
def packed_attention(model: Any) -> Iterator[bool]:
    """While inside, `model` (a transformers model, or a peft model around one) uses per-row packed
    attention; yields whether it could."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
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
