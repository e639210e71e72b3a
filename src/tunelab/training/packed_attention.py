"""Attention for padding-free packed batches: each packed row attends causally to itself only.

transformers' sdpa path keeps packed rows apart with a dense (total × total) block-diagonal mask, so
attention costs grow with the square of the whole packed length and sdpa falls back to its masked
kernel. Here the packed sequence is cut where `position_ids` restart and each row runs sdpa with
`is_causal=True` on its own: the same result (tested), with attention work Σ rowᵢ² instead of (Σ rowᵢ)².

Used only while training (`packed_attention(model)`); every other call (padded batches, generation
with a cache) goes to transformers' own sdpa unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "tunelab_packed_sdpa"


def _segments(position_ids: Any) -> list[tuple[int, int]]:
    import torch

    pos = position_ids[0]
    starts = torch.nonzero(pos == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], pos.shape[0]]
    return list(zip(starts, ends, strict=True))


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
    kwargs = {k: v for k, v in kwargs.items() if k not in ("is_causal", "position_ids")}
    outputs = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True,
                               **kwargs)[0]
        for a, b in _segments(position_ids)
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
    register()
    model.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")
