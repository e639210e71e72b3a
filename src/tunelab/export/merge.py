"""`tunelab merge RUN --out DIR`: fold a run's adapter into its base and write a plain HF model.

- LoRA, DoRA, IA3 (and any other peft adapter that can merge): the adapter is loaded on a float
  base and `merge_and_unload()` folds it in.
- QLoRA: the adapter was trained against a 4-bit base, so it is folded into that base
  *de-quantized* (the float values the 4-bit weights stand for), which is the model the adapter
  actually learned on; the original float weights would be a slightly different model.
- prompt / ptuning / prefix: virtual tokens are not weights of the base; nothing to fold. The
  adapter itself is the deliverable (`tunelab export RUN --format adapter`).
- full / freeze runs already saved a whole model; it is re-saved the same way.

Every merge is checked: the merged model's logits are compared with the adapter model's on a few
prompts formatted as in training, and the largest difference is reported (and saved in
`merge_info.json`). The directory holds only Hugging Face files (safetensors, config, generation
config, tokenizer with the run's chat template), so it loads with plain transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

DTYPES = ("float32", "float16", "bfloat16")
PROBE_PROMPTS = ("What is AI?", "Tell me a joke.", "What colour is the sky?")


@dataclass
class MergeResult:
    out: Path
    method: str
    precision: str  # dtype of the written weights, and for QLoRA what the base was de-quantized from
    max_abs_logit_diff: float | None  # merged vs adapter model, over the probe prompts
    probe_tokens: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Merged:
    """A merged model in memory, with what is needed to write or export it."""

    model: Any
    tokenizer: Any
    fmt: Any
    cfg: Any
    run: Any
    method: str
    precision: str
    max_abs_logit_diff: float | None
    probe_tokens: int
    notes: list[str]


def _dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise TunelabError(f"unknown dtype {name!r}", field="--dtype", expected=", ".join(DTYPES))
    return getattr(torch, name)


def adapter_peft_type(adapter_dir: Path) -> tuple[str, bool]:
    """(peft type, is prompt learning) from an adapter's adapter_config.json."""
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise TunelabError("adapter has no adapter_config.json", file=str(adapter_dir), expected="a peft adapter")
    data = json.loads(config_file.read_text(encoding="utf-8"))
    peft_type = str(data.get("peft_type", "")).upper()
    prompt_learning = peft_type in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING",
                                    "ADAPTION_PROMPT", "CPT")
    return peft_type, prompt_learning


def cannot_merge(run_path: Path, method: str) -> TunelabError:
    return TunelabError(
        f"method {method!r} learns virtual tokens that are prepended to every input, not changes to the "
        "model's weights, so there is nothing to merge into the base",
        file=str(run_path),
        expected=(
            f"the adapter itself: `tunelab export {run_path} --format adapter --out DIR` writes the peft adapter "
            "with its tokenizer and chat template, for PeftModel.from_pretrained(base, DIR)"
        ),
    )


def probe_ids(run: Any, fmt: Any, tokenizer: Any, shape: str) -> list[list[int]]:
    """Prompts to compare models on: held-out inputs of the run if it kept them, else fixed ones."""
    from tunelab.data.templates import example_from_prompt

    prompts: list[str] = []
    if run.predictions.is_file():
        for line in run.predictions.read_text(encoding="utf-8").splitlines()[:2]:
            value = json.loads(line).get("input")
            if isinstance(value, str) and value.strip():
                prompts.append(value)
    prompts += list(PROBE_PROMPTS[: 3 - len(prompts)])
    if fmt is None:  # a classifier: raw text
        return [tokenizer(p)["input_ids"] for p in prompts]
    ids = []
    for p in prompts:
        try:
            ids.append(fmt.prompt_ids(example_from_prompt(p, fmt, shape), tokenizer)[-256:])
        except TunelabError:  # held-out inputs of some shapes are already formatted; fall back
            ids.append(tokenizer(p)["input_ids"][-256:])
    return ids


def _logits(model: Any, ids: list[list[int]]) -> list[Any]:
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for row in ids:
            x = torch.tensor([row], dtype=torch.long, device=device)
            out.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float().cpu())
    return out


def _max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _dequantized_base(quantized: Any, float_base: Any) -> int:
    """Copy the float values of every 4-bit weight of `quantized` into `float_base`; returns how many."""
    import bitsandbytes as bnb
    import torch

    float_modules = dict(float_base.named_modules())
    count = 0
    with torch.no_grad():
        for name, module in quantized.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None or weight.__class__.__name__ != "Params4bit":
                continue
            target = float_modules.get(name)
            if target is None:
                raise TunelabError(f"4-bit module {name} has no float counterpart in the base model")
            values = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
            target.weight.copy_(values.to(device=target.weight.device, dtype=target.weight.dtype))
            count += 1
    return count


