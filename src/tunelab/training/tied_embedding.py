"""A trained input embedding tied to the LM head gets its lookup's gradient as the rows it read.

The dense backward of an embedding lookup fills a zero tensor the size of the vocabulary (49152 × 576
fp32 for SmolLM2: 113 MB, freshly allocated each step, so page-faulted in: ~87 ms a step on two CPU
cores, 11% of a full fine-tuning step), adds the looked-up rows into it, and autograd then adds that
whole tensor to the LM head's gradient of the same weight. With `sparse=True` the lookup's gradient is
only the rows it read, which autograd adds into the LM head's dense gradient in place: the same sum,
in another order (float rounding; tested against the dense path).

Only where the weight is tied (the LM head's dense gradient is what the sparse one lands in, so the
optimizer still sees a dense gradient), it trains, and one process trains alone (DDP decides at wrap
time which gradients it reduces as sparse). Should a step's gradient come out sparse anyway (no token
trained through the head), it is made dense as it lands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def tied_trained_embedding(model: Any) -> Any | None:
    """The model's input embedding when it is a plain lookup whose weight trains and is the LM head's."""
    import torch

    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    embedding, head = get_in(), get_out()
    if not isinstance(embedding, torch.nn.Embedding) or head is None or embedding.sparse:
        return None
    weight = embedding.weight
    if getattr(head, "weight", None) is not weight or not weight.requires_grad or type(weight) is not torch.nn.Parameter:
        return None
    if embedding.max_norm is not None or embedding.scale_grad_by_freq:
        return None
    return embedding


def _dense_grad(param: Any) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


@contextmanager
def sparse_tied_embedding_grad(model: Any, *, enabled: bool = True) -> Iterator[bool]:
    """For the length of training, a tied trained embedding (see the module) looks up with a sparse
    gradient; yields whether one did."""
    embedding = tied_trained_embedding(model) if enabled else None
    if embedding is None:
        yield False
        return
    hook = embedding.weight.register_post_accumulate_grad_hook(_dense_grad)
    embedding.sparse = True
    try:
        yield True
    finally:
        embedding.sparse = False
        hook.remove()
