"""The Python API: what the CLI calls and what a notebook user calls.

    import tunelab
    result = tunelab.train("examples/sft_lora.yaml")
    print(tunelab.generate(result.run_dir, "What is AI?"))
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.allocator import active as active_allocator
from tunelab.config import RunConfig, dump_config, resolve_config
from tunelab.errors import TunelabError
from tunelab.paths import check_removable, remove_owned
from tunelab.progress import quiet_libraries
from tunelab.runs.layout import RunDir
from tunelab.runs.loading import LoadedRun
from tunelab.training.distributed import WorkerFinished, World, finish, share_outcome, start, world


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
    config: RunConfig | str | Path | dict | None,
    *,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Run one training job described by a config; returns where everything was written. Under
    torchrun (several processes) every process calls this; rank 0 writes the run folder, the others
    train with it and return a result without `results`."""
    from tunelab.config import check_before_loading

    quiet_libraries()
    cfg = resolve_config(config, overrides)
    check_before_loading(cfg)  # output folder, max_length, module names, strategy: before anything is written
    run = RunDir(cfg.run_dir)
    with _processes(cfg) as current, ExitStack() as held:

        def prepare() -> None:  # rank 0 only; the others learn whether it worked
            if _replaces_existing(run, overwrite):
                markers = (run.status_file.name,)
                check_removable(run.path, markers=markers, what="a tunelab run")  # before the lock file is written in it
                with run.lock():  # never remove a run another process is writing
                    remove_owned(run.path, markers=markers, what="a tunelab run")
            held.enter_context(run.lock())
            run.start(resume=False)
            run.write_status(world_size=current.size, malloc=active_allocator() or "system")
            run.config.write_text(dump_config(cfg), encoding="utf-8")

        share_outcome(current, prepare)
        return _execute(cfg, run, resume=False, current=current)


def _replaces_existing(run: RunDir, overwrite: bool) -> bool:
    """Whether `run`'s folder holds an earlier run to remove first; refused unless `overwrite` or that
    run failed before its first checkpoint (then it holds nothing worth keeping)."""
    if not (run.path.exists() and any(run.path.iterdir())):
        return False
    failed_early = run.read_status().get("status") == "failed" and run.last_checkpoint() is None
    if not (overwrite or failed_early):
        raise TunelabError(
            "run directory already exists",
            file=str(run.path),
            expected="a new `name:`, --overwrite to replace it, or `tunelab train --resume RUN_DIR` to continue it",
        )
    return True


def resume(run_dir: str | Path) -> TrainResult:
    """Continue an unfinished run from its last checkpoint, with the config it was started with. In as
    many processes as it trained in, or under DDP in another count (`_resume_world`)."""
    from tunelab.runs.loading import run_config

    quiet_libraries()
    run, cfg = run_config(run_dir, complete=False)
    cfg = _resume_world(run, cfg, world().size)
    with _processes(cfg) as current, ExitStack() as held:

        def prepare() -> None:
            held.enter_context(run.lock())
            run.start(resume=True)
            run.write_status(resumed_world_size=current.size, resumed_grad_accum=cfg.training.grad_accum)

        share_outcome(current, prepare)
        return _execute(cfg, run, resume=True, current=current)


def _resume_world(run: RunDir, cfg: RunConfig, size: int) -> RunConfig:
    """The config a run resumes with in `size` processes. Each optimizer step must keep its rows (processes
    × batch × accumulation) and their order, so under DDP another process count changes the accumulation
    to match (2 processes × accumulation 1 → 1 process × accumulation 2: the same rows in each step);
    where no whole accumulation keeps them, or the checkpoint holds one shard per process (FSDP,
    DeepSpeed), another count is refused."""
    trained = int(run.read_status().get("world_size") or 1)
    if trained == size:
        return cfg
    rows = trained * cfg.training.grad_accum  # micro-batches per optimizer step, over all processes
    sharded = cfg.distributed.strategy != "ddp" and max(trained, size) > 1
    again = f"tunelab train --resume {run.path}" + (f" --nproc {trained}" if trained > 1 else " (no --nproc)")
    if sharded:
        raise TunelabError(
            f"this run trained in {trained} process{'es' if trained != 1 else ''} with {cfg.distributed.strategy}, "
            f"whose checkpoints hold one shard per process; it cannot resume in {size}",
            file=str(run.path), expected=again,
        )  # fmt: skip
    if rows % size:
        raise TunelabError(
            f"this run trained in {trained} process{'es' if trained != 1 else ''} × accumulation "
            f"{cfg.training.grad_accum}: {rows} micro-batches per step, which {size} processes cannot share evenly",
            file=str(run.path), expected=again + f", or a process count that divides {rows}",
        )  # fmt: skip
    from tunelab.progress import info

    cfg = cfg.model_copy(deep=True)
    cfg.training.grad_accum = rows // size
    info(f"[yellow]resume[/yellow] trained in {trained} process(es), resuming in {size}: gradient accumulation "
         f"{cfg.training.grad_accum} keeps the same rows in every optimizer step")  # fmt: skip
    return cfg


