"""One YAML file describes one run; this module validates it into `RunConfig`.

Errors name the YAML file, the line of the offending key, the dotted key and what was expected,
and unknown keys get a did-you-mean — a config mistake must never surface as a traceback deep
inside training. Besides each key's own type and range: no value anywhere may be a non-finite number,
an integer too large for a C long, or a string with a NUL or a lone surrogate (no file name, prompt or
tokenizer takes them); templates are parsed here; the split fractions must leave rows to train on;
a label set needs two distinct labels. `check_before_loading` adds what needs the file system or the
model's config.json (not its weights): the output folder, `data.max_length` against the model's
positions and the method's module names against the model's modules, built on the meta device.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from tunelab.data.shapes import ROW_SHAPES, known_shape
from tunelab.data.templates import parse_template
from tunelab.errors import TunelabError
from tunelab.methods.registry import METHODS
from tunelab.paths import check_folder_name
from tunelab.stages.registry import STAGES
from tunelab.training.distributed import DistributedOptions
from tunelab.yaml_files import key_lines, merge_dicts, override_keys, parse_overrides, read_mapping

MAX_INT = 2**63 - 1  # what a C long holds: torch, numpy and the tokenizers take no larger integer


class _AtKey(ValueError):
    """A whole-config check's error about one key (pydantic would place it at the top level)."""

    def __init__(self, message: str, loc: tuple[str, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(Section):
    name: str = Field("smollm2-135m-instruct", description="built-in short name, local HF directory, or hub id")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint (off for safety)")
    init_from: str | None = Field(None, description="a finished run's folder (relative to the config) to start from: "
                                  "its trained weights, merged, instead of the base's (SFT → reward model → RL)")  # fmt: skip


class SplitSection(Section):
    validation: float = Field(0.05, ge=0, lt=1, description="fraction of the train file held out for validation")
    test: float = Field(0.05, ge=0, lt=1, description="fraction of the train file held out for the final test")
    seed: int = 42


class DataSection(Section):
    train: str = Field(..., description="path (.jsonl/.json/.csv/.parquet/.txt) or builtin:NAME")
    validation: str | None = None
    test: str | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="source column → field, e.g. {Doctor: answer}")
    shape: str = Field("auto", description="auto (detect) or a row shape: a data.shapes.ROW_SHAPES name")
    template: str | None = Field(None, description="None = the model's chat template; else e.g. '{question}\\n{answer}'")
    system_prompt: str | None = Field(None, description="system message for chat templates (None = template default)")
    train_on_prompt: bool = Field(False, description="also compute the loss on prompt tokens")
    max_length: int = Field(256, gt=8, description="tokens per training sequence; longer rows are truncated")
    limit: int | None = Field(None, gt=0, description="use only the first N (shuffled) training rows")
    split: SplitSection = Field(default_factory=SplitSection)

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, v: str) -> str:
        return known_shape(v, hint=_did_you_mean(v, ["auto", *ROW_SHAPES]))

    @field_validator("template")
    @classmethod
    def _template_parses(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_template(v)
            except TunelabError as err:
                raise ValueError(f"{err.message} (expected {err.expected})") from None
        return v


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after N optimizer steps (overrides epochs)")
    batch_size: int = Field(8, gt=0, description="rows per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float | None = Field(None, ge=0, description="unset: the method's default (see `tunelab validate`); 0 learns nothing")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = (
        "cosine"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    # fused: one kernel per tensor, no temporaries (`adamw_torch` loops over tensors in several passes
    # on a CPU, and on CUDA holds √v of every tensor at once); transformers' own default since torch
    # 2.8, and ~3× faster a step over SmolLM2's 134M parameters on a 2-core CPU
    optimizer: str = Field("adamw_torch_fused", description="any transformers `optim` name (OptimizerNames)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs and CPUs that support it, else fp32"
    )
    padding_free: bool = Field(True, description="pack a batch's rows into one sequence: no compute on padding")
    share_prefix: bool = Field(True, description="packed rows compute the leading prompt tokens they all share "
                               "(a chat template's system prompt) once: the same loss and gradients")
    gradient_checkpointing: bool = False
    logging_steps: int = Field(5, gt=0)
    eval_steps: int | None = Field(50, gt=0, description="evaluate on the validation split every N steps")
    save_steps: int | None = Field(50, gt=0, description="checkpoint every N steps (for --resume)")
    save_total_limit: int = Field(2, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0, description="stop after N evals without improvement")
    load_best_model_at_end: bool = Field(True, description="keep the checkpoint with the lowest eval loss")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="numpy's seeds are 32-bit")
    threads: int | None = Field(None, gt=0, description="CPU threads for torch (None = torch's default)")
    report_to: list[str] = Field(
        default_factory=list, description="experiment trackers besides metrics.jsonl: tensorboard, mlflow, wandb, trackio"
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, v: Any) -> Any:
        from tunelab.training.trackers import TRACKERS

        names = [v] if isinstance(v, str) else v
        if not isinstance(names, list):
            return v
        names = [n for n in names if n != "none"]
        for name in names:
            if name not in TRACKERS:
                raise ValueError(f"unknown tracker {name!r}{_did_you_mean(str(name), list(TRACKERS))}; expected "
                                 f"any of {', '.join(TRACKERS)} (a list, or one name)")  # fmt: skip
        return list(dict.fromkeys(names))

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        names = optimizer_names() if v not in ("adamw_torch_fused", "adamw_torch") else None
        if names and v not in names:
            raise ValueError(f"unknown optimizer {v!r}{_did_you_mean(v, names)}; expected a transformers optimizer "
                             "name such as adamw_torch, adamw_torch_fused, adafactor, sgd")  # fmt: skip
        return v


class EvaluationSection(Section):
    enabled: bool = True
    compare_base: bool = Field(True, description="also evaluate the base model on the same held-out rows")
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(16, gt=0, description="rows per forward when scoring (perplexity, classes, rewards)")
    generation_batch_size: int = Field(
        128, gt=0, description="prompts decoded together (fewer where their KV cache would not fit)"
    )
    max_examples: int | None = Field(None, gt=0, description="evaluate on at most N held-out rows")
    probes: list[str] | str | None = Field(
        "builtin", description='off-task prompts answered by base and tuned: "builtin", a list, a .txt/.jsonl file, or none'
    )
    samples_in_report: int = Field(20, ge=0)


class _RunConfigBase(Section):
    name: str = Field("run", description="run name: the run directory is OUTPUT_DIR/NAME")
    output_dir: str = "runs"
    model: ModelSection = Field(default_factory=ModelSection)
    task: str = "sft"
    method: str = "lora"
    data: DataSection
    training: TrainingSection = Field(default_factory=TrainingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    distributed: DistributedOptions = Field(default_factory=DistributedOptions)  # several processes (torchrun)
    _source_dir: Path | None = PrivateAttr(None)  # relative data paths resolve here (the config's folder)
    _where: _Where | None = PrivateAttr(None)  # the file and key lines it was read from, for later errors
    _method_defaults: dict[str, Any] = PrivateAttr(default_factory=dict)  # "training.lr" → value filled in

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: str) -> str:
        return check_folder_name(v)

    @field_validator("output_dir")
    @classmethod
    def _expand_home(cls, v: str) -> str:
        return os.path.expanduser(v)

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("task", "method")
    @classmethod
    def _registered(cls, v: str, info: Any) -> str:
        table = STAGES if info.field_name == "task" else METHODS
        if v not in table:
            raise ValueError(
                f"unknown {info.field_name} {v!r}{_did_you_mean(v, table)}; expected one of {', '.join(table)}"
            )
        return v

    @model_validator(mode="after")
    def _options_match_task(self) -> _RunConfigBase:
        for name, task in STAGES.items():
            if name != self.task and name in self.model_fields_set and task.options is not None:
                raise _AtKey(f"options section '{name}:' given but task is '{self.task}'; set task: {name}", (name,))
        return self

    @model_validator(mode="after")
    def _stage_can_train_with_it(self) -> _RunConfigBase:
        refuse = STAGES[self.task].refuse
        problem = refuse(self) if refuse is not None else None
        if problem is not None:
            raise _AtKey(*problem)
        return self

    @model_validator(mode="after")
    def _options_match_method(self) -> _RunConfigBase:
        # An options section for another method is almost always a typo'd `method:` — say so up front.
        for name in METHODS:
            if name != self.method and name in self.model_fields_set and METHODS[name].options is not None:
                where = (
                    f", or move these options under '{self.method}:'"
                    if METHODS[self.method].options is not None
                    else f" (method '{self.method}' has no options)"
                )
                raise _AtKey(
                    f"options section '{name}:' given but method is '{self.method}'; set method: {name}{where}", (name,)
                )
        return self

    @model_validator(mode="after")
    def _fill_method_defaults(self) -> _RunConfigBase:
        # Written into the section's values without counting as set by the user, so a config
        # re-resolved for another method (`--set method=ia3`) gets that method's defaults instead.
        for key, value in METHODS[self.method].training_defaults.items():
            if key not in self.training.model_fields_set:
                self.training.__dict__[key] = value
                self._method_defaults[f"training.{key}"] = value
        if self.training.lr is None:
            raise _AtKey(f"method {self.method!r} has no default learning rate: set training.lr", ("training", "lr"))
        return self

    def method_defaults_note(self) -> str | None:
        """One line saying which values came from the method's defaults (for validate and run notes)."""
        if not self._method_defaults:
            return None
        values = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in self._method_defaults.items())
        return f"{values}: method {self.method}'s default (set it in the config to change it)"

    def method_options(self) -> BaseModel | None:
        return getattr(self, self.method, None)

    def task_options(self) -> BaseModel | None:
        return getattr(self, self.task, None)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def init_run_dir(self) -> Path | None:
        """The finished run `model.init_from` names (relative paths: from the config's folder)."""
        if not self.model.init_from:
            return None
        path = Path(self.model.init_from).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else (self._source_dir or Path.cwd()) / path))


