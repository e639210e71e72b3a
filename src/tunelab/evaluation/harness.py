"""Standard benchmarks through EleutherAI's lm-evaluation-harness (`pip install lm-eval`), run on a
run's model (adapter applied) and, with ``--base``, on its base model, side by side with paired
bootstrap intervals — `tunelab bench RUN --tasks arc_easy,hellaswag`.

Fully offline: a task from lm-eval's registry runs when its data set is in the local Hugging Face
datasets cache; a local task (a YAML file with its data, as lm-eval documents them) runs from
``--include-path DIR``. tunelab's own multiple-choice set is an lm-eval task too, ``mini_mc``: a
YAML written at run time next to nothing but its JSONL. lm-eval scores with its own prompts
(``doc_to_text``, no chat template unless ``chat_template=True``), so its numbers are the ones
lm-eval itself prints; `tunelab bench --task` scores through the run's own prompt format instead.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluation.bench import BUILTIN_TASKS

__all__ = ["HARNESS_METRICS", "builtin_task_dir", "evaluate_tasks", "harness_bench"]

# per-document metrics lm-eval's multiple-choice and generation tasks report, in the order shown
HARNESS_METRICS = ("acc", "acc_norm", "exact_match", "mcc", "f1")

_MINI_MC_YAML = """task: mini_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def builtin_task_dir() -> Path:
    """A folder with lm-eval YAMLs of tunelab's built-in tasks (its data path must be absolute)."""
    folder = Path(tempfile.mkdtemp(prefix="tunelab-lm-eval-"))
    (folder / "mini_mc.yaml").write_text(_MINI_MC_YAML.format(path=BUILTIN_TASKS["mini_mc"].resolve()), encoding="utf-8")
    return folder


def _require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise TunelabError("lm-evaluation-harness is not installed", field="--tasks",
                           expected="`pip install 'tunelab[bench]'` (or `pip install lm-eval`); or --task FILE.jsonl "
                           "for tunelab's own multiple-choice scoring")  # fmt: skip


def task_manager(include_path: list[str | Path] | None = None) -> Any:
    """lm-eval's task registry plus tunelab's built-in tasks and the user's folders."""
    _require_lm_eval()
    for p in include_path or []:
        if not Path(p).is_dir():
            raise TunelabError("not a folder", file=str(p), field="--include-path", expected="a folder of lm-eval task YAMLs")
    return _task_manager(tuple(str(Path(p).resolve()) for p in include_path or []))


@functools.cache
def _task_manager(include_path: tuple[str, ...]) -> Any:
    # indexing lm-eval's registry (thousands of YAMLs) takes seconds: once per process and set of folders
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(builtin_task_dir()), *include_path])


def check_tasks(tasks: list[str], manager: Any) -> None:
    """Every task name lm-eval knows, or one line saying which does not (with the nearest names)."""
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            near = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
            raise TunelabError(f"unknown lm-eval task {task!r}{hint}", field="--tasks",
                               expected="a task of lm-eval's registry (`lm-eval ls tasks`), mini_mc, or a task YAML "
                               "in a folder given with --include-path")  # fmt: skip


@contextlib.contextmanager
def _missing_data_message(tasks: list[str]) -> Iterator[None]:
    """lm-eval and datasets raise many kinds of errors for data that is not here: one line saying so."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless it is about missing data
        text = " ".join(str(err).split())
        offline = any(k in text.lower() for k in ("offline", "couldn't reach", "connection", "not found", "no such"))
        if not offline:
            raise
        raise TunelabError(f"lm-eval could not load the data of {', '.join(tasks)}: {text[:300]}", field="--tasks",
                           expected="the task's data set in the local Hugging Face datasets cache (download it once "
                           "on a connected machine and copy ~/.cache/huggingface/datasets), or a local task YAML "
                           "with its data in a folder given with --include-path") from None  # fmt: skip


def check_data(tasks: list[str], manager: Any) -> None:
    """Load every task's data (from the local cache) before any model loads."""
    from lm_eval.tasks import get_task_dict

    with _missing_data_message(tasks):
        get_task_dict(tasks, manager)


def evaluate_tasks(model: Any, tokenizer: Any, tasks: list[str], *, manager: Any, limit: int | None = None,
                   batch_size: int = 16, chat_template: bool = False) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per (leaf) task: lm-eval's aggregate metrics and each document's metric values."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with _missing_data_message(tasks):
        out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=True,
                              bootstrap_iters=0, apply_chat_template=chat_template)  # fmt: skip
    results = {}
    for task, samples in (out or {}).get("samples", {}).items():
        aggregate = (out["results"].get(task) or {})
        metrics = {k.split(",")[0]: v for k, v in aggregate.items() if "," in k and "stderr" not in k
                   and isinstance(v, int | float)}  # fmt: skip
        per_doc = [{m: float(s[m]) for m in s.get("metrics", []) if isinstance(s.get(m), int | float)} for s in samples]
        results[task] = {"metrics": metrics, "samples": per_doc, "n": len(samples)}
    return results


