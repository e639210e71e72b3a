"""What a method trains on an architecture: which weights get gradients, which adapters it adds and
their shapes — counted as peft counts them (`get_nb_trainable_parameters`), without building anything.

The module-name rules are peft's (and `methods.freeze`'s): a list entry matches a module's full name
or its last dotted parts; `all-linear` is every linear layer but the output head; a string is a regular
expression over full names; `modules_to_save` wraps every module whose name ends with an entry in a
trained copy (peft adds a classifier's `score`/`classifier` head itself).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from tunelab.methods.base import module_matches
from tunelab.planning.architecture import Architecture, Part

ADAPTER_METHODS = ("lora", "dora", "qlora")
PROMPT_METHODS = ("prompt", "ptuning", "prefix")
PTUNING_LSTM_LAYERS = 2  # peft's PromptEncoderConfig.encoder_num_layers default (tunelab does not set it)


@dataclass(frozen=True)
class LinearPlan:
    """One linear layer of the model as the method trains it."""

    name: str  # full module name
    layer: int  # block index; -1 outside the blocks (the head)
    part: Part
    weight_trainable: bool = False
    bias_trainable: bool = False
    lora_rank: int = 0  # LoRA/DoRA/QLoRA adapter of this rank on it (0: none)
    dora: bool = False
    ia3: str | None = None  # "out": scales its output (keys, values); "in": its input (feed-forward)
    quantized: bool = False  # held in 4-bit (QLoRA)

    @property
    def needs_input(self) -> bool:
        """Its input is kept for backward: a weight gradient or an adapter reads it."""
        return self.weight_trainable or self.lora_rank > 0 or self.ia3 == "in"

    @property
    def trains(self) -> bool:
        return self.weight_trainable or self.bias_trainable or self.lora_rank > 0 or self.ia3 is not None


@dataclass
class Trainables:
    method: str
    linears: list[LinearPlan]  # every block linear of every layer, then the head
    trainable: int  # parameters that get gradients
    total: int  # every parameter of the model being trained (base + adapters + copies), as peft counts
    added: int  # parameters the method adds (adapters, virtual tokens, trained copies)
    trainable_shapes: list[tuple[int, ...]]  # each trainable tensor (optimizer states are per tensor)
    layer_trains: list[bool]  # per block: holds something trainable
    embedding_trainable: bool = False
    final_norm_trainable: bool = False
    virtual_tokens: int = 0  # prepended to every row (prompt tuning, P-tuning)
    prefix_tokens: int = 0  # key/value prefix in every layer (prefix tuning)
    quantized_params: int = 0  # base weights held in 4-bit
    frozen_copies: int = 0  # originals kept beside modules_to_save's trained copies
    trained_modules: set[str] = field(default_factory=set)  # non-linear modules trained in full (norms, embeddings)
    notes: list[str] = field(default_factory=list)

    @property
    def lowest_trained_layer(self) -> int | None:
        """Below this block nothing needs a gradient (None: nothing in the blocks trains)."""
        return next((i for i, t in enumerate(self.layer_trains) if t), None)

    @property
    def grad_below_blocks(self) -> bool:
        """A gradient is needed below the first block (a trained embedding or virtual tokens)."""
        return self.embedding_trainable or self.virtual_tokens > 0


def _shapes(part: Part) -> list[tuple[int, ...]]:
    return list(part.shapes)


def _under(full: str, wanted: str, *, suffix_only: bool = False) -> bool:
    """`full` is `wanted` or inside a module that is (freeze's and peft's modules_to_save matching)."""
    parts = full.split(".")
    prefixes = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    if suffix_only:  # peft's modules_to_save: any module whose name ends with the entry
        return any(p.endswith(wanted) for p in prefixes)
    return any(module_matches(p, wanted) for p in prefixes)


def _targets(arch: Architecture, entries: Any, default_all_linear: bool = False) -> set[str]:
    names = arch.module_names()
    if entries == "all-linear" or (entries is None and default_all_linear):
        return {n for n, _, p in names if p.kind == "linear" and n != arch.head_name}
    if isinstance(entries, str):
        pattern = re.compile(entries)
        return {n for n, _, _ in names if pattern.fullmatch(n)}
    return {n for n, _, _ in names if any(module_matches(n, str(e)) for e in entries or [])}


def _ia3_defaults(model_type: str) -> tuple[list[str] | None, list[str]]:
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    return TARGETS.get(model_type), list(FEEDFORWARD.get(model_type, []))


def trainables(arch: Architecture, method: str, options: Any, kind: str = "causal_lm") -> Trainables:
    """The trained parameters of `method` (a `methods.registry.METHODS` name) with its options section."""
    from tunelab.models.kinds import MODEL_KINDS

    model_kind = MODEL_KINDS[kind]
    names = arch.module_names()
    head = arch.head_name
    linears: dict[str, LinearPlan] = {n: LinearPlan(n, i, p) for n, i, p in names if p.kind == "linear"}
    other_trainable: set[str] = set()  # non-linear modules trained in full (norms, embeddings)
    added_shapes: list[tuple[int, ...]] = []
    copies: list[Part] = []
    notes: list[str] = []
    virtual = prefix = 0

    def train_module(name: str, part: Part) -> None:
        if part.kind == "linear":
            linears[name] = _replace(linears[name], weight_trainable=True, bias_trainable=part.bias)
        else:
            other_trainable.add(name)

    if method == "full":
        for n, _, p in names:
            train_module(n, p)
    elif method == "freeze":
        n_layers = getattr(options, "trainable_layers", 2)
        wanted = list(getattr(options, "modules", []) or [])
        wanted += list(model_kind.head_modules) if getattr(options, "train_head", True) else []
        for n, i, p in names:
            if (i >= 0 and i >= arch.layers - n_layers) or any(_under(n, w) for w in wanted):
                train_module(n, p)
    elif method in ADAPTER_METHODS:
        rank = int(options.r)
        targets = _targets(arch, options.target_modules)
        for n, _, p in names:
            if n not in targets:
                continue
            if p.kind == "linear":
                linears[n] = _replace(linears[n], lora_rank=rank, dora=method == "dora")
                added_shapes += [(rank, p.in_features), (p.out_features, rank)]
                if method == "dora":
                    added_shapes.append((p.out_features,))
            elif p.kind == "embedding":  # lora_embedding_A (r × vocab), lora_embedding_B (dim × r)
                added_shapes += [(rank, p.in_features), (p.out_features, rank)]
                if method == "dora":
                    added_shapes.append((p.out_features,))
        if options.bias in ("all", "lora_only"):
            for n, plan in linears.items():
                if plan.part.bias and (options.bias == "all" or plan.lora_rank):
                    linears[n] = _replace(plan, bias_trainable=True)
            if options.bias == "all":
                notes.append("lora.bias: all — the biases of norms train too; counted for linear layers only")
        if method == "qlora":  # transformers quantizes the blocks' linear layers, never the head or embeddings
            for n, plan in linears.items():
                if plan.layer >= 0:
                    linears[n] = _replace(plan, quantized=True)
        saved = list(options.modules_to_save or [])
        copies = _copies(arch, saved, model_kind)
    elif method == "ia3":
        target_list, feedforward = options.target_modules, options.feedforward_modules
        if target_list is None:
            target_list, default_ff = _ia3_defaults(arch.model_type)
            feedforward = feedforward if feedforward is not None else default_ff
            if target_list is None:
                notes.append(f"peft has no default IA3 modules for {arch.model_type}: nothing counted")
                target_list = []
        feedforward = feedforward or []
        targets = _targets(arch, target_list)
        for n in sorted(targets):
            plan = linears.get(n)
            if plan is None:
                continue
            is_ff = bool(re.fullmatch(feedforward, n)) if isinstance(feedforward, str) else any(n.endswith(f) for f in feedforward)
            linears[n] = _replace(plan, ia3="in" if is_ff else "out")
            added_shapes.append((1, plan.part.in_features) if is_ff else (plan.part.out_features, 1))
        copies = _copies(arch, [], model_kind)
    elif method in PROMPT_METHODS:
        n_virtual = int(options.num_virtual_tokens)
        h = arch.hidden
        if method == "prompt":
            added_shapes.append((n_virtual, h))
            virtual = n_virtual
        elif method == "ptuning":
            e = int(options.encoder_hidden_size)
            added_shapes.append((n_virtual, h))
            if options.encoder_type == "MLP":
                added_shapes += [(e, h), (e,), (e, e), (e,), (h, e), (h,)]
            else:  # a bidirectional LSTM, then Linear(2e, 2e) → Linear(2e, h)
                for layer in range(PTUNING_LSTM_LAYERS):
                    n_in = h if layer == 0 else 2 * e
                    added_shapes += [(4 * e, n_in), (4 * e, e), (4 * e,), (4 * e,)] * 2
                added_shapes += [(2 * e, 2 * e), (2 * e,), (h, 2 * e), (h,)]
            virtual = n_virtual
        else:
            # peft sizes the prefix by the key/value width (grouped-query models: kv heads × head_dim)
            token_dim = arch.kv_dim if arch.gqa_config else h
            width = arch.layers * 2 * token_dim
            if options.prefix_projection:
                e = int(options.encoder_hidden_size)
                added_shapes += [(n_virtual, token_dim), (e, token_dim), (e,), (width, e), (width,)]
            else:
                added_shapes.append((n_virtual, width))
            prefix = n_virtual
        copies = _copies(arch, [], model_kind)
    else:
        raise ValueError(f"unknown method {method!r}")

    plans = list(linears.values())
    trainable_shapes = list(added_shapes)
    for plan in plans:
        if plan.weight_trainable and not (arch.tied_embeddings and plan.name == head and arch.embed_name in other_trainable):
            trainable_shapes.append(plan.part.shapes[0])
        if plan.bias_trainable and plan.part.bias:
            trainable_shapes.append(plan.part.shapes[1])
    tied_head_trains = arch.tied_embeddings and linears.get(head) is not None and linears[head].weight_trainable
    for n, _, p in names:
        if n in other_trainable:
            trainable_shapes += _shapes(p)
    if tied_head_trains and arch.embed_name not in other_trainable:
        other_trainable.add(arch.embed_name)  # the head's weight is the embedding: it trains (counted once, above)
    for part in copies:
        trainable_shapes += _shapes(part)
    trainable = sum(math.prod(s) for s in trainable_shapes)
    added = sum(math.prod(s) for s in added_shapes) + sum(p.params for p in copies)
    frozen_copies = sum(p.params for p in copies)
    layer_trains = [False] * arch.layers
    for plan in plans:
        if plan.layer >= 0 and plan.trains:
            layer_trains[plan.layer] = True
    for n, i, _ in names:
        if i >= 0 and n in other_trainable:
            layer_trains[i] = True
    final_norms = {p.name for p in arch.top if p.kind == "norm"}
    return Trainables(
        method=method, linears=plans, trainable=trainable, total=arch.total_params + added, added=added,
        trainable_shapes=trainable_shapes, layer_trains=layer_trains,
        embedding_trainable=arch.embed_name in other_trainable, final_norm_trainable=bool(final_norms & other_trainable),
        virtual_tokens=virtual, prefix_tokens=prefix,
        quantized_params=sum(p.part.weight_params for p in plans if p.quantized), frozen_copies=frozen_copies,
        trained_modules=other_trainable, notes=notes,
    )  # fmt: skip


def _copies(arch: Architecture, saved: list[str], model_kind: Any) -> list[Part]:
    """The modules peft wraps in a trained copy: `modules_to_save` entries, and a classifier's head."""
    entries = list(saved) + (["classifier", "score"] if model_kind.classifier else [])
    if not entries:
        return []
    return [p for n, _, p in arch.module_names() if any(_under(n, e, suffix_only=True) for e in entries)]


def _replace(plan: LinearPlan, **changes: Any) -> LinearPlan:
    from dataclasses import replace

    return replace(plan, **changes)
