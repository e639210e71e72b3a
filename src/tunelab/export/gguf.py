"""`tunelab export RUN --format gguf`: one GGUF file (llama.cpp, Ollama, LM Studio) with the merged
weights, the tokenizer and the run's chat template, written with the `gguf` package.

Supported: Llama-family models (`llama`: SmolLM2, Llama, …) and Qwen2, with a byte-level BPE
tokenizer (GPT-2 style, as both use). Weights go out as f32, f16 (norms stay f32, as llama.cpp
does) or q8_0. Llama's q/k projections are permuted into llama.cpp's rotary layout, exactly as
llama.cpp's own converter does (and as readers undo).

The file is then read back by an independent reader — transformers' GGUF loader — and its greedy
continuation of a fixed prompt is compared token for token with the merged model's; the GGUF's own
tokenizer and chat template must also give the run's prompt ids.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

GGUF_DTYPES = ("f32", "f16", "q8_0")
ARCHS = {"llama": "LLAMA", "qwen2": "QWEN2"}  # transformers model_type -> gguf MODEL_ARCH name
VERIFY_PROMPT = "What is the capital of France?"


@dataclass
class GgufResult:
    path: Path
    dtype: str
    arch: str
    size_mb: float
    tensors: int
    verified: bool | None = None  # None: not checked
    same_tokens: bool | None = None
    tokens_compared: int = 0
    first_difference: int | None = None  # index of the first differing generated token
    tokenizer_match: bool | None = None
    merge_logit_diff: float | None = None
    notes: list[str] = field(default_factory=list)


# -- tokenizer -----------------------------------------------------------------------------------


def _pre_tokenizer_name(tok_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (how text is split before merges)."""
    pre = tok_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        kinds = [p.get("type") for p in parts]
        if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
            return "smollm"  # GPT-2 splitting with one digit per token
        if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
            pattern = (parts[0].get("pattern") or {}).get("Regex")
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

            for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
                if regex == pattern:
                    return name
    raise TunelabError(
        f"tokenizer pre-tokenizer {json.dumps(pre)[:120]} has no GGUF equivalent tunelab knows",
        expected="a GPT-2 style byte-level BPE tokenizer (SmolLM2, Llama 3, Qwen2)",
    )