def merged_model(run_dir: str | Path, *, dtype: str = "float32") -> Merged:
    """Load a complete run and return its model with the trained weights folded in."""
    import torch

    from tunelab.config import load_config
    from tunelab.data.templates import PromptFormat
    from tunelab.methods.registry import METHODS
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.progress import quiet_libraries
    from tunelab.run import RunDir
    from tunelab.stages.registry import TASKS

    quiet_libraries()
    torch_dtype = _dtype(dtype)
    run = RunDir(run_dir)
    run.require_complete()
    cfg = load_config(run.config)
    method, task = METHODS[cfg.method], TASKS[cfg.task]
    tokenizer = load_tokenizer(run.tokenizer_dir)
    fmt = PromptFormat.load(run.template) if run.template.is_file() else None
    shape = _shape(fmt)
    weights = run.path / method.weights_dir
    labels = _labels(run)
    load_kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if task.model_kind == "seq_cls":
        load_kwargs.update(labels=labels, pad_token_id=tokenizer.pad_token_id)
    notes: list[str] = []

    if getattr(method, "saves_whole_model", False) or not (weights / "adapter_config.json").is_file():
        # full / freeze: the run saved a complete model; nothing to fold in
        model = task.load_model(weights, dtype=torch_dtype, **load_kwargs)
        notes.append(f"method {cfg.method!r} saved the whole model; re-saved as is")
        return Merged(model, tokenizer, fmt, cfg, run, cfg.method, dtype, 0.0, 0, notes)

    peft_type, prompt_learning = adapter_peft_type(weights)
    if prompt_learning:
        raise cannot_merge(run.path, cfg.method)

    from peft import PeftModel

    base_path = resolve_model(cfg.model.name).path
    probes = probe_ids(run, fmt, tokenizer, shape)
    precision = dtype
    if cfg.method == "qlora":
        from tunelab.stages.common import base_model_kwargs
        from tunelab.training.trainer import choose_precision

        options = cfg.method_options()
        quant = getattr(options, "quant_type", "nf4")
        kwargs = base_model_kwargs(cfg, choose_precision(cfg.training.precision), tokenizer, labels)
        quantized = task.load_model(base_path, **kwargs)
        # the float base with every 4-bit weight replaced by the value it stands for
        base = task.load_model(base_path, dtype=torch.float32, **load_kwargs)
        n = _dequantized_base(quantized, base)
        if n == 0:
            raise TunelabError("the QLoRA base loaded without 4-bit weights; cannot de-quantize it",
                               file=str(run.path), expected="bitsandbytes 4-bit support on this machine")
        adapter_model = PeftModel.from_pretrained(quantized, str(weights)).eval()
        reference = _logits(adapter_model, probes)
        del adapter_model, quantized
        precision = f"{dtype} (base de-quantized from 4-bit {quant.upper()})"
        notes.append(f"de-quantized {n} 4-bit weight matrices of the base to float32 before merging")
    else:
        base = task.load_model(base_path, dtype=torch.float32, **load_kwargs)
        reference = None
    model = PeftModel.from_pretrained(base, str(weights)).eval()
    if reference is None:
        reference = _logits(model, probes)
    try:
        merged = model.merge_and_unload(safe_merge=True)
    except (ValueError, NotImplementedError, AttributeError) as exc:
        raise TunelabError(f"peft cannot merge this {peft_type} adapter: {exc}", file=str(weights),
                           expected=f"`tunelab export {run.path} --format adapter --out DIR` instead") from None
    merged.eval()
    diff = _max_diff(reference, _logits(merged, probes))
    if torch_dtype != torch.float32:
        merged = merged.to(torch_dtype)
    return Merged(merged, tokenizer, fmt, cfg, run, cfg.method, precision, diff, sum(map(len, probes)), notes)


def _shape(fmt: Any) -> str:
    if fmt is None:
        return "classification"
    if fmt.kind == "text":
        return "text"
    if fmt.kind == "custom":
        from tunelab.data.shapes import RESPONSE_FIELD

        return next((s for s, f in RESPONSE_FIELD.items() if f == fmt.response_field), "qa")
    return "messages"


def _labels(run: Any) -> list[str] | None:
    path = run.path / "labels.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# -- the chat template that reproduces the run's prompt format ------------------------------------


