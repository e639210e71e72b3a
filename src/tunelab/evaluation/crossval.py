"""k-fold cross-validation: K trainings of one config, each tested on a different fold.

The config's training data is split into K folds of whole prompt groups (rows that share a prompt
stay in the same fold, so a test question is never seen in training), with a seeded shuffle. Fold
i trains on the other K − 1 folds — carving its validation rows out of them as usual, unless the
config names a validation file — and is evaluated on fold i, base model included when the config
says ``compare_base``. Each fold is a normal run (``<output_dir>/<name>-cv/fold-i``), so every
fold has its own report; the cross-validation summary reports each metric as mean ± standard
deviation over the folds (sample std, ddof = 1), with a per-fold table.

Written to ``<output_dir>/<name>-cv/``: ``cv.json``, ``cv.csv`` (one row per fold) and
``report.html``; the fold files under ``data/``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from pathlib import Path
from typing import Any

from tunelab.data.shapes import prompt_key
from tunelab.errors import TunelabError
from tunelab.paths import remove_owned

__all__ = ["cross_validate", "make_folds", "summarise_folds"]


def make_folds(examples: list, k: int, seed: int = 42) -> list[list[int]]:
    """K lists of example indices; prompt groups kept whole, sizes as even as the groups allow."""
    if k < 2:
        raise TunelabError(f"--folds is {k}", field="--folds", expected="at least 2 folds")
    groups: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(prompt_key(ex), []).append(i)
    if len(groups) < k:
        raise TunelabError(
            f"{len(examples)} rows in {len(groups)} distinct prompts cannot fill {k} folds",
            field="--folds",
            expected=f"at most {len(groups)} folds, or more data",
        )
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    # largest groups first, each to the currently smallest fold (ties: lowest fold number)
    keys.sort(key=lambda key: -len(groups[key]))  # stable: equal sizes keep the shuffled order
    folds: list[list[int]] = [[] for _ in range(k)]
    for key in keys:
        target = min(range(k), key=lambda f: (len(folds[f]), f))
        folds[target].extend(groups[key])
    return [sorted(f) for f in folds]


def _raw_row(example: Any) -> dict[str, Any]:
    """The example back as a row of its own shape (column mapping already applied)."""
    meta = dict(example.meta or {})
    if example.shape == "text":
        return {**meta, "text": example.text}
    return {**meta, **example.fields}


def _numeric(metrics: dict | None) -> dict[str, float]:
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or key == "n":
            continue
        out[key] = float(value)
    return out


def _mean_std(values: list[float]) -> dict[str, float | None]:
    clean = [v for v in values if math.isfinite(v)]
    if not clean:
        return {"mean": None, "std": None, "min": None, "max": None}
    mean = sum(clean) / len(clean)
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)) if len(clean) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(clean), "max": max(clean)}


def summarise_folds(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: mean ± std (over folds) of base, tuned and tuned − base."""
    keys: list[str] = []
    for f in folds:
        for k in (*_numeric(f.get("tuned")), *_numeric(f.get("base"))):
            if k not in keys:
                keys.append(k)
    rows = []
    for key in keys:
        tuned = [_numeric(f.get("tuned")).get(key) for f in folds]
        base = [_numeric(f.get("base")).get(key) for f in folds]
        row: dict[str, Any] = {"metric": key}
        row["tuned"] = _mean_std([v for v in tuned if v is not None])
        row["base"] = _mean_std([v for v in base if v is not None])
        deltas = [t - b for t, b in zip(tuned, base, strict=True) if t is not None and b is not None]
        row["delta"] = _mean_std(deltas)
        row["folds"] = len([v for v in tuned if v is not None])
        rows.append(row)
    return rows


