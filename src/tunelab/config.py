"""One YAML file describes one run; this module validates it into `RunConfig`.

Errors name the YAML file, the line of the offending key, the dotted key and what was expected,
and unknown keys get a did-you-mean — a config mistake must never surface as a traceback deep
inside training.
"""

from __future__ import annotations

import difflib
import os
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
from tunelab.errors import TunelabError
from tunelab.methods.registry import METHODS
from tunelab.paths import check_folder_name
from tunelab.stages.registry import STAGES
from tunelab.yaml_files import key_lines, merge_dicts, parse_overrides, read_mapping


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field("smollm2-135m-instruct", description="built-in short name, local HF directory, or hub id")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint (off for safety)")


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
    optimizer: str = Field("adamw_torch", description="any transformers `optim` name")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs and CPUs that support it, else fp32"
    )
    padding_free: bool = Field(True, description="pack a batch's rows into one sequence: no compute on padding")
    gradient_checkpointing: bool = False
    logging_steps: int = Field(5, gt=0)
    eval_steps: int | None = Field(50, gt=0, description="evaluate on the validation split every N steps")
    save_steps: int | None = Field(50, gt=0, description="checkpoint every N steps (for --resume)")
    save_total_limit: int = Field(2, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0, description="stop after N evals without improvement")
    load_best_model_at_end: bool = Field(True, description="keep the checkpoint with the lowest eval loss")
    seed: int = 42
    threads: int | None = Field(None, gt=0, description="CPU threads for torch (None = torch's default)")


class EvaluationSection(Section):
    enabled: bool = True
    compare_base: bool = Field(True, description="also evaluate the base model on the same held-out rows")
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(16, gt=0)
    max_examples: int | None = Field(None, gt=0, description="evaluate on at most N held-out rows")
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
    _source_dir: Path | None = PrivateAttr(None)  # relative data paths resolve here (the config's folder)
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
                raise ValueError(f"options section '{name}:' given but task is '{self.task}'; set task: {name}")
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
                raise ValueError(
                    f"options section '{name}:' given but method is '{self.method}'; set method: {name}{where}"
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
            raise ValueError(f"method {self.method!r} has no default learning rate: set training.lr")
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
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "literal_error": None,
    "missing": None,
}


def _format_error(err: dict[str, Any], file: str, key_lines: dict[tuple[str, ...], int]) -> TunelabError:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    line = None
    for n in range(len(loc), 0, -1):  # nearest enclosing key that exists in the file
        if loc[:n] in key_lines:
            line = key_lines[loc[:n]]
            break
    kind = err["type"]
    if kind == "extra_forbidden":
        return TunelabError(
            f"unknown key{_did_you_mean(loc[-1], _section_fields(loc))}", file=file, line=line, field=key
        )
    if kind == "missing":
        return TunelabError("required key is missing", file=file, line=line, field=key)
    msg = err["msg"].removeprefix("Value error, ")
    expected = _TYPE_WORDS.get(kind)
    got = err.get("input")
    if expected:
        return TunelabError(f"got {got!r}", file=file, line=line, field=key, expected=expected)
    return TunelabError(msg, file=file, line=line, field=key)


def config_from_dict(raw: dict[str, Any], *, file: str = "<config>", text: str | None = None) -> RunConfig:
    """Validate a config mapping; `text` (the YAML source) lets errors carry line numbers."""
    lines = key_lines(text) if text else {}
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        raise _format_error(errors[0], file, lines) from exc


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply `--set` overrides, validate."""
    path = Path(path)
    raw, text = read_mapping(path, "a YAML run config")
    raw = merge_dicts(raw, parse_overrides(overrides))
    cfg = config_from_dict(raw, file=str(path), text=text)
    cfg._source_dir = path.parent.resolve()  # relative data paths are read next to the config
    return cfg


def resolve_config(config: Any, overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from a YAML path, a mapping or a RunConfig, with `--set` overrides applied (a
    RunConfig keeps the folder its relative data paths resolve in)."""
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


def config_dict(cfg: _RunConfigBase) -> dict[str, Any]:
    """The resolved config as plain data, with only the chosen method's options section."""
    others = {name for name in METHODS if name != cfg.method} | {name for name in STAGES if name != cfg.task}
    return cfg.model_dump(mode="json", exclude=others)


def dump_config(cfg: _RunConfigBase) -> str:
    return yaml.safe_dump(config_dict(cfg), sort_keys=False, allow_unicode=True)