@contextmanager
def _processes(cfg: RunConfig) -> Iterator[World]:
    """This process's place among the run's processes; with several, their process group (opened
    here, closed when this process is done with the run)."""
    current = world()
    if not current.distributed:
        yield current
        return
    opened = start(cfg.distributed, current)
    try:
        yield current
    finally:
        if opened:
            finish()


def _execute(cfg: RunConfig, run: RunDir, *, resume: bool, current: World) -> TrainResult:
    from tunelab.data.doctor import check_for_training
    from tunelab.evaluation.run_report import write_run_report
    from tunelab.methods.registry import METHODS
    from tunelab.stages.base import Context
    from tunelab.stages.registry import STAGES

    stage, method = STAGES[cfg.task], METHODS[cfg.method]
    if current.is_main:
        run.write_status(source_dir=str(cfg._source_dir or Path.cwd()), task=cfg.task, method=cfg.method)
    else:  # evaluation and every file are rank 0's: this process trains, then stops
        cfg = cfg.model_copy(deep=True)
        cfg.evaluation.enabled = False
    ctx = Context(cfg=cfg, run=run, stage=stage, method=method, resume=resume, open_run=load_run,
                  world=current)  # fmt: skip
    try:
        if resume:  # train() checked this before writing anything; a resumed run may be on another machine
            from tunelab.config import check_before_loading

            check_before_loading(cfg, output_dir=False)
        # every bad row is reported now, with its line, not two hours into training; the splits it
        # carved are the ones the recipe trains on (the data is read once)
        checked = check_for_training(cfg, task_shapes=stage.shapes)
        checked.raise_for_errors()
        ctx.splits = checked.splits
        if current.is_main:
            _warn_if_it_will_not_fit(ctx)
        if cfg.model.init_from:  # rank 0 merges the starting run once; the others wait for it
            share_outcome(current, lambda: run.init_model_ready or _merge_start(cfg, run))
        results = stage.run(ctx)
        report = write_run_report(run, cfg, results, ctx.notes, headline=stage.headline_metrics)
        run.mark_complete(_summary(results))
    except WorkerFinished:
        return TrainResult(run_dir=run.path, results={}, report=run.report, model=ctx.model, config=cfg)
    except BaseException as exc:  # noqa: BLE001 - any interruption marks the run failed, then re-raises
        if current.is_main:
            run.mark_failed(f"{type(exc).__name__}: {exc}")
            (run.path / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        raise
    return TrainResult(run_dir=run.path, results=results, report=report, model=ctx.model, config=cfg)


def launch(config: str | Path | None = None, *, resume: str | Path | None = None, nproc: int,
           nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int = 29500,
           overrides: list[str] | None = None, overwrite: bool = False) -> int:  # fmt: skip
    """Train (or resume) in `nproc` processes on this machine, one of `nnodes` machines (torchrun),
    after checking here everything one process can check (config, strategy, data, the run folder),
    so a mistake is one message, not one per process. Returns torchrun's exit code."""
    import subprocess

    from tunelab.config import check_before_loading
    from tunelab.data.doctor import check_for_training
    from tunelab.runs.loading import run_config
    from tunelab.stages.registry import STAGES
    from tunelab.training.distributed import launch_environment, torchrun_command

    for value, name, low in ((nproc, "--nproc", 1), (nnodes, "--nnodes", 1), (master_port, "--master-port", 1)):
        if value < low:
            raise TunelabError(f"is {value}", field=name, expected=f"a number, {low} or more")
    if not 0 <= node_rank < nnodes:
        raise TunelabError(f"is {node_rank}", field="--node-rank", expected=f"0 to {nnodes - 1} (one per machine)")
    quiet_libraries()
    size = nproc * nnodes
    if resume is not None:
        run, cfg = run_config(resume, complete=False)
        cfg = _resume_world(run, cfg, size)
        args = ["--resume", str(resume)]
    else:
        cfg = resolve_config(config, overrides)
        if node_rank == 0:  # the folder is node 0's to check; another node may see it made already
            _replaces_existing(RunDir(cfg.run_dir), overwrite)
        args = [*([str(config)] if config is not None else []), *[a for o in overrides or [] for a in ("--set", o)],
                *(["--overwrite"] * overwrite)]  # fmt: skip
    check_before_loading(cfg, output_dir=resume is None, world_size=size, local_size=nproc)
    check_for_training(cfg, task_shapes=STAGES[cfg.task].shapes).raise_for_errors()
    command = torchrun_command(args, nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                               master_port=master_port)  # fmt: skip
    return subprocess.run(command, env=launch_environment(cfg.training.threads), check=False).returncode


def _warn_if_it_will_not_fit(ctx: Any) -> None:
    """The planner's word, before any model loads, when the run will not fit this machine's memory."""
    from tunelab.planning.preflight import memory_warning
    from tunelab.progress import info

    warning = memory_warning(ctx.cfg, world_size=ctx.world.size, local_size=ctx.world.local_size)
    if warning:
        ctx.notes.append(warning)
        info(f"[yellow]memory[/yellow] {warning}")


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
