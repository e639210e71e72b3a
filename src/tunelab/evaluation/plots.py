"""Training-curve plots from a run's ``metrics.jsonl`` (rows logged by the HF Trainer).

matplotlib is imported inside the functions so that importing this module (and starting the CLI)
stays fast. Figures are drawn on an Agg canvas without pyplot, so no global backend or figure
state is touched and nothing ever opens a window.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["plot_histograms", "plot_loss", "plot_lr", "plot_runs", "plot_signals"]

_DPI = 110
_FIGSIZE = (7.0, 4.0)


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, bool, str, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for rows that have both a numeric ``step`` and a numeric ``key``, by step."""
    points = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        step, value = _number(row.get("step")), _number(row.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    points.sort(key=lambda p: p[0])  # stable: a resumed run keeps its logging order per step
    return [p[0] for p in points], [p[1] for p in points]


def _new_axes(title: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: Path) -> Path:
    """Write the PNG atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=_DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_loss(rows: list[dict], path: Path) -> Path:
    """Train ``loss`` and ``eval_loss`` against ``step`` on one axes; writes a PNG to ``path``."""
    fig, ax = _new_axes("Loss", "loss")
    train_x, train_y = _series(rows, "loss")
    eval_x, eval_y = _series(rows, "eval_loss")
    if train_x:
        ax.plot(
            train_x,
            train_y,
            label="train loss",
            color="tab:blue",
            linewidth=1.5,
            marker="o" if len(train_x) == 1 else None,
            markersize=4,
        )
    if eval_x:
        ax.plot(
            eval_x, eval_y, label="eval loss", color="tab:orange", linewidth=1.5, marker="o", markersize=4
        )
    if train_x or eval_x:
        ax.legend(loc="best")
    else:
        _no_data(ax)
    return _save(fig, path)


def plot_lr(rows: list[dict], path: Path) -> Path:
    """``learning_rate`` against ``step``; writes a PNG to ``path``."""
    fig, ax = _new_axes("Learning rate", "learning rate")
    xs, ys = _series(rows, "learning_rate")
    if xs:
        ax.plot(xs, ys, color="tab:green", linewidth=1.5, marker="o" if len(xs) == 1 else None, markersize=4)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        _no_data(ax)
    return _save(fig, path)


# What preference and RL trainers log besides their loss (GRPO's loss sits near zero by design, so its
# curve alone says nothing): (title, keys drawn together, train and eval)
SIGNALS = (
    ("Reward", ("reward", "rewards/chosen", "rewards/rejected")),
    ("Reward spread", ("reward_std",)),
    ("Reward margin (chosen − rejected)", ("rewards/margins",)),
    ("Preference accuracy", ("rewards/accuracies",)),
    ("KL to the reference", ("kl",)),
    ("Log odds ratio, chosen vs rejected (ORPO)", ("log_odds_ratio",)),
    ("SFT loss on chosen (ORPO, CPO-SimPO)", ("nll_loss",)),
    ("Answer length (tokens)", ("completions/mean_length",)),
)


def plot_signals(rows: list[dict], path: Path) -> Path | None:
    """One small panel per training signal logged (train solid, eval dashed); None when none is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(t, keys) for t, keys in SIGNALS if any(_series(rows, k)[0] or _series(rows, f"eval_{k}")[0] for k in keys)]
    if not panels:
        return None
    cols = min(3, len(panels))
    n_rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * n_rows), dpi=_DPI)
    FigureCanvasAgg(fig)
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(n_rows, cols, i + 1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        for colour, key in zip(_COLOURS, keys, strict=False):
            for prefix, style in (("", "-"), ("eval_", "--")):
                xs, ys = _series(rows, prefix + key)
                if xs:
                    ax.plot(xs, ys, style, color=colour, linewidth=1.3, label=f"{prefix}{key}".replace("eval_", "eval "))
        ax.legend(fontsize=7)
    return _save(fig, path)


_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def plot_runs(runs: dict[str, list[dict]], path: Path, *, key: str = "loss", title: str = "Loss") -> Path:
    """Several runs' curves on one axes: ``key`` (solid) and, for ``loss``, ``eval_loss`` (dashed)."""
    fig, ax = _new_axes(title, key.replace("_", " "))
    drawn = False
    for n, (name, rows) in enumerate(runs.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, color=colour, linewidth=1.5, label=f"{name}" if key != "loss" else f"{name} train",
                    marker="o" if len(xs) == 1 else None, markersize=4)
            drawn = True
        if key == "loss":
            ex, ey = _series(rows, "eval_loss")
            if ex:
                ax.plot(ex, ey, color=colour, linewidth=1.2, linestyle="--", marker="o", markersize=3,
                        label=f"{name} eval")
                drawn = True
    if drawn:
        ax.legend(loc="best", fontsize=8)
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        _no_data(ax)
    return _save(fig, path)


def plot_histograms(
    series: dict[str, list[float]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    marker: tuple[float, str] | None = None,
) -> Path:
    """Overlaid step histograms of several series on shared bins; an optional labelled vertical line."""
    fig, ax = _new_axes(title, "rows")
    ax.set_xlabel(xlabel)
    clean = {k: [float(v) for v in vals if _number(v) is not None] for k, vals in series.items()}
    values = [v for vals in clean.values() for v in vals]
    if values:
        lo, hi = min(values), max(values)
        if marker is not None:
            hi = max(hi, marker[0])
        width = max(1.0, math.ceil((hi - lo + 1) / 30))
        bins = [lo + i * width for i in range(int((hi - lo) // width) + 2)]
        for n, (name, vals) in enumerate(clean.items()):
            if vals:
                mean = sum(vals) / len(vals)
                ax.hist(vals, bins=bins, histtype="step", linewidth=1.6, color=_COLOURS[n % len(_COLOURS)],
                        label=f"{name} (mean {mean:.1f})")
        if marker is not None:
            ax.axvline(marker[0], color="0.3", linestyle=":", linewidth=1.2, label=f"{marker[1]} = {marker[0]:g}")
        ax.legend(loc="best", fontsize=8)
        ax.grid(True, alpha=0.3)
    else:
        _no_data(ax)
    return _save(fig, path)
