"""The tensors a training forward keeps for backward, per token, op by op as tunelab's loop runs them.

Autograd keeps an op's inputs only when a gradient needs them (a frozen linear keeps its weight, not
its input); under mixed precision tunelab's weights stay fp32 and autocast casts each matmul's fp32
input to bf16/fp16 — a separate copy per matmul (the cast cache holds only weights that train), and
each frozen weight's low-precision copy is kept for the backward of its input. The residual stream,
norms and rotary embeddings stay fp32 (fp32 cos/sin promote the queries and keys back to fp32). This
module follows one block's forward, tensor by tensor, with those rules; `tests/planning` checks the
totals against the saved tensors autograd reports (`torch.autograd.graph.saved_tensors_hooks`) on tiny
models of each family.

What is followed: norms (RMSNorm: input, and the normalised input when its weight trains; LayerNorm:
input), linear layers and their LoRA/DoRA/IA3 adapters, rotary embeddings, fused attention (queries,
keys, values, output, log-sum-exp — never the s × s scores, except on a CPU with attention dropout,
where torch falls back to the math kernel; short packed rows in one padded batch: queries, keys,
values and one mask), activations (`gelu_new`, written in Python, keeps four
tensors), the gated product, dropout masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.planning.architecture import Architecture
from tunelab.planning.trainable import LinearPlan, Trainables
from tunelab.planning.workload import Workload
from tunelab.training.packed_attention import batched, kept_weights

FP32 = 4
# activations implemented as one torch op that keeps its input (or output); others keep more
_PYTHON_ACTIVATIONS = {"gelu_new": 4, "gelu_fast": 4, "quick_gelu": 2}


@dataclass
class _T:
    key: str  # storage identity: views share their base's key
    elems: float  # elements per token (or per row position)
    nbytes: int  # bytes per element
    rg: bool  # requires grad
    storage: float | None = None  # a view's whole storage (elements per token): what keeping it keeps alive


@dataclass
class _Trace:
    saved: dict[str, float] = field(default_factory=dict)  # storage key → bytes per token
    weight_copies: float = 0.0  # bytes per step: low-precision weight copies kept for backward
    per_row: float = 0.0  # bytes per row (s × s attention scores of the math kernel)
    mask_per_row: float = 0.0  # bytes per row, once per micro-batch: the batched packed attention's mask
    scores_per_row: float = 0.0  # bytes per row alive at once in the batched packed attention's backward
    kept_per_row: float = 0.0  # bytes per row: the batched packed attention's weights, kept for its backward
    counter: int = 0

    def new(self, elems: float, nbytes: int, rg: bool, name: str = "t") -> _T:
        self.counter += 1
        return _T(f"{name}#{self.counter}", elems, nbytes, rg)

    def keep(self, t: _T) -> None:
        self.saved[t.key] = max(self.saved.get(t.key, 0.0), (t.storage or t.elems) * t.nbytes)

    def keep_bytes(self, name: str, nbytes: float) -> None:
        self.counter += 1
        self.saved[f"{name}#{self.counter}"] = nbytes

    @property
    def per_token(self) -> float:
        return sum(self.saved.values())


@dataclass
class Activations:
    per_token_by_layer: list[float]  # bytes kept per token by each block
    per_token_top: float  # embedding, final norm (per token of the sequence)
    per_logit_position: float  # the head's kept input (per position with logits)
    weight_copies: float  # bytes: autocast's low-precision weight copies kept for backward
    tokens: int  # positions per micro-batch
    logit_positions: int
    checkpointed: bool
    recompute_block: float  # bytes per token of the block recomputed in backward (checkpointing)
    recompute_weight_copies: float
    math_attention: float = 0.0  # bytes per micro-batch, not per token: s × s scores, weights, masks, an encoder
    attention_backward: float = 0.0  # bytes per micro-batch: the batched packed attention's backward scores
    notes: list[str] = field(default_factory=list)

    @property
    def saved_bytes(self) -> float:
        """What the forward leaves for backward (the weight copies included)."""
        if self.checkpointed:
            blocks = sum(self.per_token_by_layer) + self.recompute_block
            copies = self.recompute_weight_copies
        else:
            blocks, copies = sum(self.per_token_by_layer), self.weight_copies
        per_token = (blocks + self.per_token_top) * self.tokens
        return per_token + self.per_logit_position * self.logit_positions + copies + self.math_attention

    @property
    def activation_bytes(self) -> float:
        return self.saved_bytes - (self.recompute_weight_copies if self.checkpointed else self.weight_copies)

    @property
    def copies_bytes(self) -> float:
        return self.recompute_weight_copies if self.checkpointed else self.weight_copies


class _Block:
    """One block's forward, followed symbolically (per token)."""

    def __init__(self, arch: Architecture, w: Workload, plans: dict[str, LinearPlan], trace: _Trace, *,
                 norms_train: set[str], prefix: bool, lora_dropout: float, seq: int = 0,
                 prefix_len: int = 0) -> None:  # fmt: skip
        self.arch, self.w, self.plans, self.t = arch, w, plans, trace
        self.seq, self.prefix_len = seq, prefix_len
        self.norms_train = norms_train
        self.prefix = prefix
        self.lora_dropout = lora_dropout
        self.cb = w.compute_bytes

    # -- ops ----------------------------------------------------------------------------------
    def norm(self, x: _T, name: str, size: float | None = None) -> _T:
        trains = name in self.norms_train
        size = size or x.elems
        if not (x.rg or trains):
            return self.t.new(size, FP32, False, name)
        if self.arch.norm_kind == "layer":
            if x.rg or trains:
                self.t.keep(x)
                self.t.keep_bytes(name + ".stats", 2 * FP32 * (size / self.arch.hidden))
        else:
            if x.nbytes != FP32:  # RMSNorm upcasts its input: the fp32 copy is what is kept
                x = self.t.new(x.elems, FP32, x.rg, name + ".fp32")
            if x.rg:
                self.t.keep(x)
                self.t.keep_bytes(name + ".rsqrt", FP32 * (size / self.arch.hidden))
            if trains:
                self.t.keep(self.t.new(size, FP32, True, name + ".normed"))
        return self.t.new(size, FP32, True, name)

    def _cast(self, x: _T, name: str) -> _T:
        """Autocast's copy of an fp32 matmul input (one per call); the tensor itself otherwise."""
        if self.w.autocast and x.nbytes == FP32:
            return self.t.new(x.elems, self.cb, x.rg, name + ".cast")
        return x

    def linear(self, x: _T, name: str) -> _T:
        plan = self.plans[name]
        out_elems = n_out = plan.part.out_features
        rg = x.rg or plan.trains
        if not rg:
            return self.t.new(out_elems, self.cb, False, name)
        if plan.ia3 == "in":  # peft: (x.to(fp32) * l).to(x's dtype): keeps the fp32 copy of x for l's gradient
            self.t.keep(self.t.new(x.elems, FP32, True, name + ".ia3in.fp32") if x.nbytes != FP32 else x)
            x = self.t.new(x.elems, x.nbytes, True, name + ".ia3in")
        base_in = self._cast(x, name)
        if plan.weight_trainable:
            self.t.keep(base_in)
        if x.rg and not plan.quantized and self.w.autocast:
            self.t.weight_copies += self.cb * plan.part.weight_params  # the low-precision weight, for x's gradient
        # bitsandbytes computes a 4-bit layer in its compute dtype and casts the result back to its input's
        out = self.t.new(out_elems, max(self.cb, x.nbytes) if plan.quantized else self.cb, True, name)
        if plan.lora_rank:
            # peft casts the adapter's input to the adapter's dtype (fp32) first: a copy of a bf16 input
            lora_in = x if x.nbytes == FP32 else self.t.new(x.elems, FP32, x.rg, name + ".lora_in")
            if self.lora_dropout > 0:  # each adapter drops its own copy of the input
                if lora_in.rg:
                    self.t.keep_bytes(name + ".dropout_mask", self.mask_bytes(lora_in) * x.elems)
                lora_in = self.t.new(x.elems, FP32, True, name + ".dropped")
            self.t.keep(self._cast(lora_in, name + ".lora_A"))
            self.t.keep(self.t.new(plan.lora_rank, self.cb, True, name + ".lora_A.out"))
            if self.w.autocast:  # autocast's cached copies of the adapter's weights, kept for its backward
                self.t.weight_copies += self.cb * plan.lora_rank * (n_out + (plan.part.in_features if x.rg else 0))
            if plan.dora:  # DoRA rescales base(x) and the adapter's output: both kept for the magnitude's gradient
                self.t.keep(out)
                self.t.keep(self.t.new(out_elems, self.cb, True, name + ".dora.lora_out"))
                out = self.t.new(out_elems, FP32 if self.w.autocast else self.cb, True, name + ".dora")
        if plan.ia3 == "out":  # base(x) * l, cast back to base(x)'s dtype: keeps base(x) for l's gradient
            self.t.keep(out)
            out = self.t.new(out_elems, self.cb, True, name + ".ia3out")
        return out

    def rope(self, x: _T, name: str) -> _T:
        # q·cos + rotate(q)·sin with fp32 cos/sin: a new tensor, promoted to fp32; keeps only cos/sin
        return self.t.new(x.elems, FP32, x.rg, name + ".rope")

    def mask_bytes(self, x: _T) -> int:
        """A dropout mask: bool on CUDA (native_dropout); on CPU torch multiplies by a mask of the input's dtype."""
        return 1 if self.w.device == "cuda" else x.nbytes

    def dropout(self, x: _T, p: float, name: str) -> _T:
        if p <= 0 or not x.rg:
            return x
        self.t.keep_bytes(name + ".mask", self.mask_bytes(x) * x.elems)
        return self.t.new(x.elems, x.nbytes, True, name + ".dropout")

    def attention(self, q: _T, k: _T, v: _T, name: str) -> _T:
        arch, w = self.arch, self.w
        rg = q.rg or k.rg or v.rg or self.prefix
        if not rg:
            return self.t.new(arch.attn_dim, self.cb, False, name)
        kv_len = self.seq + self.prefix_len
        if self.prefix_len:  # the prefix's keys and values are concatenated in front: new, longer tensors
            grow = kv_len / self.seq
            k = self.t.new(k.elems * grow, k.nbytes, True, name + ".k_prefixed")
            v = self.t.new(v.elems * grow, v.nbytes, True, name + ".v_prefixed")
        if not w.packed:  # padded rows: a mask, which torch's kernel turns into the query's dtype, per call
            self.t.per_row += self.cb * self.seq * kv_len
        repeat = arch.kv_heads != arch.heads and not w.packed  # with a mask transformers repeats k/v per head
        if repeat:
            k = self.t.new(k.elems * arch.heads / arch.kv_heads, k.nbytes, k.rg, name + ".k_rep")
            v = self.t.new(v.elems * arch.heads / arch.kv_heads, v.nbytes, v.rg, name + ".v_rep")
        if arch.attention_dropout > 0 and w.device == "cpu":
            # torch's CPU flash kernel takes no dropout: the math kernel (in fp32 on CPU, whatever the
            # inputs) keeps scaled copies of q and k, v, and per head the s × s probabilities, the dropout
            # mask (fp32 on CPU) and the dropped probabilities — per row, not per token
            self.t.keep(self.t.new(q.elems, FP32, True, name + ".q_scaled"))
            self.t.keep(self.t.new(k.elems, FP32, True, name + ".k_scaled"))
            self.t.keep(v if v.nbytes == FP32 else self.t.new(v.elems, FP32, True, name + ".v_fp32"))
            self.t.per_row += 3 * FP32 * arch.heads * self.seq * kv_len
            return self.t.new(arch.attn_dim, self.cb, True, name + ".merged")
        rows_batched = w.packed and batched(w.rows, kv_len, arch.heads)
        for x in (q, k, v):
            if rows_batched:  # padded copies (the worst case has no padding): what they were cut from is freed
                self.t.keep(self.t.new(x.elems, self.cb if self._cast(x, name) is not x else x.nbytes, True,
                                       name + ".padded"))  # fmt: skip
            else:
                self.t.keep(self._cast(x, name + ".in"))
        if rows_batched:
            # short packed rows attend as one padded batch (`training.packed_attention`): q, k and v padded,
            # and the fp32 weights of a small group; one mask per micro-batch
            self.t.mask_per_row = FP32 * self.seq * kv_len
            scores = FP32 * arch.heads * self.seq * kv_len
            if kept_weights(w.rows, kv_len, arch.heads):
                # small groups keep the fp32 weights for the backward, which then holds their gradient and
                # the softmax backward's product beside them: two more score tensors (freed after the layer)
                self.t.kept_per_row += scores
                self.t.scores_per_row = 2 * scores
            else:
                # the backward rebuilds the fp32 weights and holds them, their gradient and the softmax
                # backward's product at once: three rows × heads × s × s tensors (freed after the layer)
                self.t.scores_per_row = 3 * scores
        else:
            self.t.keep(self.t.new(arch.attn_dim, self.cb, True, name + ".out"))
            self.t.keep_bytes(name + ".lse", FP32 * arch.heads)
        # sdpa's output, made contiguous as (tokens, heads·head_dim) for the output projection
        return self.t.new(arch.attn_dim, self.cb, True, name + ".merged")

    def act(self, x: _T, name: str) -> _T:
        if not x.rg:
            return self.t.new(x.elems, x.nbytes, False, name)
        kept = _PYTHON_ACTIVATIONS.get(self.arch.activation, 1)
        self.t.keep(x)
        if kept > 1:
            self.t.keep_bytes(name + ".intermediates", (kept - 1) * x.elems * x.nbytes)
        return self.t.new(x.elems, x.nbytes, True, name)

    def mul(self, a: _T, b: _T, name: str) -> _T:
        if b.rg:
            self.t.keep(a)
        if a.rg:
            self.t.keep(b)
        return self.t.new(a.elems, max(a.nbytes, b.nbytes), a.rg or b.rg, name)

    @staticmethod
    def add(a: _T, b: _T, t: _Trace) -> _T:
        return t.new(max(a.elems, b.elems), max(a.nbytes, b.nbytes), a.rg or b.rg, "add")

    # -- the block ----------------------------------------------------------------------------
    def forward(self, x: _T, prefix_name: str) -> _T:
        arch = self.arch
        roles = {p.part.role: p.name for p in self.plans.values()}
        norms = [p.name for p in arch.block if p.kind == "norm"]
        n1 = f"{prefix_name}.{norms[0]}" if norms else ""
        n2 = f"{prefix_name}.{norms[1]}" if len(norms) > 1 else n1
        y = self.norm(x, n1)
        if "qkv" in roles:
            qkv = self.linear(y, roles["qkv"])
            q = _T(qkv.key, arch.attn_dim, qkv.nbytes, qkv.rg, qkv.elems)  # views of the fused output
            k = _T(qkv.key, arch.kv_dim, qkv.nbytes, qkv.rg, qkv.elems)
            v = _T(qkv.key, arch.kv_dim, qkv.nbytes, qkv.rg, qkv.elems)
        else:
            q, k, v = self.linear(y, roles["q"]), self.linear(y, roles["k"]), self.linear(y, roles["v"])
        qk_norms = [p.name for p in arch.block if p.kind == "norm" and ("q_norm" in p.name or "k_norm" in p.name)]
        if qk_norms:
            q = self.norm(q, f"{prefix_name}.{qk_norms[0]}", size=q.elems)
            k = self.norm(k, f"{prefix_name}.{qk_norms[-1]}", size=k.elems)
        if arch.rotary:
            q, k = self.rope(q, "q"), self.rope(k, "k")
        a = self.attention(q, k, v, "attn")
        o = self.dropout(self.linear(a, roles["o"]), arch.hidden_dropout, "attn.resid")
        if arch.parallel_residual:
            y2 = self.norm(x, n2)
            h = x
        else:
            h = self.add(x, o, self.t)
            y2 = self.norm(h, n2)
        if "gate_up" in roles:
            gu = self.linear(y2, roles["gate_up"])
            g = _T(gu.key, arch.intermediate, gu.nbytes, gu.rg, gu.elems)
            u = _T(gu.key, arch.intermediate, gu.nbytes, gu.rg, gu.elems)
            m = self.mul(self.act(g, "act"), u, "gated")
            d = self.linear(m, roles["down"])
        elif "gate" in roles:
            g, u = self.linear(y2, roles["gate"]), self.linear(y2, roles["up"])
            m = self.mul(self.act(g, "act"), u, "gated")
            d = self.linear(m, roles["down"])
        else:
            f = self.linear(y2, roles["fc_in"])
            d = self.linear(self.act(f, "act"), roles["fc_out"])
        d = self.dropout(d, arch.hidden_dropout, "mlp")
        out = self.add(h, d, self.t)
        if arch.parallel_residual:
            out = self.add(out, o, self.t)
        return out


