"""YAML files a person writes (run configs, prepare configs): read as a mapping with one clear error,
line numbers of every key for later messages, and `--set KEY=VALUE` overrides laid over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError


def read_mapping(path: Path, what: str) -> tuple[dict[str, Any], str]:
    """(the parsed mapping, the file's text); a missing file, bad YAML or a non-mapping is one error."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError("config file not found", file=str(path), expected=what)
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TunelabError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                           line=mark.line + 1 if mark else None) from None  # fmt: skip
    if not isinstance(raw, dict):
        raise TunelabError("the config must be a mapping of keys", file=str(path), line=1)
    return raw, text


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = (*path, str(key.value))
                lines[p] = key.start_mark.line + 1
                walk(value, p)

    walk(root, ())
    return lines


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn `--set training.lr=1e-4` strings into a nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise TunelabError(f"bad --set {item!r}", expected="KEY.SUB=VALUE, e.g. training.lr=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
            except ValueError:
                pass
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TunelabError(f"--set {item!r} conflicts with another --set of {part!r}")
        node[parts[-1]] = value
    return tree


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested mappings merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
