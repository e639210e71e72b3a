"""YAML files a person writes (run configs, prepare configs): read as a mapping with one clear error,
line numbers of every key for later messages, and `--set KEY=VALUE` overrides laid over them.

YAML (and JSON, which YAML reads too) can say things no config means, and PyYAML either accepts them
silently or crashes on them; `load_yaml` refuses each with its line: a key given twice (PyYAML keeps
the last), nesting deeper than `MAX_DEPTH` (PyYAML's composer recurses until Python's stack runs out),
aliases that expand to more than `MAX_VALUES` values (a "billion laughs" document of a few hundred
bytes takes minutes and all memory to expand) or to a structure that contains itself, integers too long
for Python to convert, and values PyYAML's constructors raise on (a timestamp with month 13).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from tunelab.errors import TunelabError
from tunelab.files import decode_utf8, read_bytes

MAX_DEPTH = 50  # nesting levels a config may have (a run config has three)
MAX_VALUES = 100_000  # values a document may expand to through its aliases
MAX_INT_CHARS = 100  # an integer longer than this is no config value (Python refuses 4300+ digits)
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what a config never means (see the module docstring)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _MERGE:
                continue
            if (key.tag, key.value) in seen:
                raise ComposerError(None, None, f"duplicate key {key.value!r} (first given at line "
                                    f"{seen[(key.tag, key.value)]}; YAML would keep only the last)", key.start_mark)  # fmt: skip
            seen[(key.tag, key.value)] = key.start_mark.line + 1
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:  # e.g. 2024-13-01 as a timestamp
            value = node.value if isinstance(node, ScalarNode) else node.tag
            raise ConstructorError(None, None, f"cannot read the value {value!r}: {exc}"[:300],
                                   node.start_mark) from None  # fmt: skip

    def construct_yaml_int(self, node: Any) -> Any:
        if len(str(node.value)) > MAX_INT_CHARS:
            raise ConstructorError(None, None, f"integer of {len(node.value)} characters is too large",
                                   node.start_mark)  # fmt: skip
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _check_expansion(root: Any) -> None:
    """Refuse aliases that make the document huge, too deep or contain itself, before it is built."""
    done: dict[int, tuple[int, int]] = {}  # id(node) → (values, depth) of its expansion
    open_nodes: set[int] = set()

    def visit(node: Any, level: int) -> tuple[int, int]:
        key = id(node)
        if key in done:
            size, depth = done[key]
        elif key in open_nodes:
            raise ComposerError(None, None, "an alias refers to a node that contains it (a structure that "
                                "contains itself)", node.start_mark)  # fmt: skip
        else:
            if level > MAX_DEPTH:
                raise ComposerError(None, None, f"aliases nest this more than {MAX_DEPTH} levels deep", node.start_mark)
            open_nodes.add(key)
            size, depth = 1, 1
            children = (node.value if isinstance(node, SequenceNode)
                        else [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else [])  # fmt: skip
            for child in children:
                child_size, child_depth = visit(child, level + 1)
                size += child_size
                depth = max(depth, child_depth + 1)
                if size > MAX_VALUES:
                    raise ComposerError(None, None, f"aliases expand this to more than {MAX_VALUES:,} values",
                                        node.start_mark)  # fmt: skip
            open_nodes.discard(key)
            done[key] = (size, depth)
        if level + depth - 1 > MAX_DEPTH:
            raise ComposerError(None, None, f"aliases nest this more than {MAX_DEPTH} levels deep", node.start_mark)
        return size, depth

    if root is not None:
        visit(root, 1)


def _compose(text: str) -> Any:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        _check_expansion(root)
        return root, loader
    except BaseException:
        loader.dispose()
        raise


def _error(exc: BaseException, text: str, file: str | None) -> TunelabError:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return TunelabError(f"invalid YAML: character {char!r} (#x{ord(char):04x}) is not allowed in YAML text",
                            file=file, line=line, expected="printable text (write it as an escape in a quoted string)")  # fmt: skip
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or str(exc)
        if exc.problem and exc.context and not exc.context.startswith("while"):  # "expected a single document …"
            problem = f"{exc.context}, {exc.problem}"
        return TunelabError(f"invalid YAML: {problem}", file=file, line=mark.line + 1 if mark else None)
    if isinstance(exc, RecursionError):
        return TunelabError(f"invalid YAML: nested too deeply (more than {MAX_DEPTH} levels)", file=file)
    return TunelabError(f"invalid YAML: {exc}", file=file)


def load_yaml(text: str, file: str | None = None) -> Any:
    """The value of a YAML document (None when empty); anything it cannot mean is one error with its line."""
    try:
        root, loader = _compose(text)
        try:
            return loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise _error(exc, text, file) from None


def read_mapping(path: Path, what: str) -> tuple[dict[str, Any], str]:
    """(the parsed mapping, the file's text); a missing file, bad YAML or a non-mapping is one error."""
    raw = read_bytes(path, expected=what, missing="config file not found", kind="config")
    name = str(path)
    text = decode_utf8(raw, name)
    value = load_yaml(text, name)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise TunelabError(f"the config is a {type(value).__name__}, not a mapping of keys", file=name, line=1,
                           expected=what)  # fmt: skip
    return value, text


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document (and each list item, by its index) to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root, loader = _compose(text)
        loader.dispose()
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        return lines

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if len(path) >= MAX_DEPTH:
            return
        if isinstance(node, MappingNode):
            for key, value in node.value:
                p = (*path, str(key.value))
                lines.setdefault(p, key.start_mark.line + 1)
                walk(value, p)
        elif isinstance(node, SequenceNode) and path:  # list items too: ("lora", "target_modules", "0")
            for index, value in enumerate(node.value):
                p = (*path, str(index))
                lines.setdefault(p, value.start_mark.line + 1)
                walk(value, p)

    walk(root, ())
    return lines


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn `--set training.lr=1e-4` strings into a nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise TunelabError(f"bad --set {item!r}", field="--set", expected="KEY.SUB=VALUE, e.g. training.lr=1e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(part.strip() for part in parts):
            raise TunelabError(f"bad --set {item!r}: an empty key", field="--set",
                               expected="KEY.SUB=VALUE, e.g. training.lr=1e-4")  # fmt: skip
        try:
            value = load_yaml(raw) if raw != "" else ""
        except TunelabError:  # not a YAML value (a template such as "Q: {question}"; a bomb): the text itself
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
            except ValueError:
                pass
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TunelabError(f"--set {item!r} conflicts with another --set of {part!r}", field="--set")
        node[parts[-1]] = value
    return tree


def override_keys(overrides: list[str] | None) -> set[tuple[str, ...]]:
    """The dotted key paths `--set` gives, for telling an error in an override from one in the file."""
    return {tuple(item.split("=", 1)[0].strip().split(".")) for item in overrides or [] if "=" in item}


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested mappings merged key by key (neither is changed)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
