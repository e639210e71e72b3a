"""The Python API: what the CLI calls and what a notebook user calls.

    import tunelab
    result = tunelab.train("examples/sft_lora.yaml")
    print(tunelab.generate(result.run_dir, "What is AI?"))
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, dump_config, resolve_config
from tunelab.errors import TunelabError
from tunelab.paths import check_removable, remove_owned
from tunelab.progress import quiet_libraries
from tunelab.runs.layout import RunDir
from tunelab.runs.loading import LoadedRun


@dataclass
class TrainResult:
    run_dir: Path
    results: dict[str, Any]
    report: Path
    model: Any = None  # the trained model, still in memory (notebooks can use it directly)
    config: Any = None  # the resolved RunConfig the run trained with (method defaults filled in)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results.get("metrics", {})


def train(
    config: RunConfig | str | Path | dict,
    *,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Run one training job described by a config; returns where everything was written."""
    quiet_libraries()
    cfg = resolve_config(config, overrides)
    from tunelab.config import check_before_loading

    check_before_loading(cfg)  # output folder, max_length, module names: before anything is written
    run = RunDir(cfg.run_dir)
    if run.path.exists() and any(run.path.iterdir()):
        # a run that failed before its first checkpoint (bad data, unknown model…) holds nothing worth keeping
        failed_early = run.read_status().get("status") == "failed" and run.last_checkpoint() is None
        if not (overwrite or failed_early):
            raise TunelabError(
                "run directory already exists",
                file=str(run.path),
                expected="a new `name:`, --overwrite to replace it, or `tunelab train --resume RUN_DIR` to continue it",
            )
        markers = (run.status_file.name,)
        check_removable(run.path, markers=markers, what="a tunelab run")  # before the lock file is written in it
        with run.lock():  # never remove a run another process is writing
            remove_owned(run.path, markers=markers, what="a tunelab run")
    with run.lock():
        run.start(resume=False)
        run.config.write_text(dump_config(cfg), encoding="utf-8")
        return _execute(cfg, run, resume=False)


def resume(run_dir: str | Path) -> TrainResult:
    """Continue an unfinished run from its last checkpoint, with the config it was started with."""
    from tunelab.runs.loading import run_config

    quiet_libraries()
    run, cfg = run_config(run_dir, complete=False)
    with run.lock():
        run.start(resume=True)
        return _execute(cfg, run, resume=True)


