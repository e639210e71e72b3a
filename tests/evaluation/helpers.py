"""Rows and configs for the end-to-end evaluation tests on the tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import tunelab


def eval_rows(n: int = 48) -> list[dict]:
    """The toy question → answer rows, each with a `topic` to slice by."""
    from conftest import qa_rows

    rows = qa_rows(n)
    for i, row in enumerate(rows):
        row["topic"] = ("colours", "things", "misc")[i % 3]
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_config(directory: Path, model: Path, data_file: Path, **changes) -> dict:
    """A 20-step LoRA SFT config; keyword arguments replace (dicts: update) its sections."""
    cfg = {
        "name": "tiny",
        "output_dir": str(directory / "runs"),
        "model": str(model),
        "data": {"train": str(data_file), "max_length": 64, "split": {"validation": 0.1, "test": 0.25, "seed": 1}},
        "training": {"max_steps": 20, "batch_size": 4, "lr": 5e-3, "logging_steps": 5, "eval_steps": 10,
                     "save_steps": 10, "precision": "fp32", "warmup_ratio": 0.0},
        "evaluation": {"max_new_tokens": 8, "batch_size": 8},
    }
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


def train_tiny_run(directory: Path, model: Path) -> Path:
    """The SFT run most evaluation tests read: 48 rows (12 held out), base and tuned evaluated."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = write_rows(directory / "qa.jsonl", eval_rows())
        return tunelab.train(run_config(directory, model, data)).run_dir
    finally:
        torch.set_num_threads(before)
