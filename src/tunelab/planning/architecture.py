"""A decoder's shape from its config.json alone: every parameter tensor, by module, with no weights.

`from_config` knows the common decoder families (Llama, Mistral, Qwen2, Qwen3, Gemma, Phi-3, GPT-2,
GPT-NeoX) and writes their modules out from the config's sizes — pure arithmetic, tested equal to
`sum(p.numel())` of the model transformers builds from the same config. Any other model falls back to
`from_skeleton`: the model built on the meta device (`models.loading.model_skeleton`, no memory, no
weights), whose modules are read off the same way. Either gives an `Architecture`: the transformer
block's modules (written once, repeated `layers` times) and the modules outside the blocks
(embeddings, final norm, head), each with its full module name so a method's module options
(`lora.target_modules`, `freeze.modules`) can be matched against them as peft matches them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class Part:
    """One module that holds parameters: a linear layer, a norm, an embedding."""

    name: str  # inside a block: relative ("self_attn.q_proj"); outside: the full module name ("lm_head")
    kind: str  # "linear" | "norm" | "embedding" | "other"
    shapes: tuple[tuple[int, ...], ...]  # its parameters' shapes (weight first)
    in_features: int = 0  # linear layers (and an embedding's vocabulary)
    out_features: int = 0
    role: str = ""  # a linear's place in the block: q k v qkv o gate up gate_up down fc_in fc_out head

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def weight_params(self) -> int:
        return math.prod(self.shapes[0]) if self.shapes else 0

    @property
    def bias(self) -> bool:
        return len(self.shapes) > 1


def linear(name: str, n_in: int, n_out: int, *, bias: bool = False, role: str = "") -> Part:
    shapes = ((n_out, n_in), (n_out,)) if bias else ((n_out, n_in),)
    return Part(name, "linear", shapes, n_in, n_out, role)


def norm(name: str, size: int, *, bias: bool = False) -> Part:
    return Part(name, "norm", ((size,), (size,)) if bias else ((size,),))


@dataclass(frozen=True)
class Architecture:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    positions: int | None
    tied_embeddings: bool  # the head's weight is the token embedding's
    block: tuple[Part, ...]  # one transformer block's modules, names relative to the block
    top: tuple[Part, ...]  # modules outside the blocks, full names
    layer_prefix: str  # the blocks' ModuleList ("model.layers"): block i's modules are f"{prefix}.{i}.{name}"
    embed_name: str  # the token embedding's full name
    head_name: str | None  # the output head's full name (lm_head, score); None: the model has no head
    norm_kind: str = "rms"  # "rms" | "layer"
    mlp: str = "gated"  # "gated" (act(gate)·up → down) | "plain" (fc_in → act → fc_out)
    activation: str = "silu"
    parallel_residual: bool = False  # GPT-NeoX: attention and MLP both read the block's input
    rotary: bool = True
    rotary_fraction: float = 1.0  # share of each head's dimensions that are rotated (GPT-NeoX: 0.25)
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0  # residual / MLP / embedding dropout
    gqa_config: bool = False  # the config names num_key_value_heads (peft then sizes a prefix by the kv width)
    source: str = "config.json"  # or "meta-device skeleton"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        return sum(p.params for p in self.block)

    @property
    def block_linear_params(self) -> int:
        return sum(p.weight_params for p in self.block if p.kind == "linear")

    def part(self, name: str) -> Part | None:
        return next((p for p in self.top if p.name == name), None)

    @property
    def head(self) -> Part | None:
        return self.part(self.head_name) if self.head_name else None

    @property
    def embedding(self) -> Part:
        part = self.part(self.embed_name)
        assert part is not None
        return part

    @property
    def total_params(self) -> int:
        """Every distinct parameter: a tied head's weight is the embedding's and counts once."""
        top = sum(p.params for p in self.top)
        head = self.head
        if self.tied_embeddings and head is not None:
            top -= head.weight_params
        return self.layers * self.block_params + top

    @property
    def matmul_params(self) -> int:
        """Weights every token multiplies by: the blocks' linear layers and the head (tied or not);
        embeddings are lookups, not matmuls."""
        head = self.head
        return self.layers * self.block_linear_params + (head.weight_params if head is not None else 0)

    def module_names(self) -> list[tuple[str, int, Part]]:
        """(full module name, layer index or -1 outside the blocks, part) for every module."""
        out = [(f"{self.layer_prefix}.{i}.{p.name}", i, p) for i in range(self.layers) for p in self.block]
        return out + [(p.name, -1, p) for p in self.top]

    def summary(self) -> str:
        attn = f"{self.heads} heads" + (f" ({self.kv_heads} key/value)" if self.kv_heads != self.heads else "")
        tied = ", tied embeddings" if self.tied_embeddings else ""
        return (f"{self.model_type}: {self.layers} layers, hidden {self.hidden}, {attn} × {self.head_dim}, "
                f"MLP {self.intermediate} ({self.mlp}), vocabulary {self.vocab}{tied}")  # fmt: skip


# -- the families written out from config.json ------------------------------------------------------


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _heads(config: Any, hidden: int) -> tuple[int, int, int]:
    heads = int(_get(config, "num_attention_heads", "n_head"))
    kv = int(_get(config, "num_key_value_heads", default=heads))
    head_dim = int(_get(config, "head_dim", default=hidden // heads))
    return heads, kv, head_dim


def _llama_like(config: Any, model_type: str, *, qkv_bias: bool, o_bias: bool, mlp_bias: bool, qk_norm: bool = False,
                fused: bool = False) -> Architecture:  # fmt: skip
    h = int(config.hidden_size)
    heads, kv, d = _heads(config, h)
    i = int(config.intermediate_size)
    if fused:  # Phi-3: one qkv_proj and one gate_up_proj
        attn = (linear("self_attn.qkv_proj", h, (heads + 2 * kv) * d, bias=qkv_bias, role="qkv"),
                linear("self_attn.o_proj", heads * d, h, bias=o_bias, role="o"))  # fmt: skip
        mlp = (linear("mlp.gate_up_proj", h, 2 * i, bias=mlp_bias, role="gate_up"),
               linear("mlp.down_proj", i, h, bias=mlp_bias, role="down"))  # fmt: skip
    else:
        attn = (linear("self_attn.q_proj", h, heads * d, bias=qkv_bias, role="q"),
                linear("self_attn.k_proj", h, kv * d, bias=qkv_bias, role="k"),
                linear("self_attn.v_proj", h, kv * d, bias=qkv_bias, role="v"),
                linear("self_attn.o_proj", heads * d, h, bias=o_bias, role="o"))  # fmt: skip
        mlp = (linear("mlp.gate_proj", h, i, bias=mlp_bias, role="gate"),
               linear("mlp.up_proj", h, i, bias=mlp_bias, role="up"),
               linear("mlp.down_proj", i, h, bias=mlp_bias, role="down"))  # fmt: skip
    norms = (norm("input_layernorm", h), norm("post_attention_layernorm", h))
    if qk_norm:
        norms += (norm("self_attn.q_norm", d), norm("self_attn.k_norm", d))
    vocab = int(config.vocab_size)
    tied = bool(_get(config, "tie_word_embeddings", default=False))
    top = (Part("model.embed_tokens", "embedding", ((vocab, h),), vocab, h), norm("model.norm", h),
           linear("lm_head", h, vocab, role="head"))  # fmt: skip
    return Architecture(
        model_type=model_type, hidden=h, layers=int(config.num_hidden_layers), heads=heads, kv_heads=kv, head_dim=d,
        intermediate=i, vocab=vocab, positions=_get(config, "max_position_embeddings"), tied_embeddings=tied,
        block=attn + mlp + norms, top=top, layer_prefix="model.layers", embed_name="model.embed_tokens",
        head_name="lm_head", activation=str(_get(config, "hidden_act", "hidden_activation", default="silu")),
        attention_dropout=float(_get(config, "attention_dropout", default=0.0)),
        hidden_dropout=float(_get(config, "resid_pdrop", default=0.0)),
    )  # fmt: skip


def _gpt2(config: Any) -> Architecture:
    h = int(config.n_embd)
    heads = int(config.n_head)
    i = int(config.n_inner or 4 * h)
    vocab, positions = int(config.vocab_size), int(config.n_positions)
    block = (
        linear("attn.c_attn", h, 3 * h, bias=True, role="qkv"), linear("attn.c_proj", h, h, bias=True, role="o"),
        linear("mlp.c_fc", h, i, bias=True, role="fc_in"), linear("mlp.c_proj", i, h, bias=True, role="fc_out"),
        norm("ln_1", h, bias=True), norm("ln_2", h, bias=True),
    )  # fmt: skip
    top = (Part("transformer.wte", "embedding", ((vocab, h),), vocab, h),
           Part("transformer.wpe", "embedding", ((positions, h),), positions, h),
           norm("transformer.ln_f", h, bias=True), linear("lm_head", h, vocab, role="head"))  # fmt: skip
    return Architecture(
        model_type="gpt2", hidden=h, layers=int(config.n_layer), heads=heads, kv_heads=heads, head_dim=h // heads,
        intermediate=i, vocab=vocab, positions=positions, tied_embeddings=bool(_get(config, "tie_word_embeddings", default=True)),
        block=block, top=top, layer_prefix="transformer.h", embed_name="transformer.wte", head_name="lm_head",
        norm_kind="layer", mlp="plain", activation=str(config.activation_function), rotary=False,
        attention_dropout=float(config.attn_pdrop), hidden_dropout=float(config.resid_pdrop),
    )  # fmt: skip


def _gpt_neox(config: Any) -> Architecture:
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    i = int(config.intermediate_size)
    vocab = int(config.vocab_size)
    bias = bool(_get(config, "attention_bias", default=True))
    block = (
        linear("attention.query_key_value", h, 3 * h, bias=bias, role="qkv"),
        linear("attention.dense", h, h, bias=bias, role="o"),
        linear("mlp.dense_h_to_4h", h, i, bias=True, role="fc_in"), linear("mlp.dense_4h_to_h", i, h, bias=True, role="fc_out"),
        norm("input_layernorm", h, bias=True), norm("post_attention_layernorm", h, bias=True),
    )  # fmt: skip
    top = (Part("gpt_neox.embed_in", "embedding", ((vocab, h),), vocab, h), norm("gpt_neox.final_layer_norm", h, bias=True),
           linear("lm_head", h, vocab, role="head"))  # fmt: skip
    return Architecture(
        model_type="gpt_neox", hidden=h, layers=int(config.num_hidden_layers), heads=heads, kv_heads=heads,
        head_dim=h // heads, intermediate=i, vocab=vocab, positions=_get(config, "max_position_embeddings"),
        tied_embeddings=bool(_get(config, "tie_word_embeddings", default=False)), block=block, top=top,
        layer_prefix="gpt_neox.layers", embed_name="gpt_neox.embed_in", head_name="lm_head", norm_kind="layer",
        mlp="plain", activation=str(config.hidden_act), parallel_residual=bool(config.use_parallel_residual),
        attention_dropout=float(_get(config, "attention_dropout", default=0.0)),
        hidden_dropout=float(_get(config, "hidden_dropout", default=0.0)),
    )  # fmt: skip


def _family(model_type: str, config: Any) -> Architecture | None:
    bias = bool(_get(config, "attention_bias", default=False))
    mlp_bias = bool(_get(config, "mlp_bias", default=False))
    if model_type in ("llama", "mistral"):
        return _llama_like(config, model_type, qkv_bias=bias, o_bias=bias, mlp_bias=mlp_bias)
    if model_type == "qwen2":  # biases on q, k and v only
        return _llama_like(config, model_type, qkv_bias=True, o_bias=False, mlp_bias=False)
    if model_type == "qwen3":  # per-head RMSNorm on queries and keys
        return _llama_like(config, model_type, qkv_bias=bias, o_bias=bias, mlp_bias=False, qk_norm=True)
    if model_type == "gemma":
        return _llama_like(config, model_type, qkv_bias=bias, o_bias=bias, mlp_bias=False)
    if model_type == "phi3":
        return _llama_like(config, model_type, qkv_bias=False, o_bias=False, mlp_bias=False, fused=True)
    if model_type == "gpt2":
        return _gpt2(config)
    if model_type == "gpt_neox":
        return _gpt_neox(config)
    return None


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox")


def config_object(config: dict[str, Any]) -> Any | None:
    """transformers' config class for a config.json (its defaults filled in); None for a model type this
    transformers does not know (remote code)."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        return None
    try:
        return CONFIG_MAPPING[model_type].from_dict(dict(config))
    except Exception:  # noqa: BLE001 - a config its own class refuses: the skeleton path says why, or fails
        return None


