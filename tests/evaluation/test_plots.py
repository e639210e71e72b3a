"""Tests for tunelab.evaluation.plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.plots import plot_loss, plot_lr
from tunelab.runs.layout import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROWS = [
    *(
        {
            "step": s,
            "epoch": s / 100,
            "loss": 3.0 - s / 100,
            "learning_rate": 1e-4 * (1 - s / 200),
            "grad_norm": 0.9,
        }
        for s in range(10, 201, 10)
    ),
    {"step": 50, "epoch": 0.5, "eval_loss": 2.6, "eval_runtime": 1.2},
    {"step": 100, "epoch": 1.0, "eval_loss": 2.2},
    {"step": 200, "train_runtime": 12.3, "train_loss": 2.1, "train_samples_per_second": 9.0},
]


def _assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "rows",
    [
        ROWS,
        [r for r in ROWS if "eval_loss" not in r],  # no eval points
        [r for r in ROWS if "loss" not in r],  # eval only
        [],  # nothing at all
        [{"step": 200, "train_loss": 2.0}],  # only the final summary row
        [{"step": 1, "loss": 2.0, "learning_rate": 0.0}],  # a single point
        [
            {"loss": 1.0},
            {"step": "x", "loss": 2.0},
            {"step": 3, "loss": float("nan")},
            {"step": 4, "loss": None},
        ],
    ],
    ids=["normal", "no-eval", "eval-only", "empty", "summary-only", "single", "junk"],
)
def test_plots_write_png(tmp_path: Path, rows: list[dict]) -> None:
    loss = plot_loss(rows, tmp_path / "loss.png")
    lr = plot_lr(rows, tmp_path / "lr.png")
    assert loss == tmp_path / "loss.png"
    assert lr == tmp_path / "lr.png"
    _assert_png(loss)
    _assert_png(lr)


def test_plots_create_parent_dir_and_accept_str(tmp_path: Path) -> None:
    out = plot_loss(ROWS, str(tmp_path / "sub" / "dir" / "loss.png"))  # type: ignore[arg-type]
    _assert_png(Path(out))


def test_plots_do_not_touch_pyplot(tmp_path: Path) -> None:
    plot_loss(ROWS, tmp_path / "loss.png")
    pyplot = sys.modules.get("matplotlib.pyplot")
    # if some other test imported pyplot, our figure must at least not be registered with it
    if pyplot is not None:
        assert pyplot.get_fignums() == []


def test_read_metrics(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    path.write_text("\n".join(lines[:3]) + "\n\n   \n" + "\n".join(lines[3:]) + "\n", encoding="utf-8")
    assert read_metrics(path) == ROWS


def test_read_metrics_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}]


def test_read_metrics_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n', encoding="utf-8")
    with pytest.raises(TunelabError) as info:
        read_metrics(path)
    assert info.value.line == 2
    path.write_text('{"step": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(TunelabError):
        read_metrics(path)


def test_read_metrics_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("", encoding="utf-8")
    assert read_metrics(path) == []