def tokenizer_metadata(tokenizer: Any, vocab_rows: int) -> dict[str, Any]:
    """What GGUF stores of a byte-level BPE tokenizer: tokens, types, merges, special ids, pre-tokenizer."""
    from gguf import TokenType

    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or (tok_json.get("decoder") or {}).get("type") not in ("ByteLevel", None):
        raise TunelabError(
            f"tokenizer is {model.get('type')} with decoder {(tok_json.get('decoder') or {}).get('type')}",
            expected="a byte-level BPE tokenizer (GGUF export supports GPT-2 style vocabularies)",
        )
    if tok_json.get("normalizer"):
        raise TunelabError("tokenizer has a normalizer, which GGUF's byte-level BPE cannot express",
                           expected="a byte-level BPE tokenizer without normalizer")
    pre = _pre_tokenizer_name(tok_json)
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["id"]: t for t in tok_json.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    size = max(vocab_rows, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(TokenType.UNUSED)] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = int(TokenType.NORMAL)
    for i, t in added.items():
        types[i] = int(TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    with_specials = tokenizer("a")["input_ids"]
    return {
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
        "add_bos": len(with_specials) > len(plain) and with_specials[0] == tokenizer.bos_token_id,
        "add_eos": len(with_specials) > len(plain) and with_specials[-1] == tokenizer.eos_token_id,
    }


# -- weights -------------------------------------------------------------------------------------


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout for q/k rows (interleaved halves per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_metadata(config: Any) -> tuple[float, dict[str, Any] | None]:
    params = getattr(config, "rope_parameters", None) or {}
    legacy = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), {"type": "linear", "factor": float(params.get("factor") or legacy.get("factor"))}
    raise TunelabError(f"rope scaling {kind!r} is not supported by tunelab's GGUF export",
                       expected="a model with default or linear rope")


def write_gguf(model: Any, tokenizer: Any, chat_template: str | None, path: Path, *, dtype: str = "f16",
               name: str = "model") -> tuple[str, int]:
    """Write MODEL (a plain transformers causal LM) as one GGUF file; returns (arch, tensor count)."""
    import gguf
    import numpy as np

    if dtype not in GGUF_DTYPES:
        raise TunelabError(f"unknown GGUF dtype {dtype!r}", field="--dtype", expected=", ".join(GGUF_DTYPES))
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise TunelabError(
            f"GGUF export does not support model type {model_type!r}",
            expected=f"one of {', '.join(ARCHS)} (Llama-family such as SmolLM2, or Qwen2)",
        )
    arch = getattr(gguf.MODEL_ARCH, ARCHS[model_type])
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    n_layers = config.num_hidden_layers
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    theta, scaling = _rope_metadata(config)
    state = model.state_dict()
    vocab_rows = state["model.embed_tokens.weight"].shape[0]
    tok = tokenizer_metadata(tokenizer, vocab_rows)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]

    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(int(file_type))
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(theta)
    if scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(len(tok["tokens"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if tok[key] is not None:
            add(int(tok[key]))
    writer.add_add_bos_token(bool(tok["add_bos"]))
    writer.add_add_eos_token(bool(tok["add_eos"]))
    if chat_template:
        writer.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(arch, n_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        base, suffix = hf_name.rsplit(".", 1)
        mapped = names.get_name(base)
        if mapped is None:
            raise TunelabError(f"no GGUF name for tensor {hf_name!r} of a {model_type} model",
                               expected="a standard transformers checkpoint")
        data = tensor.detach().float().cpu().numpy()
        if model_type == "llama" and suffix == "weight":
            if base.endswith("self_attn.q_proj"):
                data = _permute(data, n_head)
            elif base.endswith("self_attn.k_proj"):
                data = _permute(data, n_kv)
        gguf_name = f"{mapped}.{suffix}"
        if data.ndim == 1 or dtype == "f32":
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif dtype == "f16":
            writer.add_tensor(gguf_name, data.astype(np.float16))
        elif data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:  # rows not a multiple of the 32-value block: keep this one in f16, as llama.cpp does
            writer.add_tensor(gguf_name, data.astype(np.float16))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return arch_name, count


# -- read back -----------------------------------------------------------------------------------


def _greedy(model: Any, ids: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    import torch

    x = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        # EOS is held off (identically for both models) so that every compared position is a real token
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return out[0, len(ids):].tolist()


def verify_gguf(path: Path, reference: Any, tokenizer: Any, fmt: Any, shape: str, *,
                prompt: str = VERIFY_PROMPT, max_new_tokens: int = 24) -> dict[str, Any]:
    """Load PATH with transformers' GGUF reader; compare prompt ids and greedy tokens with REFERENCE."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.inference.prompts import prompt_ids

    if fmt is not None:
        ids = prompt_ids(fmt, tokenizer, shape, prompt)
    else:
        ids = tokenizer(prompt)["input_ids"]
    gtok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if fmt is not None and fmt.kind != "text" and gtok.chat_template:
        gguf_ids = gtok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        gguf_ids = gtok(prompt)["input_ids"]
    gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    gguf_model.eval()
    eos = tokenizer.eos_token_id
    want = _greedy(reference, ids, max_new_tokens, eos)
    got = _greedy(gguf_model, ids, max_new_tokens, eos)
    first = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
    if first is None and len(want) != len(got):
        first = min(len(want), len(got))
    return {
        "same_tokens": want == got,
        "tokens_compared": len(want),
        "first_difference": first,
        "tokenizer_match": list(gguf_ids) == list(ids),
        "reference_text": tokenizer.decode(want, skip_special_tokens=True),
        "gguf_text": tokenizer.decode(got, skip_special_tokens=True),
    }


def export_gguf(run_dir: str | Path, out: str | Path | None = None, *, dtype: str = "f16", verify: bool = True,
                overwrite: bool = False) -> GgufResult:
    """Merge a run and write it as a GGUF file (default RUN/export/NAME-DTYPE.gguf), then read it back."""
    from tunelab.export.merge import export_chat_template, merged_model
    from tunelab.inference.prompts import prompt_shape

    if dtype not in GGUF_DTYPES:
        raise TunelabError(f"unknown GGUF dtype {dtype!r}", field="--dtype", expected=", ".join(GGUF_DTYPES))
    run_path = Path(run_dir).expanduser()
    path = Path(out).expanduser() if out is not None else run_path / "export" / f"{run_path.name}-{dtype}.gguf"
    if path.is_dir():
        path = path / f"{run_path.name}-{dtype}.gguf"
    if path.suffix != ".gguf":
        raise TunelabError("GGUF output must end in .gguf", file=str(path), expected="e.g. --out model.gguf")
    if path.exists() and not overwrite:
        raise TunelabError("file already exists", file=str(path), expected="another --out, or --overwrite")
    merged = merged_model(run_path, dtype="float32")
    if merged.fmt is None:
        raise TunelabError("GGUF export is for generative (causal LM) runs", file=str(run_path),
                           expected="an sft or pretrain run")
    template = export_chat_template(merged.fmt, merged.tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        arch, count = write_gguf(merged.model, merged.tokenizer, template, tmp, dtype=dtype, name=run_path.name)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    result = GgufResult(path=path, dtype=dtype, arch=arch, size_mb=round(path.stat().st_size / 1e6, 1),
                        tensors=count, merge_logit_diff=merged.max_abs_logit_diff, notes=list(merged.notes))
    if verify:
        check = verify_gguf(path, merged.model, merged.tokenizer, merged.fmt, prompt_shape(merged.fmt))
        result.same_tokens = check["same_tokens"]
        result.tokens_compared = check["tokens_compared"]
        result.first_difference = check["first_difference"]
        result.tokenizer_match = check["tokenizer_match"]
        result.verified = bool(check["same_tokens"] and check["tokenizer_match"])
        if not check["same_tokens"]:
            result.notes.append(
                f"greedy tokens differ from token {check['first_difference']} "
                f"(merged: {check['reference_text']!r}; GGUF: {check['gguf_text']!r})"
                + (" — expected with q8_0 rounding" if dtype == "q8_0" else "")
            )
        if not check["tokenizer_match"]:
            result.notes.append("the GGUF's tokenizer/chat template give different prompt ids than the run's format")
    return result