def with_head(arch: Architecture, kind: str, num_labels: int | None) -> Architecture:
    """A classifier kind (`models.kinds`: seq_cls, reward) replaces the vocabulary head with a score head."""
    from tunelab.models.kinds import MODEL_KINDS

    if not MODEL_KINDS[kind].classifier:
        return arch
    labels = MODEL_KINDS[kind].num_labels or num_labels or 2
    top = tuple(p for p in arch.top if p.name != arch.head_name) + (linear("score", arch.hidden, labels, role="head"),)
    return replace(arch, top=top, head_name="score", tied_embeddings=False)


def from_config(config: dict[str, Any], kind: str = "causal_lm", *, num_labels: int | None = None) -> Architecture | None:
    """The architecture of a known family from config.json's content; None for any other model."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        return None
    cfg = config_object(config)
    if cfg is None:
        return None
    arch = _family(str(model_type), cfg)
    if arch is None:
        return None
    rope = getattr(cfg, "rope_parameters", None) or {}
    fraction = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) if arch.rotary else 1.0
    arch = replace(arch, gqa_config="num_key_value_heads" in cfg.to_dict(), rotary_fraction=float(fraction or 1.0))
    return with_head(arch, kind, num_labels)


# -- any other model: read off the meta-device skeleton ---------------------------------------------


_ROLES = (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("qkv", "qkv"), ("query_key_value", "qkv"),
          ("c_attn", "qkv"), ("o_proj", "o"), ("out_proj", "o"), ("attn.c_proj", "o"), ("attention.dense", "o"),
          ("gate_up", "gate_up"), ("gate", "gate"), ("up_proj", "up"), ("w1", "gate"), ("w3", "up"), ("down", "down"),
          ("w2", "down"), ("fc1", "fc_in"), ("c_fc", "fc_in"), ("h_to_4h", "fc_in"), ("fc2", "fc_out"),
          ("mlp.c_proj", "fc_out"), ("4h_to_h", "fc_out"))  # fmt: skip


def _role(name: str) -> str:
    return next((role for key, role in _ROLES if key in name), "other")


def _part_of(name: str, module: Any) -> Part | None:
    import torch
    from transformers.pytorch_utils import Conv1D

    shapes = tuple(tuple(p.shape) for p in module.parameters(recurse=False))
    if not shapes:
        return None
    if isinstance(module, torch.nn.Linear):
        return Part(name, "linear", shapes, module.in_features, module.out_features, _role(name))
    if isinstance(module, Conv1D):  # GPT-2's linear layers: weight (in, out)
        return Part(name, "linear", shapes, module.weight.shape[0], module.nf, _role(name))
    if isinstance(module, torch.nn.Embedding):
        return Part(name, "embedding", shapes, module.num_embeddings, module.embedding_dim)
    kind = "norm" if "norm" in type(module).__name__.lower() or "ln" in name.rsplit(".", 1)[-1] else "other"
    return Part(name, kind, shapes)


def from_skeleton(model: Any, config: dict[str, Any]) -> Architecture:
    """The architecture of a model built on the meta device: the longest ModuleList is the block stack
    (as `methods.freeze` finds it), its first block's modules stand for every block."""
    import torch

    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not stacks:
        raise TunelabError(f"cannot find the transformer blocks of {type(model).__name__}", field="model.name",
                           expected="a decoder whose blocks are a ModuleList (model.layers, transformer.h, …)")  # fmt: skip
    prefix, stack = max(stacks, key=lambda s: len(s[1]))
    blocks = list(stack)
    block = tuple(p for n, m in blocks[0].named_modules() if (p := _part_of(n, m)) is not None)
    differs = [i for i, b in enumerate(blocks) if sum(p.numel() for p in b.parameters()) != sum(x.params for x in block)]
    inside = {id(p) for b in blocks for p in b.parameters()}
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {id(m): n for n, m in model.named_modules()}
    head_name = names.get(id(head)) if head is not None else None
    if head_name is None:  # a classifier: its score head
        head_name = next((n for n in ("score", "classifier") if getattr(model, n, None) is not None), None)
        head = getattr(model, head_name) if head_name else None
    top = []
    for name, module in model.named_modules():
        if name == prefix or name.startswith(prefix + ".") or name == head_name:
            continue
        own = [p for p in module.parameters(recurse=False) if id(p) not in inside]
        if own and (part := _part_of(name, module)) is not None:
            top.append(part)
    tied = head is not None and embed is not None and getattr(head, "weight", None) is getattr(embed, "weight", 0)
    if head is not None and (part := _part_of(head_name, head)) is not None:
        top.append(Part(part.name, "linear", part.shapes, part.in_features, part.out_features, "head"))
    cfg = model.config
    hidden = int(_get(cfg, "hidden_size", "n_embd", "d_model"))
    heads, kv, head_dim = _heads(cfg, hidden)
    linears = [p for p in block if p.kind == "linear"]
    gated = any(p.role in ("gate", "gate_up") for p in linears)
    mlp_in = [p for p in linears if p.role in ("gate", "up", "fc_in")]
    inter = int(_get(cfg, "intermediate_size", "n_inner", "ffn_dim", default=mlp_in[0].out_features if mlp_in else 4 * hidden))
    notes = ()
    if differs:
        notes = (f"blocks {differs[:5]} differ in size from block 0; every block is counted as block 0",)
    return Architecture(
        model_type=str(config.get("model_type", type(model).__name__)), hidden=hidden, layers=len(blocks), heads=heads,
        kv_heads=kv, head_dim=head_dim, intermediate=inter, vocab=int(_get(cfg, "vocab_size", default=0)),
        positions=_get(cfg, "max_position_embeddings", "n_positions"), tied_embeddings=tied, block=block,
        top=tuple(top), layer_prefix=prefix, embed_name=names.get(id(embed), ""), head_name=head_name,
        norm_kind="layer" if any(len(p.shapes) == 2 for p in block if p.kind == "norm") else "rms",
        mlp="gated" if gated else "plain", activation=str(_get(cfg, "hidden_act", "activation_function", default="silu")),
        attention_dropout=float(_get(cfg, "attention_dropout", "attn_pdrop", default=0.0)),
        hidden_dropout=float(_get(cfg, "hidden_dropout", "resid_pdrop", default=0.0)),
        gqa_config="num_key_value_heads" in cfg.to_dict(), source="meta-device skeleton", notes=notes,
    )  # fmt: skip


def architecture(files: Any, kind: str = "causal_lm", *, trust_remote_code: bool = False,
                 num_labels: int | None = None) -> Architecture:  # fmt: skip
    """The architecture of a model from its `models.loading.ModelFiles`: a known family from config.json,
    else the meta-device skeleton; a TunelabError when transformers cannot build it either."""
    arch = from_config(files.config, kind, num_labels=num_labels)
    if arch is not None:
        return arch
    from tunelab.models.loading import model_skeleton

    model = model_skeleton(files, kind, trust_remote_code=trust_remote_code)
    if model is None:
        model_type = files.config.get("model_type")
        raise TunelabError(f"transformers cannot build model type {model_type!r} from {files.name}'s config.json",
                           field="model.name", expected=f"a decoder transformers knows ({', '.join(FAMILIES)}, …), "
                           "or model.trust_remote_code: true for a model that ships its own code")  # fmt: skip
    return from_skeleton(model, files.config)
