"""Frozen linear weights held in the autocast dtype while training.

Under autocast every `nn.Linear` casts its fp32 weight to bf16 (or fp16) in every forward: autocast
caches casts only of weights that train, so a frozen base (LoRA, IA3, prompt learning, a frozen
backbone) is re-cast in every micro-batch, and each cast copy is kept for the backward. Holding those
weights in the autocast dtype for the length of training gives the same numbers (autocast would have
rounded them the same way: tested bit for bit) without the casts.

Plain `nn.Linear` layers whose parameters are all frozen are held this way. A frozen LM head tied to
the input embedding (which is looked up in fp32) gets its own rounded copy of the shared weight for the
while, and the tie back afterwards. Afterwards the fp32 values come back exactly: kept aside when
rounding changed them, else cast back (a bf16 checkpoint loaded in fp32 rounds without loss, so
nothing is kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _held_layers(model: Any) -> tuple[list[Any], list[Any]]:
    """(layers whose own weights are held in half, tied layers that get a half copy of the shared weight)."""
    import torch

    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers, tied = [], []
    for module in model.modules():
        if type(module) is not torch.nn.Linear:  # bitsandbytes' 4-bit layers and peft's wrappers are subclasses/others
            continue
        params = list(module.parameters(recurse=False))
        if not params or not all(type(p) is torch.nn.Parameter and p.dtype == torch.float32 and not p.requires_grad
                                 for p in params):  # fmt: skip
            continue
        if all(owners[id(p)] == 1 for p in params):
            layers.append(module)
        elif module.bias is None:  # an LM head tied to the embedding
            tied.append(module)
    return layers, tied


@contextmanager
def frozen_weights_in(model: Any, dtype: Any) -> Iterator[int]:
    """While inside, `model`'s frozen linear weights are `dtype` (bf16 or fp16; anything else, None
    included, holds nothing); yields how many layers are held so."""
    import torch

    layers, tied = _held_layers(model) if dtype in (torch.bfloat16, torch.float16) else ([], [])
    shared = [(module, module.weight) for module in tied]
    for module, weight in shared:
        module.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    kept: list[tuple[Any, Any]] = []  # (parameter, its fp32 data) where rounding changed it
    for module in layers:
        for p in module.parameters(recurse=False):
            rounded = p.data.to(dtype)
            if not torch.equal(rounded.float(), p.data):
                kept.append((p, p.data))
            p.data = rounded
    try:
        yield len(layers) + len(shared)
    finally:
        for module, weight in shared:
            module.weight = weight
        originals = {id(p): data for p, data in kept}
        for module in layers:
            for p in module.parameters(recurse=False):
                p.data = originals.get(id(p), p.data.float())
