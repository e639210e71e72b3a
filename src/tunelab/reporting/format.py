"""Escaping and number formatting for the report: every piece of data goes through `esc` (or one of
the formatters, which escape what is not a number) before it reaches the page."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DASH", "Metric", "cell", "config_yaml", "esc", "fmt_metric", "fmt_signed", "fmt_value", "is_number"]

DASH = "\u2014"


@dataclass(frozen=True)
class Metric:
    """How one metric is shown; filled by the caller (the rendering layer knows no metric by name)."""

    key: str
    label: str = ""  # shown name; the key when empty
    lower_is_better: bool = False  # a smaller value is an improvement
    neutral: bool = False  # descriptive (token counts …): never coloured green/red
    digits: int = 2  # decimals of values and differences
    count: bool = False  # integral values shown as counts: 1,234

    @property
    def name(self) -> str:
        return self.label or self.key


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def fmt_metric(metric: Metric, value: Any) -> str:
    """A metric value: ``metric.digits`` decimals; missing/None/NaN → an em dash."""
    if value is None:
        return DASH
    if not is_number(value):
        return esc(value)
    value = float(value)
    if math.isnan(value):
        return DASH
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if metric.count and value.is_integer():
        return f"{int(value):,}"
    return f"{value:.{metric.digits}f}"


def fmt_signed(metric: Metric, value: Any) -> str:
    """A difference with its sign; missing or not finite → an em dash."""
    if not is_number(value) or not math.isfinite(float(value)):
        return DASH
    return f"{float(value):+.{metric.digits}f}"


def fmt_value(value: Any) -> str:
    """A summary value: ints with thousands separators, floats rounded, everything else as str."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"
        text = f"{value:,.2f}".rstrip("0").rstrip(".")
        return text or "0"
    return esc(value)


def cell(value: Any, kind: str) -> str:
    """One ``<td>`` of a data table; numeric cells carry their value in ``data-v`` for sorting."""
    if kind == "num":
        if value is None or not is_number(value) or not math.isfinite(float(value)):
            return f'<td class="num" data-v="">{DASH if value is None else esc(value)}</td>'
        text = f"{value:,}" if isinstance(value, int) else f"{float(value):.2f}"
        return f'<td class="num" data-v="{float(value)!r}">{text}</td>'
    if value is None:
        return f"<td>{DASH}</td>"
    if value == "":
        return '<td class="muted" data-v="">(empty)</td>'
    return f"<td>{esc(value)}</td>"


def _plain(obj: Any) -> Any:
    """Make a config safe for yaml.safe_dump (Paths, tuples, enums, sets … → plain types)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((_plain(v) for v in obj), key=str)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "model_dump"):  # a pydantic model
        return _plain(obj.model_dump())
    value = getattr(obj, "value", None)  # an Enum
    if isinstance(value, str | int | float):
        return value
    return str(obj)


def config_yaml(config: Mapping[str, Any]) -> str:
    import yaml

    try:
        return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError as exc:  # pragma: no cover - _plain should make this unreachable
        return f"# config could not be rendered as YAML: {exc}\n{config!r}"
