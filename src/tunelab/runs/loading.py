"""The one way to open a finished run: its config, and its trained model (or its base model) with the
tokenizer, prompt format and labels it was trained with. Everything that uses a finished run —
generate, chat, serve, eval, compare, bench, merge, export — goes through `load_run`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, load_config
from tunelab.errors import TunelabError
from tunelab.runs.layout import RunDir


@dataclass
class LoadedRun:
    run: RunDir
    cfg: RunConfig
    model: Any
    tokenizer: Any
    fmt: Any  # PromptFormat, or None for a classification run
    shape: str  # the row shape prompts are built in ("messages", "qa", "text", "classification", …)
    labels: list[str] | None = None
    is_base: bool = False  # the run's base model (with the run's format), not its trained weights

    def require_generative(self) -> None:
        if self.fmt is None:
            raise TunelabError(
                f"run is a {self.cfg.task} run; it classifies text rather than generating it",
                file=str(self.run.path),
                expected='a run of a generative task (sft, pretrain); for this one `tunelab predict RUN --text "..."`',
            )

    def require_classifier(self) -> None:
        if self.labels is None:
            raise TunelabError(
                f"run is a {self.cfg.task} run, not a classifier", file=str(self.run.path),
                expected='`tunelab generate RUN --prompt "..."`',
            )


def run_config(run_dir: str | Path, *, complete: bool = True) -> tuple[RunDir, RunConfig]:
    """A complete run (or, with `complete=False`, an unfinished one to resume) and its config, with
    relative data paths resolving where training read them."""
    run = RunDir(run_dir)
    if complete:
        run.require_complete()
    else:
        if not run.config.is_file():
            raise TunelabError("not a run directory (no config.yaml)", file=str(run.path),
                               expected="a folder made by `tunelab train`")  # fmt: skip
        if run.is_complete:
            raise TunelabError("run is already complete", file=str(run.path), expected="an unfinished run")
    cfg = load_config(run.config)
    src = run.read_status().get("source_dir")
    if src:
        cfg._source_dir = Path(src)
    return run, cfg


def load_run(run_dir: str | Path, *, base: bool = False, trust_remote_code: bool | None = None) -> LoadedRun:
    """The trained model of a complete run, or with `base=True` its base model exactly as training
    started from it (4-bit for QLoRA), prompted with the run's own format. `trust_remote_code`
    overrides the run config's `model.trust_remote_code` (a server given someone else's run passes False)."""
    from tunelab.inference.prompts import prompt_shape
    from tunelab.methods.registry import METHODS
    from tunelab.models.loading import load_model, load_tokenizer
    from tunelab.progress import quiet_libraries
    from tunelab.stages.base import base_model_kwargs, base_model_path
    from tunelab.stages.registry import STAGES
    from tunelab.training.device import choose_precision

    quiet_libraries()
    run, cfg = run_config(run_dir)
    stage, method = STAGES[cfg.task], METHODS[cfg.method]
    tokenizer = load_tokenizer(run.tokenizer_dir)
    labels = run.read_labels()
    fmt = run.read_format()
    if base and stage.kind.classifier:
        raise TunelabError(
            "the base model of a classification run is its untrained head, which only the run's own "
            "predictions.jsonl holds for its held-out rows",
            file=str(run.path),
            expected="its held-out split (no --data) without --regenerate, or compare runs only",
        )
    weights = run.path / method.weights_dir
    # whole-model methods saved a complete model; adapters go on top of the (maybe 4-bit) base
    path = weights if method.saves_whole_model and not base else base_model_path(cfg, run)
    kwargs = base_model_kwargs(stage, method, cfg, choose_precision(cfg.training.precision), tokenizer, labels)
    if trust_remote_code is not None:
        kwargs["trust_remote_code"] = trust_remote_code
    model = load_model(path, stage.model_kind, **kwargs)
    if not base:
        model = method.load(model, weights)
    model.eval()
    shape = prompt_shape(fmt)
    return LoadedRun(run=run, cfg=cfg, model=model, tokenizer=tokenizer, fmt=fmt, shape=shape, labels=labels,
                     is_base=base)  # fmt: skip


def load_base_for_merge(loaded_cfg: RunConfig, run: RunDir, tokenizer: Any, *, quantized: bool, dtype: Any = None) -> Any:
    """The run's base model for folding weights into: as trained (`quantized`, e.g. 4-bit) or in float."""
    from tunelab.methods.registry import METHODS
    from tunelab.models.loading import load_model
    from tunelab.stages.base import base_model_kwargs, base_model_path
    from tunelab.stages.registry import STAGES
    from tunelab.training.device import choose_precision

    stage, method = STAGES[loaded_cfg.task], METHODS[loaded_cfg.method]
    kwargs = base_model_kwargs(stage, method, loaded_cfg, choose_precision(loaded_cfg.training.precision), tokenizer,
                               run.read_labels(), as_trained=quantized)  # fmt: skip
    if not quantized and dtype is not None:
        kwargs["dtype"] = dtype
    return load_model(base_model_path(loaded_cfg, run), stage.model_kind, **kwargs)