# Each method or task with options contributes a section named after it (`lora:`, `classify:`), so
# adding one is a module plus one registry entry — this class never changes.
RunConfig = create_model(
    "RunConfig",
    __base__=_RunConfigBase,
    **{
        name: (entry.options, Field(default_factory=entry.options))
        for name, entry in {**STAGES, **METHODS}.items()
        if entry.options is not None
    },
)


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the location of an error (for did-you-mean on unknown keys)."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


_TYPE_WORDS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
    "literal_error": None,
    "missing": None,
}


class _Where:
    """Where a config came from: its file, the line of each key and the keys `--set` gave, so an error
    found at any point (validation, the model's config.json) names the file, and the line where the
    file gives one."""

    def __init__(self, file: str, lines: dict[tuple[str, ...], int] | None = None,
                 overridden: set[tuple[str, ...]] | None = None) -> None:  # fmt: skip
        self.file = file
        self.lines = lines or {}
        self.overridden = overridden or set()

    @staticmethod
    def loc(field: str | None) -> tuple[str, ...]:
        """"lora.target_modules[1]" → ("lora", "target_modules", "1")."""
        return tuple(p for p in (field or "").replace("[", ".").replace("]", "").split(".") if p)

    def line(self, loc: tuple[str, ...]) -> int | None:
        for n in range(len(loc), 0, -1):  # the nearest enclosing key the file gives
            if loc[:n] in self.overridden:
                return None
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return None

    def error(self, message: str, *, field: str | None, expected: str | None = None, kind: str | None = "config",
              loc: tuple[str, ...] | None = None) -> TunelabError:  # fmt: skip
        loc = self.loc(field) if loc is None else loc
        if any(loc[:n] in self.overridden for n in range(len(loc), 0, -1)):
            message += " (given by --set)"
        return TunelabError(message, file=self.file, line=self.line(loc), field=field, expected=expected, kind=kind)

    def attach(self, err: TunelabError) -> TunelabError:
        """`err` naming this config's file (and the line of its field) when it names no file of its own."""
        if err.file is not None:
            return err
        field = err.field if err.field and not err.field.startswith("-") else None
        new = self.error(err.message, field=field, expected=err.expected, kind=err.kind)
        new.field = err.field
        return new


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_error(err: dict[str, Any], where: _Where) -> TunelabError:
    loc = tuple(str(p) for p in err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, _AtKey):
        loc = (*loc, *cause.loc)
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return where.error(f"unknown key{_did_you_mean(loc[-1], _section_fields(loc))}", field=key, loc=loc, kind=None)
    if kind == "missing":
        return where.error("required key is missing", field=key, loc=loc, kind=None)
    msg = err["msg"].removeprefix("Value error, ")
    expected = _TYPE_WORDS.get(kind)
    if expected:
        return where.error(f"got {_short(err.get('input'))}", field=key, loc=loc, expected=expected, kind=None)
    return where.error(msg, field=key, loc=loc, kind=None)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_values(raw: Any, where: _Where) -> None:
    """Refuse, anywhere in the config, what no option takes: a non-finite number (`.inf`, `.nan`), an
    integer beyond a C long, a string with a NUL or a lone surrogate (neither is a path nor text a
    tokenizer or a terminal takes)."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), raw)]
    seen: set[int] = set()
    while stack:
        loc, value = stack.pop()
        field = ".".join(loc) or "(top level)"
        if isinstance(value, dict | list | tuple):
            if id(value) in seen:
                continue
            seen.add(id(value))
            items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            for k, _ in items:
                if isinstance(k, str):
                    _check_string(k, loc + (k,), where, "key")
            stack.extend((loc + (str(k),), v) for k, v in reversed(items))
        elif isinstance(value, float) and not math.isfinite(value):
            raise where.error(f"got {value!r}", field=field, loc=loc, expected="a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise where.error(f"integer of {len(str(abs(value)))} digits is too large", field=field, loc=loc,
                              expected=f"a number between -{MAX_INT} and {MAX_INT}")  # fmt: skip
        elif isinstance(value, str):
            _check_string(value, loc, where, "value")


def _check_string(text: str, loc: tuple[str, ...], where: _Where, what: str) -> None:
    field = ".".join(loc) or "(top level)"
    if "\0" in text:
        raise where.error(f"the {what} contains a NUL character", field=field.replace("\0", "\\0"), loc=loc,
                          expected="text without NUL (\\0) characters")  # fmt: skip
    bad = _SURROGATE.search(text)
    if bad:
        raise where.error(f"the {what} contains a lone UTF-16 surrogate (\\u{ord(bad.group()):04x}), which is "
                          "not a character", field=field.encode("utf-8", "backslashreplace").decode(), loc=loc,
                          expected="valid Unicode text")  # fmt: skip


def _check_consistency(cfg: _RunConfigBase, where: _Where) -> None:
    """What no single key gets wrong: the carved fractions must leave rows to train on; a label set
    needs two labels, each once."""
    d = cfg.data
    carved = (d.validation is None) * d.split.validation + (d.test is None) * d.split.test
    if carved >= 1:
        raise where.error(f"validation {d.split.validation:g} + test {d.split.test:g} holds out {carved:.0%} of the "
                          "training rows, leaving none to train on", field="data.split",
                          expected="fractions that add up to less than 1, or validation/test files")  # fmt: skip
    labels = getattr(cfg.task_options(), "labels", None)
    if labels is not None:
        field = f"{cfg.task}.labels"
        if len(labels) < 2:
            raise where.error(f"has {len(labels)} label{'' if len(labels) == 1 else 's'}", field=field,
                              expected="at least two distinct labels, or none to use the labels in the data")  # fmt: skip
        twice = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
        if twice is not None:
            raise where.error(f"label {twice!r} is given twice", field=field, expected="each label once")


def _validate(raw: Any, where: _Where) -> RunConfig:
    _check_values(raw, where)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise _format_error(exc.errors()[0], where) from exc
    except TunelabError as err:  # a validator's own error (the shape table's, …)
        raise where.attach(err) from None
    _check_consistency(cfg, where)
    cfg._where = where
    return cfg


def config_from_dict(raw: dict[str, Any], *, file: str = "<config>", text: str | None = None) -> RunConfig:
    """Validate a config mapping; `text` (the YAML source) lets errors carry line numbers."""
    return _validate(raw, _Where(file, key_lines(text) if text else {}))


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `--set` overrides, validate."""
    path = Path(path)
    raw, text = read_mapping(path, "a YAML run config")
    where = _Where(str(path), key_lines(text), override_keys(overrides))
    try:
        extra = parse_overrides(overrides)
    except TunelabError as err:
        raise where.attach(err) from None
    cfg = _validate(merge_dicts(raw, extra), where)
    cfg._source_dir = path.parent.resolve()  # relative data paths are read next to the config
    return cfg


