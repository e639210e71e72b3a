"""Packed rows that begin with the same tokens compute those tokens once.

A chat template starts every row with the same system prompt (SmolLM2's: 24 tokens of the ~54 in a
chatterbot row; a batch of 8 then computes 61% of its tokens). A causal decoder's hidden states at those positions are the same in every
row, so computing them once per batch and letting every row attend to them gives the same loss and the
same gradients, with the prefix's gradient summed over the rows that read it (autograd does the sum).

The layout, read by `training/packed_attention.py` and written by `SharedPrefixCollator`: in a packed
sequence, a row starts where `position_ids` restart at 0 (a whole row) or jump to some s > 0 (a row whose
first s tokens are the first s tokens of the last whole row before it). Only the positions say so:
[0 1 2 3 4 5 | 3 4 | 3 4 5 6] is three rows of 6, 5 and 7 tokens sharing their first 3.

Only tokens no loss is computed on are shared (every row's labels are -100 up to and including the first
token after the prefix), so each trained token is still predicted once per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# share only prefixes at least this long: each shared batch pads differently and costs a little more
# attention bookkeeping per layer, which a few tokens do not repay
MIN_SHARED_TOKENS = 4


@dataclass(frozen=True)
class Row:
    """One row of a packed sequence: its own tokens [start, end), and the `shared` first tokens it reads
    from the whole row starting at packed index `base` (0 shared: a whole row)."""

    start: int
    end: int
    shared: int = 0
    base: int = 0

    @property
    def length(self) -> int:
        return self.shared + self.end - self.start


def rows(position_ids: Any) -> list[Row]:
    """The rows of a packed (1, total) `position_ids`. A jump to s > 0 with no whole row of at least s tokens
    before it is not a shared prefix: that row is taken as whole (its keys are its own tokens)."""
    import torch

    pos = position_ids[0]
    jump = torch.ones(pos.shape[0], dtype=torch.bool, device=pos.device)
    jump[1:] = pos[1:] != pos[:-1] + 1
    starts = torch.nonzero(jump).flatten().tolist()
    firsts = pos[starts].tolist()
    ends = [*starts[1:], pos.shape[0]]
    out: list[Row] = []
    whole: Row | None = None
    for start, end, first in zip(starts, ends, firsts, strict=True):
        if first > 0 and whole is not None and whole.end - whole.start >= first:
            out.append(Row(start, end, first, whole.start))
            continue
        out.append(Row(start, end))
        whole = out[-1] if first == 0 else whole
    return out


def row_tokens(position_ids: Any) -> int:
    """Tokens of the rows a packed sequence holds, shared ones counted in every row that reads them."""
    return sum(r.length for r in rows(position_ids))


def shared_length(ids: list[list[int]], labels: list[list[int]]) -> int:
    """How many leading tokens the rows can share: their common prefix, cut so that no row has a label on
    it or on the token right after it (the last shared token's prediction is no loss term), and so that
    every row keeps at least one token of its own."""
    if len(ids) < 2:
        return 0
    n = min(len(r) for r in ids) - 1
    for row in labels:
        first = next((i for i, label in enumerate(row) if i > 0 and label != -100), len(row))
        n = min(n, first - 1)
    first_row = ids[0]
    common = 0
    while common < n and all(r[common] == first_row[common] for r in ids[1:]):
        common += 1
    return common


def _ints(values: Any) -> list[int]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


class SharedPrefixCollator:
    """Packs rows as `DataCollatorWithFlattening` does, with the leading tokens every row of the batch
    shares (`shared_length`) kept only in the first row; used only where the packed attention reads the
    layout (else rows would silently lose their prefix)."""

    def __init__(self, flattening: Any, min_shared: int = MIN_SHARED_TOKENS) -> None:
        self.flattening = flattening
        self.min_shared = min_shared

    def __call__(self, features: list[dict[str, Any]], return_tensors: Any = None) -> dict[str, Any]:
        ids = [_ints(f["input_ids"]) for f in features]
        labels = [_ints(f["labels"]) if "labels" in f else row for f, row in zip(features, ids, strict=True)]
        f = self.flattening
        plain = f.return_position_ids and not (f.position_ids_start or f.return_seq_idx or f.return_flash_attn_kwargs)
        shared = shared_length(ids, labels) if plain and (return_tensors or f.return_tensors) == "pt" else 0
        if shared < self.min_shared:
            return f(features, return_tensors)
        import torch

        separator = self.flattening.separator_id
        out_ids, out_labels, out_pos = [], [], []
        for k, (row_ids, row_labels) in enumerate(zip(ids, labels, strict=True)):
            cut = 0 if k == 0 else shared
            out_ids += row_ids[cut:]
            # the flattening collator's separator: no row's first token is predicted from the row before it
            out_labels += [separator, *row_labels[cut + 1:]]
            out_pos += range(cut, len(row_ids))
        return {"input_ids": torch.tensor([out_ids]), "labels": torch.tensor([out_labels]),
                "position_ids": torch.tensor([out_pos])}  # fmt: skip
