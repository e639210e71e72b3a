"""What every training method provides: its options, how to apply it to a model, how to load it back,
and what it can do (pack rows, slice logits, be merged) — so other code asks the method, never its name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tunelab.errors import TunelabError

# (quantized: bool) -> the run's base model, loaded as the method trained on it (True) or in float (False)
LoadBase = Callable[[bool], Any]


@dataclass
class MergeBase:
    """What an adapter is folded into by `tunelab merge`."""

    base: Any  # the float base to merge into
    trained_on: Any = None  # the base the adapter actually ran on, when it differs (4-bit): reference logits
    notes: list[str] = field(default_factory=list)
    weights_from: str | None = None  # how the float weights were obtained, when not the original ones


def float_merge_base(load_base: LoadBase, options: Any) -> MergeBase:
    """Most adapters fold into the float base they were trained on."""
    return MergeBase(load_base(False))


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    options: type[BaseModel] | None  # the method's own config section (`lora:`), None when it has no knobs
    apply: Callable[..., Any]  # (model, options, kind: ModelKind) -> model ready to train
    load: Callable[..., Any]  # (base_model, weights_dir: Path) -> model with trained weights
    weights_dir: str  # where the trained weights go inside the run directory
    save: Callable[[Any, Path], None] | None = None  # default: model.save_pretrained(dir, safe_serialization=True)
    # peft prompt learning: virtual tokens are prepended to every row, so rows cannot be packed into one
    # sequence, token positions shift (no logits for trained positions only) and the KV cache is peft's own
    virtual_tokens: bool = False
    # extra from_pretrained kwargs for the base model (e.g. 4-bit quantization): (options, precision, kind) -> dict
    model_kwargs: Callable[[Any, str, Any], dict[str, Any]] | None = None
    # whole model saved (full, freeze): the saved directory replaces the base at load time
    saves_whole_model: bool = False
    # the trained weights can be folded into the base (`tunelab merge`); virtual tokens cannot
    mergeable: bool = True
    # (load_base, options) -> MergeBase: what `tunelab merge` folds the adapter into (see qlora)
    merge_base: Callable[[LoadBase, Any], MergeBase] = float_merge_base
    # (base model) -> base model: called once on the base a run will train, right after loading and
    # before anything runs it (e.g. QLoRA keeps bitsandbytes from repacking its weights for inference)
    prepare_for_training: Callable[[Any], Any] | None = None
    # while training under autocast its frozen base linears may be held in the autocast dtype
    # (`training.frozen_weights`): not DoRA, whose magnitude reads the base weight outside autocast
    frozen_weights_in_half: bool = True
    # `training:` values that make this method learn, used where the config does not set them (a
    # prompt-tuning run needs a learning rate a hundred times LoRA's); shown by `tunelab validate`
    training_defaults: dict[str, Any] = field(default_factory=dict)
    # (skeleton, options, kind: ModelKind, section: the options' config key) -> None: raises a TunelabError
    # for an option naming modules the model lacks, before any weights load. `skeleton()` builds the
    # model on the meta device (None when it cannot be built): call it only when an option names modules
    check_modules: Callable[[Callable[[], Any], Any, Any, str], None] | None = None

    @property
    def packs_rows(self) -> bool:
        return not self.virtual_tokens

    @property
    def sliced_logits(self) -> bool:
        return not self.virtual_tokens

    @property
    def holds_frozen_in_half(self) -> bool:
        """Whether training holds the frozen base linears in the autocast dtype (`training.frozen_weights`);
        not for a method that saves the whole model: its checkpoints would hold the rounded weights."""
        return self.frozen_weights_in_half and not self.saves_whole_model


def adaptable_layers(peft_kinds: tuple[str, ...]) -> tuple[type, ...]:
    """Layer classes peft adapters wrap: "linear" (nn.Linear and GPT-2's Conv1D), "conv", "embedding",
    "attention" (nn.MultiheadAttention)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    table = {"linear": (torch.nn.Linear, Conv1D), "conv": (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d),
             "embedding": (torch.nn.Embedding,), "attention": (torch.nn.MultiheadAttention,)}  # fmt: skip
    return tuple(cls for kind in peft_kinds for cls in table[kind])


def module_matches(name: str, entry: str) -> bool:
    """peft's rule for a module name in a list option: the full name, or its last dotted parts."""
    return name == entry or name.endswith("." + entry)


def check_module_names(model: Any, entries: list[str] | str | None, field: str, *, layers: tuple[type, ...] | None,
                       what: str) -> None:  # fmt: skip
    """Every entry of a module-name option (or a regex, for a string) must match a module of `model` and,
    with `layers`, only modules of those classes (peft refuses to wrap any other it matches); else one error
    naming the entry, a did-you-mean and the model's own names. `what`: the method, for the message."""
    import difflib
    import re

    if entries is None or model is None:
        return
    modules = [(n, m) for n, m in model.named_modules() if n]
    usable = [(n, m) for n, m in modules if layers is None or isinstance(m, layers)]
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n, _ in usable if not n.rsplit(".", 1)[-1].isdigit()})
    listing = ", ".join(leaf_names[:30]) + (", …" if len(leaf_names) > 30 else "")
    kinds = "layers " + what + " can adapt" if layers is not None else "modules"
    if isinstance(entries, str):
        try:
            pattern = re.compile(entries)
        except re.error as err:
            raise TunelabError(f"{entries!r} is not a valid regular expression ({err})", field=field,
                               expected="a list of module names, 'all-linear', or a regular expression") from None  # fmt: skip
        hits = [(n, m) for n, m in modules if pattern.fullmatch(n)]
        example = usable[0][0] if usable else "…"
        if not hits:
            raise TunelabError(f"the regular expression {entries!r} matches none of the model's {kinds}", field=field,
                               expected=f"a pattern matching whole module names such as {example!r}, or a list of "
                                        f"names: {listing}")  # fmt: skip
        _refuse_unusable(hits, layers, repr(entries), field, what, f"names of the model's {kinds}: {listing}")
        return
    for index, entry in enumerate(entries):
        hits = [(n, m) for n, m in modules if module_matches(n, str(entry))]
        where = f"{field}[{index}]"
        if not hits:
            close = difflib.get_close_matches(str(entry), leaf_names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TunelabError(f"{str(entry)!r} matches no module of the model{hint}", field=where,
                               expected=f"names of the model's {kinds}: {listing}")  # fmt: skip
        _refuse_unusable(hits, layers, repr(str(entry)), where, what, f"names of the model's {kinds}: {listing}")


def _refuse_unusable(hits: list[tuple[str, Any]], layers: tuple[type, ...] | None, entry: str, field: str, what: str,
                     expected: str) -> None:  # fmt: skip
    bad = [(n, m) for n, m in hits if layers is not None and not isinstance(m, layers)]
    if bad:
        name, module = bad[0]
        raise TunelabError(f"{entry} matches {name}, a {type(module).__name__}, which {what} cannot adapt", field=field,
                           expected=expected)  # fmt: skip


def save_weights(method: Method, model: Any, directory: Path) -> None:
    """Save with safetensors only; never pickle."""
    if method.save is not None:
        method.save(model, directory)
    else:
        model.save_pretrained(directory, safe_serialization=True)


def load_adapter(base_model: Any, weights_dir: Path) -> Any:
    """Any peft adapter (LoRA, DoRA, QLoRA, IA3, prompt methods) loads the same way."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(weights_dir))


def load_whole_model(base_model: Any, weights_dir: Path) -> Any:
    """For methods that save a complete model: it is the base (see Method.saves_whole_model)."""
    return base_model


def uses_virtual_tokens(model: Any) -> bool:
    """Whether an in-memory model prepends virtual tokens (a peft prompt-learning adapter is active):
    the runtime counterpart of `Method.virtual_tokens`, for code that holds a model, not a method."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))