def _execute(cfg: RunConfig, run: RunDir, *, resume: bool) -> TrainResult:
    from tunelab.data.doctor import check_for_training
    from tunelab.evaluation.run_report import write_run_report
    from tunelab.methods.registry import METHODS
    from tunelab.stages.base import Context
    from tunelab.stages.registry import STAGES

    stage, method = STAGES[cfg.task], METHODS[cfg.method]
    run.write_status(source_dir=str(cfg._source_dir or Path.cwd()), task=cfg.task, method=cfg.method)
    ctx = Context(cfg=cfg, run=run, stage=stage, method=method, resume=resume, open_run=load_run)
    try:
        if resume:  # train() checked this before writing anything; a resumed run may be on another machine
            from tunelab.config import check_before_loading

            check_before_loading(cfg, output_dir=False)
        # every bad row is reported now, with its line, not two hours into training; the splits it
        # carved are the ones the recipe trains on (the data is read once)
        checked = check_for_training(cfg, task_shapes=stage.shapes)
        checked.raise_for_errors()
        ctx.splits = checked.splits
        if cfg.model.init_from and not run.init_model_ready:
            _merge_start(cfg, run)
        results = stage.run(ctx)
        report = write_run_report(run, cfg, results, ctx.notes, headline=stage.headline_metrics)
        run.mark_complete(_summary(results))
    except BaseException as exc:  # noqa: BLE001 - any interruption marks the run failed, then re-raises
        run.mark_failed(f"{type(exc).__name__}: {exc}")
        (run.path / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        raise
    return TrainResult(run_dir=run.path, results=results, report=report, model=ctx.model, config=cfg)


def _merge_start(cfg: RunConfig, run: RunDir) -> None:
    """The run `model.init_from` names, merged into this run's own folder: its base from now on (kept
    there, so this run loads, merges and serves even after the other run is gone)."""
    from tunelab.export.merge import merge_run
    from tunelab.progress import status

    with status(f"Merging {cfg.model.init_from} into {run.init_model} (this run's starting weights)"):
        merge_run(cfg.init_run_dir(), run.init_model, overwrite=True)


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    training = results.get("training", {})
    return {
        "metrics": results.get("metrics"),
        "train_tokens_per_second": training.get("train_tokens_per_second"),
        "peak_memory_gib": training.get("peak_memory_gib"),
        "train_seconds": training.get("train_seconds"),
        "warnings": results.get("warnings") or [],
    }


def metrics_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {metric, base, tuned} for the headline metrics of a run's stage."""
    from tunelab.evaluation.run_report import metrics_table as table
    from tunelab.stages.registry import STAGES

    stage = STAGES.get(results.get("task", ""), STAGES["sft"])
    return table(results, stage.headline_metrics)


# -- using a finished run ----------------------------------------------------------------------


def load_run(run_dir: str | Path, *, base: bool = False) -> LoadedRun:
    """The trained model of a complete run (or with `base=True` its base model), with its tokenizer,
    prompt format and labels."""
    from tunelab.runs.loading import load_run as load

    return load(run_dir, base=base)


def generate(
    run: str | Path | LoadedRun,
    prompts: str | list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    show_progress: bool = False,
) -> str | list[str]:
    """Greedy answers from a run's model, with prompts formatted exactly as in training."""
    from tunelab.inference.decoding import generate_from_ids
    from tunelab.inference.prompts import prompt_ids

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    loaded.require_generative()
    single = isinstance(prompts, str)
    items = [prompts] if single else list(prompts)
    ids = [prompt_ids(loaded.fmt, loaded.tokenizer, loaded.shape, p) for p in items]
    outs = generate_from_ids(
        loaded.model, loaded.tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=show_progress
    )
    texts = [o.text for o in outs]
    return texts[0] if single else texts


def generate_file(run: str | Path | LoadedRun, input_path: str | Path, output_path: str | Path, *,
                  max_new_tokens: int = 128, batch_size: int = 8, show_progress: bool = True) -> Any:  # fmt: skip
    """Answer every row of a file; the files are checked before the model is loaded."""
    from tunelab.inference.batch import generate_file as answer_file

    loader = run if isinstance(run, LoadedRun) else (lambda: load_run(run))
    return answer_file(loader, input_path, output_path, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       show_progress=show_progress)  # fmt: skip


def predict(run: str | Path | LoadedRun, texts: str | list[str], *, batch_size: int = 16) -> Any:
    """Label and class probabilities for each text, from a classification run."""
    from tunelab.inference.scoring import class_probabilities

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    loaded.require_classifier()
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    labels = loaded.labels or []
    probs = class_probabilities(loaded.model, loaded.tokenizer, items, batch_size=batch_size,
                                max_length=loaded.cfg.data.max_length)  # fmt: skip
    out = []
    for p in probs:
        best = max(range(len(p)), key=p.__getitem__)
        out.append({"label": labels[best], "probabilities": dict(zip(labels, p, strict=True))})
    return out[0] if single else out


def plan(config: RunConfig | str | Path | dict, **options: Any) -> Any:
    """What a config needs in memory, compute and time, from the model's config.json alone (no weights):
    a `tunelab.planning.Plan` (`rows()`, `to_dict()`); options as `tunelab.planning.plan` takes them."""
    from tunelab.planning import plan as make_plan

    return make_plan(config, **options)


def models() -> list[dict[str, Any]]:
    from tunelab.models.loading import list_models

    return list_models()