def cross_validate(
    config: Any,
    *,
    folds: int = 5,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run K-fold cross-validation of a run config (path, dict or RunConfig); returns the summary."""
    from tunelab import api
    from tunelab.config import config_dict, config_from_dict, resolve_config
    from tunelab.data.splits import load_examples
    from tunelab.progress import info
    from tunelab.runs.layout import write_json_atomic, write_jsonl_atomic

    cfg = resolve_config(config, overrides)
    source_dir = cfg._source_dir
    d = cfg.data
    examples, shape, _ = load_examples(d.train, columns=d.columns or None, shape=d.shape, base_dir=source_dir)
    seed = d.split.seed if seed is None else seed
    fold_idx = make_folds(examples, folds, seed)

    cv_dir = Path(out_dir) if out_dir else Path(cfg.output_dir) / f"{cfg.name}-cv"
    if cv_dir.exists() and any(cv_dir.iterdir()):
        if not overwrite:
            raise TunelabError(
                "cross-validation folder already exists", file=str(cv_dir), expected="--overwrite to replace it, or another name"
            )
        remove_owned(cv_dir, markers=("cv.json", "fold-1"), what="a tunelab cross-validation")
    cv_dir.mkdir(parents=True, exist_ok=True)

    def absolute(path: str | None) -> str | None:
        if path is None or path.startswith("builtin:"):
            return path
        p = Path(path).expanduser()
        if not p.is_absolute() and source_dir is not None and (Path(source_dir) / p).exists():
            p = Path(source_dir) / p
        return str(p.resolve()) if p.exists() else path

    notes = [f"{len(examples)} rows of {d.train} in {folds} folds of whole prompt groups (seed {seed})"]
    if d.test:
        notes.append(f"data.test ({d.test}) is not used: each fold is tested on its held-out fold")
    base = config_dict(cfg)
    fold_results = []
    for i, test_idx in enumerate(fold_idx, start=1):
        test_set = set(test_idx)
        train_rows = [_raw_row(examples[j]) for j in range(len(examples)) if j not in test_set]
        test_rows = [_raw_row(examples[j]) for j in test_idx]
        train_file = cv_dir / "data" / f"fold-{i}-train.jsonl"
        test_file = cv_dir / "data" / f"fold-{i}-test.jsonl"
        train_file.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(train_file, train_rows)
        write_jsonl_atomic(test_file, test_rows)
        raw = json.loads(json.dumps(base))
        raw["name"] = f"fold-{i}"
        raw["output_dir"] = str(cv_dir)
        raw["data"].update(
            train=str(train_file),
            test=str(test_file),
            validation=absolute(d.validation),
            columns={},
            shape=shape,
        )
        raw["data"]["split"]["test"] = 0.0
        fold_cfg = config_from_dict(raw)
        fold_cfg._source_dir = source_dir
        info(f"[cyan]cv[/cyan] fold {i}/{folds}: train {len(train_rows)} rows, test {len(test_rows)} rows")
        result = api.train(fold_cfg, overwrite=True)
        metrics = result.results.get("metrics") or {}
        fold_results.append(
            {
                "fold": i,
                "run": str(result.run_dir),
                "n_train": len(train_rows),
                "n_test": len(test_rows),
                "base": metrics.get("base"),
                "tuned": metrics.get("tuned"),
                "train_loss": (result.results.get("training") or {}).get("train_loss"),
                "train_seconds": (result.results.get("training") or {}).get("train_seconds"),
            }
        )

    summary = summarise_folds(fold_results)
    out = {
        "config": cfg.name,
        "folds": folds,
        "seed": seed,
        "n": len(examples),
        "summary": summary,
        "per_fold": fold_results,
        "notes": notes,
        "dir": str(cv_dir),
    }
    write_json_atomic(cv_dir / "cv.json", out)
    _write_csv(cv_dir / "cv.csv", fold_results, [row["metric"] for row in summary])
    out["report"] = str(_report(cv_dir, cfg, out))
    return out


def _write_csv(path: Path, folds: list[dict[str, Any]], metrics: list[str]) -> None:
    header = ["fold", "run", "n_train", "n_test", "train_loss"]
    header += [f"tuned:{m}" for m in metrics] + [f"base:{m}" for m in metrics]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in folds:
            tuned, base = _numeric(r.get("tuned")), _numeric(r.get("base"))
            w.writerow(
                [r["fold"], r["run"], r["n_train"], r["n_test"], r.get("train_loss")]
                + [tuned.get(m, "") for m in metrics]
                + [base.get(m, "") for m in metrics]
            )
    os.replace(tmp, path)


def _pm(stats: dict[str, Any], key: str) -> str:
    if stats.get("mean") is None:
        return "\u2014"
    digits = 4 if key.endswith("loss") or key == "mcc" else 2
    return f"{stats['mean']:.{digits}f} \u00b1 {stats['std']:.{digits}f}"


def _report(cv_dir: Path, cfg: Any, out: dict[str, Any]) -> Path:
    from tunelab.config import config_dict
    from tunelab.evaluation.metrics import METRIC_LABELS
    from tunelab.evaluation.views import training_curves
    from tunelab.reporting import Column, ConfigDump, Notes, Report, StaticTable, StaticTables, Summary

    summary_rows = []
    for row in out["summary"]:
        key = row["metric"]
        summary_rows.append(
            {
                "metric": METRIC_LABELS.get(key, key),
                "base": _pm(row["base"], key),
                "tuned": _pm(row["tuned"], key),
                "delta": _pm(row["delta"], key),
                "range": (
                    f"{row['tuned']['min']:.2f} \u2026 {row['tuned']['max']:.2f}" if row["tuned"]["mean"] is not None else "\u2014"
                ),
            }
        )
    per_fold_cols = [
        Column("fold", kind="num"),
        Column("n_train", "train rows", "num"),
        Column("n_test", "test rows", "num"),
        Column("train_loss", "final train loss", "num"),
    ]
    metrics = [row["metric"] for row in out["summary"]]
    per_fold_rows = []
    for f in out["per_fold"]:
        flat: dict[str, Any] = {k: f.get(k) for k in ("fold", "n_train", "n_test", "train_loss")}
        tuned, base = _numeric(f.get("tuned")), _numeric(f.get("base"))
        for m in metrics:
            flat[f"tuned {m}"] = tuned.get(m)
            flat[f"base {m}"] = base.get(m)
        per_fold_rows.append(flat)
    for m in metrics:
        per_fold_cols.append(Column(f"tuned {m}", f"tuned {METRIC_LABELS.get(m, m)}", "num"))
    for m in metrics:
        if any(r.get(f"base {m}") is not None for r in per_fold_rows):
            per_fold_cols.append(Column(f"base {m}", f"base {METRIC_LABELS.get(m, m)}", "num"))
    curves = training_curves({f"fold {f['fold']}": Path(f["run"]) / "metrics.jsonl" for f in out["per_fold"]}, cv_dir,
                             per="fold")  # fmt: skip
    summary_cols = [
        Column("metric"),
        Column("base"),
        Column("tuned"),
        Column("delta", "\u0394 tuned \u2212 base"),
        Column("range", "tuned min \u2026 max"),
    ]
    tables = [
        StaticTable(summary_cols, summary_rows, title="Metrics over folds (mean \u00b1 std)", id="cv-summary",
                    empty="No metrics (evaluation disabled?)."),
        StaticTable(per_fold_cols, per_fold_rows, title="Per fold", id="cv-folds", empty="No folds."),
    ]  # fmt: skip
    summary = {"config": cfg.name, "folds": out["folds"], "rows": out["n"], "seed": out["seed"],
               "fold runs": str(cv_dir / "fold-*")}  # fmt: skip
    notes = out["notes"] + ["mean \u00b1 sample standard deviation over folds; delta = tuned \u2212 base within each fold"]
    sections = [
        Summary(summary),
        *([curves] if curves else []),
        StaticTables(tables, title="Cross-validation"),
        Notes(notes),
        ConfigDump(config_dict(cfg)),
    ]
    return Report(f"tunelab cross-validation: {cfg.name} ({out['folds']} folds)", sections).write(cv_dir / "report.html")