def harness_bench(run_dir: str | Path, tasks: list[str], *, with_base: bool = False, limit: int | None = None,
                  batch_size: int = 16, include_path: list[str | Path] | None = None, chat_template: bool = False,
                  out_dir: str | Path | None = None, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Run lm-eval ``tasks`` on a run's model (and its base model); writes bench.json and report.html
    to ``out_dir`` (default RUN/bench/lm-eval-TASKS) and returns what bench.json holds."""
    from tunelab.evaluation import bootstrap as B
    from tunelab.evaluation.scoring import interval_table
    from tunelab.progress import info, quiet_libraries
    from tunelab.runs.artifacts import BASE
    from tunelab.runs.layout import write_json_atomic
    from tunelab.runs.loading import load_run, run_config

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # no hub at run time: a missing data set fails at once
        os.environ.setdefault(name, "1")  # (read when datasets is imported; HF_DATASETS_OFFLINE=0 allows downloads)
    quiet_libraries()
    if not tasks:
        raise TunelabError("no tasks given", field="--tasks", expected="e.g. --tasks mini_mc,arc_easy")
    run, cfg = run_config(Path(run_dir))
    if not run.template.is_file():
        raise TunelabError(f"a {cfg.task} run has no language-model head to score answers with", file=str(run.path),
                           expected="a run of a causal language model (task sft or pretrain)")  # fmt: skip
    manager = task_manager(include_path)
    check_tasks(tasks, manager)  # before any model loads
    check_data(tasks, manager)
    models: dict[str, dict[str, Any]] = {}
    for name in ([BASE] if with_base else []) + [run.path.name]:
        info(f"[cyan]lm-eval[/cyan] {name}: {', '.join(tasks)}")
        loaded = load_run(run.path, base=name == BASE)
        models[name] = evaluate_tasks(loaded.model, loaded.tokenizer, tasks, manager=manager, limit=limit,
                                      batch_size=batch_size, chat_template=chat_template)  # fmt: skip
        del loaded
    names = list(models)
    baseline = BASE if with_base else None
    table = []
    for task in models[names[-1]]:
        docs = {name: models[name][task]["samples"] for name in names}
        metrics = [m for m in HARNESS_METRICS if all(d and m in d[0] for d in docs.values())]
        stats = {name: {f"{task} {m}": (B.mean_metric(f"{task} {m}"), [100.0 * s[m] for s in docs[name]])
                        for m in metrics} for name in names}  # fmt: skip
        n = len(docs[names[-1]])
        table += interval_table(stats, [f"{task} {m}" for m in metrics], baseline=baseline, n=n,
                                resamples=resamples, seed=seed)  # fmt: skip
    label = "lm-eval-" + "-".join(tasks)
    out = Path(out_dir) if out_dir else run.path / "bench" / label[:120]
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "tasks": tasks,
        "models": {name: {t: r["metrics"] for t, r in m.items()} for name, m in models.items()},
        "n": {t: r["n"] for t, r in models[names[-1]].items()},
        "table": table,
        "baseline": baseline,
        "scoring": "lm-evaluation-harness (its prompts and metrics"
        + (", the tokenizer's chat template" if chat_template else ", no chat template") + "); values × 100",
        "limit": limit,
    }
    write_json_atomic(out / "bench.json", result)
    result["out_dir"] = str(out)
    result["report"] = str(_report(out, tasks, names, baseline, table, resamples, result["scoring"], result["n"]))
    return result


def _report(out: Path, tasks: list[str], names: list[str], baseline: str | None, table: list, resamples: int,
            scoring: str, n: dict[str, int]) -> Path:  # fmt: skip
    from tunelab.evaluation.views import comparison_section
    from tunelab.reporting import ConfigDump, Notes, Report, Summary

    sections = [
        Summary({"tasks": ", ".join(tasks), "models": ", ".join(names), "scoring": scoring}),
        comparison_section(table, names, baseline, sum(n.values()), resamples, title="lm-eval results"),
        Notes(["Each row: a task's metric, its 95% bootstrap interval over the task's documents, and the paired "
               "interval of the difference from the base model when it ran too.",
               "Documents per task: " + ", ".join(f"{t} {k}" for t, k in n.items()) + "."]),  # fmt: skip
        ConfigDump({"tasks": tasks, "models": names}),
    ]
    return Report(f"tunelab bench (lm-eval): {', '.join(tasks)}", sections).write(out / "report.html")