def resolve_config(config: Any, overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from a YAML path, a mapping or a RunConfig, with `--set` overrides applied (a
    RunConfig keeps the folder its relative data paths resolve in)."""
    if config is None:  # every key but data.train has a default: `--set data.train=FILE` is a whole config
        return config_from_dict(parse_overrides(overrides), file="--set")
    if isinstance(config, str | Path):
        return load_config(config, overrides)
    if isinstance(config, dict):
        return config_from_dict(merge_dicts(config, parse_overrides(overrides)))
    if not overrides:
        return config
    raw = config_dict(config)
    for key in config._method_defaults:  # filled from the old method: the new one brings its own
        section, name = key.split(".")
        raw[section].pop(name, None)
    cfg = config_from_dict(merge_dicts(raw, parse_overrides(overrides)))
    cfg._source_dir = config._source_dir
    return cfg


@functools.cache
def optimizer_names() -> tuple[str, ...] | None:
    """transformers' optimizer names (`TrainingArguments.optim`, its `OptimizerNames`). Importing its
    training module imports torch and bitsandbytes (seconds), so unless it is imported already the names
    are read from its source; None when neither works (the name is then checked when training starts)."""
    module = sys.modules.get("transformers.training_args")
    if module is not None and hasattr(module, "OptimizerNames"):
        return tuple(str(o.value) for o in module.OptimizerNames)
    try:
        spec = importlib.util.find_spec("transformers")
        source = Path(spec.origin).with_name("training_args.py").read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.name == "OptimizerNames":
                return tuple(s.value.value for s in node.body if isinstance(s, ast.Assign)
                             and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)) or None  # fmt: skip
    except Exception:  # noqa: BLE001 - any failure only skips a check that training repeats
        return None
    return None


# -- checks that need the file system or the model's config.json ------------------------------------


def check_before_loading(cfg: _RunConfigBase, *, output_dir: bool = True, model: bool = True,
                         strict: bool = True, world_size: int | None = None,
                         local_size: int | None = None) -> list[str]:  # fmt: skip
    """What a config gets wrong that only the file system or the model's config.json shows, found
    before any weights load: an output folder that cannot be made (a file in its place), `data.max_length`
    beyond the model's positions, and the method's module names (`lora.target_modules`,
    `freeze.modules`, …) against the model's modules — a skeleton built from config.json on the meta
    device (no weights, well under a second once transformers is imported). Errors name the config's file
    and line. Returns notes on what could not be checked; with `strict=False` (`tunelab validate`) a
    model that is not available here (offline hub, package not installed) is such a note, not an error."""
    where = cfg._where or _Where("<config>")
    notes: list[str] = []
    _check_distributed(cfg, where, world_size, local_size)  # `world_size` processes (default: torchrun's), `local_size` here
    if output_dir:
        _check_output_dir(cfg, where)
    notes += _check_init_from(cfg, where, strict=strict)
    _check_optimizer(cfg, where)
    _check_trackers(cfg, where)
    if cfg.evaluation.enabled and isinstance(cfg.evaluation.probes, str):  # a probe file: read before any folder is made
        from tunelab.evaluation.probes import load_probes

        load_probes(cfg.evaluation.probes, base_dir=cfg._source_dir)
    if model:
        notes += _check_model(cfg, where, strict=strict)
    return notes


def _check_trackers(cfg: _RunConfigBase, where: _Where) -> None:
    from tunelab.training.trackers import missing_tracker

    missing = missing_tracker(cfg.training.report_to)
    if missing is not None:
        raise where.error(f"tracker {missing[0]!r} is not installed", field="training.report_to",
                          expected=f"{missing[1]}, or leave it out of training.report_to")  # fmt: skip


def _check_optimizer(cfg: _RunConfigBase, where: _Where) -> None:
    """An optimizer whose package is missing or whose hardware is absent (apex, torch_xla, NPUs, GaLore,
    schedule-free, torchao's 4/8-bit AdamW, …) is refused now, with transformers' own reason, instead
    of after the model has loaded."""
    name = cfg.training.optimizer
    if name in ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd"):  # torch or transformers itself
        return
    import tempfile

    import torch
    from transformers import Trainer, TrainingArguments

    if name.startswith("paged_") and not torch.cuda.is_available():
        plain = name.removeprefix("paged_")
        plain = plain if plain in (optimizer_names() or ()) else "adamw_8bit"
        raise where.error(f"optimizer {name!r} cannot run here: paged optimizers move their states between GPU "
                          "and CPU memory, and this machine has no GPU (bitsandbytes would quietly run the plain one)",
                          field="training.optimizer", expected=f"{plain!r}, the same optimizer without paging")  # fmt: skip
    try:
        args = TrainingArguments(output_dir=tempfile.gettempdir(), optim=name, report_to=[])
        Trainer.get_optimizer_cls_and_kwargs(args, torch.nn.Linear(2, 2))
    except (ImportError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())
        expected = "an optimizer this machine has, e.g. adamw_torch, adamw_torch_fused, adafactor, adamw_8bit, sgd"
        raise where.error(f"optimizer {name!r} cannot run here: {reason}", field="training.optimizer",
                          expected=expected) from None  # fmt: skip


def _check_distributed(cfg: _RunConfigBase, where: _Where, world_size: int | None, local_size: int | None) -> None:
    from tunelab.training import distributed

    current = distributed.world()
    size = current.size if world_size is None else world_size
    launched = current.launched or world_size is not None  # a count given: the launcher is about to start them
    if size <= 1 and not launched:
        return
    import torch

    found = distributed.problems(cfg.distributed, world_size=size, method=METHODS[cfg.method],
                                 stage=STAGES[cfg.task], gpus=torch.cuda.device_count(),
                                 local_size=current.local_size if local_size is None else local_size,
                                 launched=launched)  # fmt: skip
    distributed.raise_problems(found, where)
    if cfg.distributed.strategy == "deepspeed":
        try:
            distributed.check_deepspeed_config(distributed.deepspeed_config(cfg.distributed.deepspeed), cfg.training)
        except TunelabError as err:
            raise where.attach(err) from None


def _check_output_dir(cfg: _RunConfigBase, where: _Where) -> None:
    out = Path(cfg.output_dir)
    expected = "a folder for run directories, or a path where one can be made"
    try:
        existing = out
        while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            what = "is a file" if existing == out else f"is inside {existing}, which is a file"
            raise where.error(f"{what}, not a folder", field="output_dir", expected=expected)
        if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
            raise where.error(f"cannot make folders in {existing} (permission denied)", field="output_dir",
                              expected=expected)  # fmt: skip
        run = cfg.run_dir
        if run.exists() and not run.is_dir():
            raise where.error(f"{run} is a file, not a run directory", field="name",
                              expected="a name whose run directory is free or a tunelab run")  # fmt: skip
    except OSError as err:  # a name too long for the file system, …
        raise where.error(f"cannot use it: {err.strerror or err}", field="output_dir", expected=expected) from None


def _check_init_from(cfg: _RunConfigBase, where: _Where, *, strict: bool) -> list[str]:
    """`model.init_from`: a complete run whose trained weights can be folded into a model this task can
    start from. Its base becomes this run's `model.name` (a different one given here is refused). With
    `strict=False` (`tunelab validate` of a chain whose earlier step has not run yet) a missing run is a note."""
    from tunelab.runs.layout import RunDir

    folder = cfg.init_run_dir()
    if folder is None or RunDir(cfg.run_dir).init_model_ready:  # resumed: the merged start is in the run already
        return []
    if not strict and not folder.exists():
        return [f"model.init_from not checked: {folder} does not exist yet (run the step that makes it first)"]
    init = RunDir(folder)
    expected = "the folder of a finished tunelab run whose model this task can start from"
    if folder.resolve() == cfg.run_dir.resolve():
        raise where.error("is this run's own folder", field="model.init_from", expected=expected)
    try:
        init.require_complete()
        init_cfg = load_config(init.config)
    except TunelabError as err:
        raise where.error(f"{folder}: {err.message}", field="model.init_from", expected=expected) from None
    init_stage, stage = STAGES[init_cfg.task], STAGES[cfg.task]
    if not METHODS[init_cfg.method].mergeable:
        raise where.error(f"{folder} is a {init_cfg.method} run: its virtual tokens cannot be folded into the weights, "
                          "so no run can start from them", field="model.init_from",
                          expected="a run trained with a mergeable method (full, freeze, lora, dora, qlora, ia3)")  # fmt: skip
    if init_stage.kind.classifier and init_cfg.task != cfg.task:
        raise where.error(f"{folder} is a {init_cfg.task} run: its model ends in a score head, not a language-model "
                          f"head, so a {cfg.task} run cannot start from it", field="model.init_from",
                          expected=f"a generative run (sft, pretrain, dpo, …){' or another ' + cfg.task + ' run' if stage.kind.classifier else ''}")  # fmt: skip
    if "name" in cfg.model.model_fields_set and cfg.model.name != init_cfg.model.name:
        raise where.error(f"is {cfg.model.name!r}, but model.init_from ({folder}) was trained from "
                          f"{init_cfg.model.name!r}", field="model.name",
                          expected="no model.name with init_from (the run's own base is used), or the same one")  # fmt: skip
    cfg.model.name = init_cfg.model.name
    return []


def _check_model(cfg: _RunConfigBase, where: _Where, *, strict: bool) -> list[str]:
    from tunelab.models.loading import max_positions, model_files, model_skeleton

    name = cfg.model.name
    try:
        files = model_files(name)
    except TunelabError as err:
        if not strict and err.kind == "model_unavailable":
            return [f"not checked against the model: {err.message}"]
        if err.file is not None and err.field == "model.name":  # the model's folder or config.json: name both
            at = f"{err.file}:{err.line}" if err.line is not None else err.file
            raise where.error(f"{at}: {err.message}", field="model.name", expected=err.expected, kind=err.kind) from None
        raise where.attach(err) from None
    if files is None:
        return [f"not checked against the model: {name}'s config.json cannot be read here"]
    method, options = METHODS[cfg.method], cfg.method_options()
    virtual = getattr(options, "num_virtual_tokens", 0) if method.virtual_tokens else 0
    limit = max_positions(files.config)
    if limit is not None and cfg.data.max_length + virtual > limit:
        plus = f" + {virtual} virtual tokens ({cfg.method}.num_virtual_tokens)" if virtual else ""
        raise where.error(f"is {cfg.data.max_length}{plus}, but {name} has {limit} positions (its config.json)",
                          field="data.max_length", expected=f"at most {limit - virtual}")  # fmt: skip
    if method.check_modules is None or options is None:
        return []
    stage = STAGES[cfg.task]
    built: list[Any] = []

    def skeleton() -> Any:  # built only when an option names modules (importing torch takes seconds)
        if not built:
            built.append(model_skeleton(files, stage.model_kind, trust_remote_code=cfg.model.trust_remote_code))
        return built[0]

    try:
        method.check_modules(skeleton, options, stage.kind, cfg.method)
    except TunelabError as err:
        raise where.attach(err) from None
    if built and built[0] is None:
        return [f"{cfg.method} options not checked against the model: transformers cannot build {name} from its config"]
    return []


def config_dict(cfg: _RunConfigBase) -> dict[str, Any]:
    """The resolved config as plain data, with only the chosen method's options section."""
    others = {name for name in METHODS if name != cfg.method} | {name for name in STAGES if name != cfg.task}
    return cfg.model_dump(mode="json", exclude=others)


def dump_config(cfg: _RunConfigBase) -> str:
    return yaml.safe_dump(config_dict(cfg), sort_keys=False, allow_unicode=True)
