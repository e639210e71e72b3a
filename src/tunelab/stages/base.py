"""What a training stage declares, and the context its recipe builds up.

A stage is one module: its `run(ctx)` recipe, read top to bottom, plus a `STAGE = Stage(...)`
declaration of what the shared code needs to know — the row shapes it trains on, the kind of model
(a table in `models.kinds`), the loss (a table in `training.losses`), the metrics that judge it and
what it asks of the loop (a frozen reference model, generation while training, several processes).
`stages/registry.py` lists the stages, one line each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tunelab.data.splits import Splits
from tunelab.methods.base import Method
from tunelab.models.kinds import MODEL_KINDS, ModelKind
from tunelab.runs.layout import RunDir
from tunelab.training.distributed import World


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    run: Callable[[Context], dict[str, Any]]  # the recipe: train, evaluate, save; returns eval.json's content
    model_kind: str  # models.kinds.MODEL_KINDS key: what is loaded, how rows are batched, the head
    shapes: tuple[str, ...]  # data.shapes.ROW_SHAPES names it trains on
    loss: str  # training.losses.LOSSES key
    headline_metrics: tuple[str, ...]  # the metrics the CLI table and the report lead with
    options: type[BaseModel] | None = None  # the stage's own config section (`classify:`)
    supports_distributed: bool = True  # may run in several processes (torchrun / accelerate)
    reference_model: bool = False  # needs the base as a frozen reference next to the trained model (DPO, KTO, GRPO)
    generates_in_loop: bool = False  # samples completions inside the training loop (GRPO, RLOO)
    # (RunConfig) -> (why, the config key) for a setting this stage cannot train with, refused when the
    # config is read; None when it can
    refuse: Callable[[Any], tuple[str, tuple[str, ...]] | None] | None = None

    @property
    def kind(self) -> ModelKind:
        return MODEL_KINDS[self.model_kind]


@dataclass
class Context:
    """What a recipe has built so far; handed from step to step. Everything a later step reads is a
    field here, set by the step named in its comment."""

    cfg: Any  # the RunConfig (not imported here: config sits above the stage table)
    run: RunDir
    stage: Stage
    method: Method
    resume: bool
    splits: Splits | None = None  # api: from the data check, so the data is read once
    model_path: str = ""  # setup
    tokenizer: Any = None  # setup
    precision: str = "fp32"  # setup
    notes: list[str] = field(default_factory=list)  # every step: shown in the report
    weight_memory: dict[str, int] = field(default_factory=dict)  # apply_method
    labels: list[str] | None = None  # load_base_model: a classifier head's labels
    model: Any = None  # train_and_save: the trained model, still in memory
    # api: opens a finished run (runs.loading.load_run, which sits above the stages), for a stage that
    # uses another run's model (GRPO against a reward run)
    open_run: Callable[[Any], Any] | None = None
    world: World = field(default_factory=World)  # api: this process among the run's (torchrun); rank 0 writes

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 only; the others train and stop)."""
        return self.world.is_main


def base_model_path(cfg: Any, run: RunDir) -> str:
    """Where a run's base weights are: its merged starting run (`model.init_from`), else `model.name`."""
    from tunelab.models.loading import resolve_model

    if cfg.model.init_from:
        return str(run.init_model)
    return resolve_model(cfg.model.name).path


def base_model_kwargs(stage: Stage, method: Method, cfg: Any, precision: str, tokenizer: Any,
                      labels: list[str] | None, *, as_trained: bool = True) -> dict[str, Any]:  # fmt: skip
    """How to load the base for this stage and method: the head's labels, and with `as_trained` the
    method's own loading (4-bit for QLoRA); without it, plain float weights."""
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if as_trained and method.model_kwargs is not None:
        kwargs.update(method.model_kwargs(cfg.method_options(), precision, stage.kind))
    if stage.kind.classifier:
        kwargs.update(labels=labels, pad_token_id=tokenizer.pad_token_id)
    return kwargs
