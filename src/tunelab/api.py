"""The Python API: what the CLI calls and what a notebook user calls.

    import tunelab
    result = tunelab.train("examples/sft_lora.yaml")
    print(tunelab.generate(result.run_dir, "What is AI?"))
"""

from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, config_dict, config_from_dict, dump_config, load_config
from tunelab.errors import TunelabError
from tunelab.progress import quiet_libraries
from tunelab.run import RunDir


@dataclass
class TrainResult:
    run_dir: Path
    results: dict[str, Any]
    report: Path
    model: Any = None  # the trained model, still in memory (notebooks can use it directly)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results.get("metrics", {})


def _as_config(config: RunConfig | str | Path | dict, overrides: list[str] | None) -> RunConfig:
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, dict):
        from tunelab.config import _merge, parse_overrides

        return config_from_dict(_merge(config, parse_overrides(overrides)))
    if overrides:
        from tunelab.config import _merge, parse_overrides

        cfg = config_from_dict(_merge(config_dict(config), parse_overrides(overrides)))
        cfg._source_dir = config._source_dir
        return cfg
    return config


def train(
    config: RunConfig | str | Path | dict,
    *,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Run one training job described by a config; returns where everything was written."""
    quiet_libraries()
    cfg = _as_config(config, overrides)
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
        shutil.rmtree(run.path)
    run.start(resume=False)
    run.config.write_text(dump_config(cfg), encoding="utf-8")
    return _execute(cfg, run, resume=False)


def resume(run_dir: str | Path) -> TrainResult:
    """Continue an unfinished run from its last checkpoint, with the config it was started with."""
    quiet_libraries()
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise TunelabError("not a run directory (no config.yaml)", file=str(run.path), expected="a folder made by `tunelab train`")
    if run.is_complete:
        raise TunelabError("run is already complete", file=str(run.path), expected="an unfinished run")
    cfg = load_config(run.config)
    src = run.read_status().get("source_dir")
    if src:
        cfg._source_dir = Path(src)
    run.start(resume=True)
    return _execute(cfg, run, resume=True)


def _execute(cfg: RunConfig, run: RunDir, *, resume: bool) -> TrainResult:
    from tunelab.stages.common import Context

    run.write_status(source_dir=str(cfg._source_dir or Path.cwd()), task=cfg.task, method=cfg.method)
    ctx = Context(cfg=cfg, run=run, resume=resume)
    try:
        from tunelab.data.doctor import check_for_training

        # every bad row is reported now, with its line, not two hours into training
        check_for_training(cfg).raise_for_errors()
        results = cfg_task(cfg).recipe_module().run(ctx)
        report = write_run_report(run, cfg, results, ctx.notes)
        run.mark_complete(_summary(results))
    except BaseException as exc:  # noqa: BLE001 - any interruption marks the run failed, then re-raises
        run.mark_failed(f"{type(exc).__name__}: {exc}")
        (run.path / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        raise
    return TrainResult(run_dir=run.path, results=results, report=report, model=ctx.model)


def cfg_task(cfg: RunConfig) -> Any:
    from tunelab.stages.registry import TASKS

    return TASKS[cfg.task]


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    training = results.get("training", {})
    return {
        "metrics": results.get("metrics"),
        "train_tokens_per_second": training.get("train_tokens_per_second"),
        "peak_memory_gib": training.get("peak_memory_gib"),
        "train_seconds": training.get("train_seconds"),
    }


def metrics_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {metric, base, tuned} for the headline metrics of a run's task."""
    from tunelab.evaluation.metrics import HEADLINE_METRICS

    base = (results.get("metrics") or {}).get("base") or {}
    tuned = (results.get("metrics") or {}).get("tuned") or {}
    keys = {"pretrain": ["perplexity", "eval_loss"], "classify": ["accuracy", "macro_f1"]}.get(
        results.get("task", ""), HEADLINE_METRICS
    )
    rows = []
    for k in keys:
        if k in tuned or k in base:
            row: dict[str, Any] = {"metric": k, "tuned": tuned.get(k)}
            if k in base:
                row["base"] = base[k]
            rows.append(row)
    return rows


def write_run_report(run: RunDir, cfg: RunConfig, results: dict[str, Any], notes: list[str]) -> Path:
    import json

    from tunelab.evaluation.plots import plot_loss, plot_lr, read_metrics
    from tunelab.evaluation.report import write_report
    from tunelab.evaluation.run_report import run_report_extras

    rows = read_metrics(run.metrics) if run.metrics.is_file() else []
    plot_loss(rows, run.loss_png)
    plot_lr(rows, run.lr_png)
    samples = []
    if run.predictions.is_file():
        with run.predictions.open(encoding="utf-8") as f:
            for line in f:
                if len(samples) >= cfg.evaluation.samples_in_report:
                    break
                p = json.loads(line)
                samples.append({k: p[k] for k in ("input", "reference", "base", "tuned") if k in p})
    training = results.get("training", {})
    summary = {
        "model": cfg.model.name,
        "task": cfg.task,
        "method": cfg.method,
        "trainable params": results.get("trainable"),
        "train steps": training.get("global_step"),
        "train time (s)": training.get("train_seconds"),
        "train tokens/s (non-padding)": training.get("train_tokens_per_second"),
        "peak memory (GiB)": training.get("peak_memory_gib"),
        "final train loss": training.get("train_loss"),
        "held-out rows": results.get("n_test"),
    }
    return write_report(
        run.report,
        title=f"tunelab run: {cfg.name}",
        config=config_dict(cfg),
        summary=summary,
        metrics_table=metrics_table(results),
        plots={"Loss": run.loss_png, "Learning rate": run.lr_png},
        samples=samples,
        notes=notes,
        **run_report_extras(run.path, max_new_tokens=cfg.evaluation.max_new_tokens),
    )


# -- using a finished run ----------------------------------------------------------------------


@dataclass
class LoadedRun:
    run: RunDir
    cfg: RunConfig
    model: Any
    tokenizer: Any
    fmt: Any
    shape: str
    labels: list[str] | None = None


def load_run(run_dir: str | Path) -> LoadedRun:
    """The trained model of a complete run, with its tokenizer and prompt format."""
    import json

    from tunelab.data.templates import PromptFormat
    from tunelab.methods.registry import METHODS
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.stages.common import base_model_kwargs
    from tunelab.stages.registry import TASKS
    from tunelab.training.trainer import choose_precision

    quiet_libraries()
    run = RunDir(run_dir)
    run.require_complete()
    cfg = load_config(run.config)
    task, method = TASKS[cfg.task], METHODS[cfg.method]
    tokenizer = load_tokenizer(run.tokenizer_dir)
    labels_file = run.path / "labels.json"
    labels = json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else None
    weights = run.path / method.weights_dir
    # whole-model methods saved a complete model; adapters go on top of the (maybe 4-bit) base
    path = weights if method.saves_whole_model else resolve_model(cfg.model.name).path
    base = task.load_model(path, **base_model_kwargs(cfg, choose_precision(cfg.training.precision), tokenizer, labels))
    model = method.load(base, weights, task)
    model.eval()
    fmt = PromptFormat.load(run.template) if run.template.is_file() else None
    shape = "classification" if fmt is None else "text" if fmt.kind == "text" else "messages"
    if fmt is not None and fmt.kind == "custom":
        from tunelab.data.shapes import RESPONSE_FIELD

        shape = next((s for s, f in RESPONSE_FIELD.items() if f == fmt.response_field), "qa")
    return LoadedRun(run=run, cfg=cfg, model=model, tokenizer=tokenizer, fmt=fmt, shape=shape, labels=labels)


def generate(
    run: str | Path | LoadedRun,
    prompts: str | list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    show_progress: bool = False,
) -> str | list[str]:
    """Greedy answers from a run's model, with prompts formatted exactly as in training."""
    from tunelab.data.templates import example_from_prompt
    from tunelab.inference.generation import generate_from_ids

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    if loaded.fmt is None:
        raise TunelabError(
            f"run is a {loaded.cfg.task} run; it classifies text rather than generating it",
            file=str(loaded.run.path),
            expected='`tunelab predict RUN --text "..."`',
        )
    single = isinstance(prompts, str)
    items = [prompts] if single else list(prompts)
    ids = [loaded.fmt.prompt_ids(example_from_prompt(p, loaded.fmt, loaded.shape), loaded.tokenizer) for p in items]
    outs = generate_from_ids(
        loaded.model, loaded.tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=show_progress
    )
    texts = [o.text for o in outs]
    return texts[0] if single else texts


def predict(run: str | Path | LoadedRun, texts: str | list[str], *, batch_size: int = 16) -> Any:
    """Label and class probabilities for each text, from a classification run."""
    import torch

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    if loaded.labels is None:
        raise TunelabError(
            f"run is a {loaded.cfg.task} run, not a classifier", file=str(loaded.run.path),
            expected='`tunelab generate RUN --prompt "..."`',
        )
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    out = []
    for start in range(0, len(items), batch_size):
        batch = loaded.tokenizer(items[start : start + batch_size], truncation=True,
                                 max_length=loaded.cfg.data.max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            probs = torch.softmax(loaded.model(**batch).logits.float(), dim=-1).tolist()
        for p in probs:
            best = max(range(len(p)), key=p.__getitem__)
            out.append({"label": loaded.labels[best], "probabilities": dict(zip(loaded.labels, p, strict=True))})
    return out[0] if single else out


def models() -> list[dict[str, Any]]:
    from tunelab.models.loading import list_models

    return list_models()
