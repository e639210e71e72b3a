"""Imports point down: every module of tunelab sits in a layer, and may import only from its own layer
or the ones below. The layers are the README's Development diagram; this test keeps them true."""

import ast
from pathlib import Path

import tunelab

# most specific prefix first; a module's layer is that of the first prefix it starts with
LAYERS = [
    ("tunelab.__main__", 8), ("tunelab.cli", 8), ("tunelab.commands", 8), ("tunelab.serve", 8), ("tunelab.ui", 8),
    ("tunelab.evaluation.crossval", 7), ("tunelab.api", 7), ("tunelab.workspace", 7),
    ("tunelab.export", 6), ("tunelab.planning", 6), ("tunelab.evaluation.generation_eval", 2), ("tunelab.evaluation.probes", 2), ("tunelab.evaluation.metrics", 1),
    ("tunelab.evaluation.bootstrap", 1), ("tunelab.evaluation.ratings", 1), ("tunelab.evaluation.plots", 1), ("tunelab.evaluation", 6),
    ("tunelab.runs.loading", 5),
    ("tunelab.config", 4),
    ("tunelab.stages", 3),
    ("tunelab.inference", 2), ("tunelab.training.trainer", 2), ("tunelab.training.losses", 2),
    ("tunelab.training", 1), ("tunelab.runs", 1), ("tunelab.data", 1), ("tunelab.models", 1),
    ("tunelab.methods", 1), ("tunelab.reporting", 1), ("tunelab.rewards", 1),
    ("tunelab.allocator", 0), ("tunelab.errors", 0), ("tunelab.files", 0), ("tunelab.paths", 0), ("tunelab.progress", 0),
    ("tunelab.yaml_files", 0),
]  # fmt: skip


def layer(module: str) -> int:
    for prefix, n in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return n
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README diagram)")


def modules() -> dict[str, Path]:
    root = Path(tunelab.__file__).parent
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "tunelab":  # the package's lazy re-exports of the API
            out[name] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "tunelab" or m.startswith("tunelab.")}


def test_every_import_points_down_or_sideways_within_a_layer():
    upward = []
    for name, path in modules().items():
        for target in imports(path):
            if target == "tunelab":
                continue
            if layer(target) > layer(name):
                upward.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert not upward, "\n".join(sorted(upward))


def test_the_rendering_layer_imports_nothing_above_the_core():
    for name, path in modules().items():
        if name.startswith("tunelab.reporting"):
            assert all(layer(t) == 0 or t.startswith("tunelab.reporting") for t in imports(path)), name