def export_chat_template(fmt: Any, tokenizer: Any) -> str | None:
    """A Jinja chat template that renders prompts exactly as tunelab did in training.

    chat: the run's own template, with its system prompt (if any) inserted the same way;
    custom: the format string's prompt part around the last user message; text: none.
    """
    if fmt is None or fmt.kind == "text":
        return getattr(tokenizer, "chat_template", None)
    if fmt.kind == "chat":
        template = fmt.chat_template
        if fmt.system_prompt is not None:
            system = json.dumps(fmt.system_prompt)
            template = (
                "{%- if not messages or messages[0]['role'] != 'system' %}"
                "{%- set messages = [{'role': 'system', 'content': " + system + "}] + messages %}"
                "{%- endif %}" + template
            )
        return template
    import string

    cut = fmt.template.index("{" + fmt.response_field + "}")
    pieces = []
    first_field = True
    for literal, name, _, _ in string.Formatter().parse(fmt.template[:cut]):
        if literal:
            pieces.append("{{ " + json.dumps(literal) + " }}")
        if name:
            # like `tunelab generate`: the message fills the first prompt field, the others stay empty
            pieces.append("{{ ns.content }}" if first_field else "")
            first_field = False
    bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id] and tokenizer.bos_token_id is not None
    eos = json.dumps(tokenizer.eos_token or "")
    return (
        "{%- set ns = namespace(content='') %}"
        "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.content = message['content'] %}"
        "{%- endif %}{%- endfor %}"
        + ("{{ bos_token }}" if bos else "")
        + "".join(pieces)
        + "{%- if messages and messages[-1]['role'] == 'assistant' %}{{ messages[-1]['content'] + " + eos + " }}"
        "{%- endif %}"
    )


def prepare_tokenizer(merged: Merged) -> Any:
    tok = merged.tokenizer
    template = export_chat_template(merged.fmt, tok)
    if template:
        tok.chat_template = template
    return tok


def _prepare_generation_config(model: Any, tokenizer: Any) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    if tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def _fresh_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise TunelabError("output directory already exists and is not empty", file=str(out),
                               expected="a new directory, or --overwrite to replace it")


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def write_merged(merged: Merged, out: Path) -> None:
    tok = prepare_tokenizer(merged)
    model = merged.model
    _prepare_generation_config(model, tok)
    config = model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def merge_run(run_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> MergeResult:
    """Merge a run and write the Hugging Face model directory OUT_DIR."""
    out = Path(out_dir)
    _fresh_dir(out, overwrite)
    merged = merged_model(run_dir, dtype=dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        write_merged(merged, tmp)
        result = MergeResult(out=out, method=merged.method, precision=merged.precision,
                             max_abs_logit_diff=merged.max_abs_logit_diff, probe_tokens=merged.probe_tokens,
                             notes=merged.notes)
        info = {**asdict(result), "out": str(out), "run": str(merged.run.path), "base_model": merged.cfg.model.name}
        (tmp / "merge_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def export_adapter(run_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Copy a run's peft adapter with its tokenizer and chat template: the export for unmergeable methods."""
    from tunelab.config import load_config
    from tunelab.data.templates import PromptFormat
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.run import RunDir

    run = RunDir(run_dir)
    run.require_complete()
    cfg = load_config(run.config)
    adapter = run.path / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise TunelabError(f"method {cfg.method!r} saved a whole model, not an adapter", file=str(run.path),
                           expected=f"`tunelab merge {run.path} --out DIR` for a plain model directory")
    out = Path(out_dir)
    _fresh_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for item in adapter.iterdir():
            if item.is_file() and item.suffix in (".json", ".safetensors"):
                shutil.copy2(item, tmp / item.name)
        tok = load_tokenizer(run.tokenizer_dir)
        fmt = PromptFormat.load(run.template) if run.template.is_file() else None
        template = export_chat_template(fmt, tok)
        if template:
            tok.chat_template = template
        tok.save_pretrained(tmp)
        base = resolve_model(cfg.model.name).path
        (tmp / "README.md").write_text(
            f"# peft adapter from tunelab run `{run.path.name}` (method: {cfg.method})\n\n"
            "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"base = AutoModelForCausalLM.from_pretrained({base!r})\n"
            "model = PeftModel.from_pretrained(base, THIS_DIR)\ntokenizer = AutoTokenizer.from_pretrained(THIS_DIR)\n"
            "ids = tokenizer.apply_chat_template([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True,"
            " return_tensors='pt', return_dict=True)\n```\n",
            encoding="utf-8",
        )
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
