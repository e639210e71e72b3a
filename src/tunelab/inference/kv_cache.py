"""The KV cache of decoding: how many rows fit a budget, and a cache that writes new tokens in place
instead of concatenating.

transformers' `DynamicLayer` grows by `torch.cat` at every decoding step, copying the whole cache of
every layer once per new token: on a CPU that copying was 30% of batched decoding time (SmolLM2-135M,
16 rows, 48 new tokens). `reserved_cache` gives each full-attention layer buffers with room for the
tokens a decode will add; `update` copies only the new tokens and hands attention a view of the filled
part. The values attention sees are the same, so the outputs are too (tests compare with the plain
cache). A layer that runs out of room falls back to concatenation.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# The KV cache a batch may fill on a CPU; on a GPU, half of the memory free when the batch starts.
CPU_KV_CACHE_BUDGET = 2**30


def kv_bytes_per_token(model: Any) -> int | None:
    """Bytes of KV cache one token takes in every layer, from the model's config (None: unknown)."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not (isinstance(layers, int) and isinstance(heads, int) and isinstance(hidden, int)) or heads <= 0:
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    dtype = next(model.parameters()).dtype
    element = dtype.itemsize if dtype.is_floating_point else 2  # quantized weights: the cache is in compute dtype
    return 2 * layers * kv_heads * head_dim * element


def rows_that_fit(model: Any, widest: Any, batch_size: int) -> int:
    """`batch_size` rows, or fewer where their KV cache (prompt + new tokens, each as wide as `widest`)
    would pass the budget; at least one."""
    per_token = kv_bytes_per_token(model)
    if per_token is None:
        return batch_size
    device = next(model.parameters()).device
    budget = CPU_KV_CACHE_BUDGET
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 2
    tokens = len(widest.prompt_ids) + widest.options.max_new_tokens
    return max(1, min(batch_size, budget // (per_token * tokens)))


def reserved_cache(model: Any, room: int) -> DynamicCache:
    """A `DynamicCache` for `model` whose full-attention layers keep `room` tokens of space beyond the
    prompt. Layers of other kinds (sliding window, ...) are left as transformers makes them."""
    cache = DynamicCache(config=model.config)
    cache.layers = [ReservedLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class ReservedLayer(DynamicLayer):
    """A full-attention layer's keys and values, written into buffers with room for `room` more tokens
    than the first update brought; `keys` / `values` are views of the filled part."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.filled = 0
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.buffers = tuple(
                s.new_empty((*s.shape[:-2], s.shape[-2] + self.room, s.shape[-1])) for s in (key_states, value_states)
            )
        new = key_states.shape[-2]
        if self.buffers is None or self.filled + new > self.buffers[0].shape[-2]:
            self._drop_buffers()
            return super().update(key_states, value_states)
        keys, values = self.buffers
        keys[..., self.filled : self.filled + new, :].copy_(key_states)
        values[..., self.filled : self.filled + new, :].copy_(value_states)
        self.filled += new
        self.keys, self.values = keys[..., : self.filled, :], values[..., : self.filled, :]
        return self.keys, self.values

    def _drop_buffers(self) -> None:
        if self.buffers is not None:  # keep what was filled as plain tensors; from here on, concatenation
            self.keys, self.values = self.keys.contiguous(), self.values.contiguous()
            self.buffers = None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buffers is None:
            super().batch_select_indices(indices)
            return
        self.buffers = (self.buffers[0][indices, ...], self.buffers[1][indices, ...])
        self.keys, self.values = (b[..., : self.filled, :] for b in self.buffers)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.buffers is None:
            super().batch_repeat_interleave(repeats)
            return
        self.buffers = (self.buffers[0].repeat_interleave(repeats, 0), self.buffers[1].repeat_interleave(repeats, 0))
        self.keys, self.values = (b[..., : self.filled, :] for b in self.buffers)

    def crop(self, tokens_to_remove: int) -> None:
        self._drop_buffers()
        super().crop(tokens_to_remove)

    def reset(self) -> None:
        self.buffers, self.filled = None, 0
        super().reset()