def activations(arch: Architecture, tr: Trainables, w: Workload, *, lora_dropout: float = 0.0,
                encoder_hidden: int | None = None) -> Activations:  # fmt: skip
    """What one micro-batch's forward keeps for backward."""
    seq = w.seq_len + tr.virtual_tokens
    tokens = w.rows * seq
    if w.sliced_logits and tr.virtual_tokens == 0:
        logit_positions = round(w.rows * w.seq_len * w.trained_fraction)
    else:
        logit_positions = tokens
    by_layer: dict[int, dict[str, LinearPlan]] = {}
    for plan in tr.linears:
        by_layer.setdefault(plan.layer, {})[plan.name] = plan
    notes: list[str] = []
    top = _Trace()
    embed_trains = tr.embedding_trainable
    if embed_trains:
        top.keep_bytes("embedding.indices", 8)  # int64 ids, for the embedding's gradient
    if arch.rotary:  # cos and sin, computed once and shared by every block
        top.keep_bytes("rotary.cos_sin", 2 * FP32 * round(arch.head_dim * arch.rotary_fraction))
    x = _T("embeddings", arch.hidden, FP32, embed_trains or tr.virtual_tokens > 0)
    if w.gradient_checkpointing:
        x = _T(x.key, x.elems, x.nbytes, True)  # transformers makes the input require grad for checkpointing
    x = _Block(arch, w, {}, top, norms_train=set(), prefix=False, lora_dropout=0).dropout(x, arch.hidden_dropout, "embd")
    per_layer: list[float] = []
    per_row = kept_per_row = 0.0
    mask_per_row = scores_per_row = 0.0
    copies = 0.0
    recompute_block = recompute_copies = 0.0
    norms_by_layer = _trained_block_modules(arch, tr)
    memo: dict[tuple, tuple[_Trace, bool]] = {}
    for i in range(arch.layers):
        plans = by_layer.get(i, {})
        # blocks alike (the same training of the same modules, the same gradient coming in) keep alike
        signature = (x.rg, norms_by_layer[i], tuple((_relative(p.name, arch), p.weight_trainable, p.bias_trainable,
                                                     p.lora_rank, p.dora, p.ia3, p.quantized) for p in plans.values()))
        if signature not in memo:
            trace = _Trace()
            block = _Block(arch, w, plans, trace, norms_train=tr.trained_modules, prefix=tr.prefix_tokens > 0,
                           lora_dropout=lora_dropout, seq=seq, prefix_len=tr.prefix_tokens)  # fmt: skip
            out = block.forward(x, f"{arch.layer_prefix}.{i}")
            memo[signature] = (trace, out.rg)
        trace, out_rg = memo[signature]
        x_in = x
        x = _T(f"block{i}.out", arch.hidden, FP32, out_rg)
        if w.gradient_checkpointing:
            # only the block's input is kept (fp32 hidden states); its tensors are rebuilt, one block at a time
            per_layer.append(FP32 * arch.hidden if x_in.rg or tr.layer_trains[i] else 0.0)
            recompute_block = max(recompute_block, trace.per_token + (trace.per_row + trace.kept_per_row) / seq)
            recompute_copies = max(recompute_copies, trace.weight_copies)
        else:
            per_layer.append(trace.per_token)
            per_row += trace.per_row
            kept_per_row += trace.kept_per_row
        copies += trace.weight_copies
        mask_per_row = max(mask_per_row, trace.mask_per_row)
        scores_per_row = max(scores_per_row, trace.scores_per_row)
    final = next((p for p in arch.top if p.kind == "norm"), None)
    head_trace = _Trace()
    if final is not None:
        x = _Block(arch, w, {}, top, norms_train=tr.trained_modules, prefix=False, lora_dropout=0).norm(x, final.name)
    per_logit = 0.0
    head = by_layer.get(-1, {})
    if arch.head_name in head:
        selected = _T("head.in", arch.hidden, x.nbytes, x.rg)  # the positions with a label, gathered (a copy)
        block = _Block(arch, w, head, head_trace, norms_train=set(), prefix=False, lora_dropout=lora_dropout)
        block.linear(selected, arch.head_name)
        per_logit = head_trace.per_token
        copies += head_trace.weight_copies
        recompute_copies += head_trace.weight_copies
    encoder = 0.0
    if tr.method == "ptuning" and tr.virtual_tokens:
        # the prompt encoder's MLP on the virtual tokens, once per batch: its input and two hidden
        # activations (approximate: P-tuning's LSTM keeps more)
        e = encoder_hidden or arch.hidden
        encoder = tr.virtual_tokens * (arch.hidden + 2 * e) * FP32
    if per_row or (w.gradient_checkpointing and arch.attention_dropout > 0 and w.device == "cpu"):
        notes.append(f"attention dropout {arch.attention_dropout:g} on CPU: torch's math attention keeps s × s scores")
    return Activations(
        per_token_by_layer=per_layer, per_token_top=top.per_token, per_logit_position=per_logit, weight_copies=copies,
        tokens=tokens, logit_positions=logit_positions, checkpointed=w.gradient_checkpointing,
        recompute_block=recompute_block, recompute_weight_copies=recompute_copies,
        math_attention=(per_row + kept_per_row + mask_per_row) * w.rows + encoder,
        attention_backward=scores_per_row * w.rows,
        notes=notes,
    )  # fmt: skip


def _relative(name: str, arch: Architecture) -> str:
    """A block module's name inside its block ("self_attn.q_proj")."""
    return name.split(".", arch.layer_prefix.count(".") + 2)[-1]


def _trained_block_modules(arch: Architecture, tr: Trainables) -> list[tuple[str, ...]]:
    """Per block: the names (inside the block) of its non-linear modules that train."""
    out: list[list[str]] = [[] for _ in range(arch.layers)]
    for name, i, part in arch.module_names():
        if i >= 0 and part.kind != "linear" and name in tr.trained_modules:
            out[i].append(part.name)
    return [tuple(sorted(x)) for x in out]


def logits_bytes(positions: int, width: int) -> float:
    """The loss's peak over the (positions × vocabulary) logits, fp32 whatever the precision: the
    log-probabilities kept by log_softmax, then in backward the loss's gradient of them and the
    gradient of the logits, all three alive at once (12 bytes per logit). The low-precision logits and
    their fp32 copy (6) are gone by then — the forward's own peak, 10 bytes, is lower."""
    return 12.0 * positions * width


def kv_cache_bytes(arch: Architecture, tokens: int, nbytes: int = 2) -> float:
    return 2.0 * arch.layers * arch.kv_dim * tokens * nbytes
