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
from tunelab.paths import check_removable, remove_owned

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
    from tunelab.inference.prompts import prompt_ids
    from tunelab.runs.artifacts import read_predictions

    prompts = [p.input for p in read_predictions(run.predictions)[:2] if p.input.strip()]
    prompts += list(PROBE_PROMPTS[: 3 - len(prompts)])
    if fmt is None:  # a classifier: raw text
        return [tokenizer(p)["input_ids"] for p in prompts]
    ids = []
    for p in prompts:
        try:
            ids.append(prompt_ids(fmt, tokenizer, shape, p)[-256:])
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


def merged_model(run_dir: str | Path, *, dtype: str = "float32") -> Merged:
    """Load a complete run and return its model with the trained weights folded in."""
    import torch
    from peft import PeftModel

    from tunelab.inference.prompts import prompt_shape
    from tunelab.methods.registry import METHODS
    from tunelab.models.loading import load_model, load_tokenizer
    from tunelab.progress import quiet_libraries
    from tunelab.runs.loading import load_base_for_merge, run_config
    from tunelab.stages.registry import STAGES

    quiet_libraries()
    torch_dtype = _dtype(dtype)
    run, cfg = run_config(run_dir)
    method, stage = METHODS[cfg.method], STAGES[cfg.task]
    tokenizer = load_tokenizer(run.tokenizer_dir)
    fmt = run.read_format()
    weights = run.path / method.weights_dir

    if method.saves_whole_model:  # full / freeze: the run saved a complete model; nothing to fold in
        kwargs = {"trust_remote_code": cfg.model.trust_remote_code}
        if stage.kind.classifier:
            kwargs.update(labels=run.read_labels(), pad_token_id=tokenizer.pad_token_id)
        model = load_model(weights, stage.model_kind, dtype=torch_dtype, **kwargs)
        return Merged(model, tokenizer, fmt, cfg, run, cfg.method, dtype, 0.0, 0,
                      [f"method {cfg.method!r} saved the whole model; re-saved as is"])  # fmt: skip
    if not method.mergeable:
        raise cannot_merge(run.path, cfg.method)

    probes = probe_ids(run, fmt, tokenizer, prompt_shape(fmt))

    def load_base(quantized: bool) -> Any:
        return load_base_for_merge(cfg, run, tokenizer, quantized=quantized, dtype=torch.float32)

    target = method.merge_base(load_base, cfg.method_options())
    reference = None
    if target.trained_on is not None:  # the adapter ran on another base (4-bit): reference logits from there
        adapter_model = PeftModel.from_pretrained(target.trained_on, str(weights)).eval()
        reference = _logits(adapter_model, probes)
        del adapter_model
        target.trained_on = None
    model = PeftModel.from_pretrained(target.base, str(weights)).eval()
    if reference is None:
        reference = _logits(model, probes)
    try:
        merged = model.merge_and_unload(safe_merge=True)
    except (ValueError, NotImplementedError, AttributeError) as exc:
        raise TunelabError(f"peft cannot merge this {cfg.method} adapter: {exc}", file=str(weights),
                           expected=f"`tunelab export {run.path} --format adapter --out DIR` instead") from None
    merged.eval()
    diff = _max_diff(reference, _logits(merged, probes))
    if torch_dtype != torch.float32:
        merged = merged.to(torch_dtype)
    precision = f"{dtype} (base {target.weights_from})" if target.weights_from else dtype
    return Merged(merged, tokenizer, fmt, cfg, run, cfg.method, precision, diff, sum(map(len, probes)), target.notes)


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


# what `merge` and `export` leave in their output folder: only such a folder is replaced by --overwrite
OUTPUT_MARKERS = ("merge_info.json", "adapter_config.json")
OUTPUT_WHAT = "a tunelab merge or export"


def _fresh_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise TunelabError("output directory already exists and is not empty", file=str(out),
                               expected="a new directory, or --overwrite to replace it")
        check_removable(out, markers=OUTPUT_MARKERS, what=OUTPUT_WHAT)  # before the work, not after


def _replace_dir(tmp: Path, out: Path) -> None:
    remove_owned(out, markers=OUTPUT_MARKERS, what=OUTPUT_WHAT)
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
    out = Path(out_dir).expanduser()
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
    from tunelab.methods.registry import METHODS
    from tunelab.models.loading import load_tokenizer
    from tunelab.runs.loading import run_config
    from tunelab.stages.base import base_model_path

    out = Path(out_dir).expanduser()
    _fresh_dir(out, overwrite)
    run, cfg = run_config(run_dir)
    adapter = run.path / METHODS[cfg.method].weights_dir
    if METHODS[cfg.method].saves_whole_model:
        raise TunelabError(f"method {cfg.method!r} saved a whole model, not an adapter", file=str(run.path),
                           expected=f"`tunelab merge {run.path} --out DIR` for a plain model directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for item in adapter.iterdir():
            if item.is_file() and item.suffix in (".json", ".safetensors"):
                shutil.copy2(item, tmp / item.name)
        tok = load_tokenizer(run.tokenizer_dir)
        template = export_chat_template(run.read_format(), tok)
        if template:
            tok.chat_template = template
        tok.save_pretrained(tmp)
        base = base_model_path(cfg, run)
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
