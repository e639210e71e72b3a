"""Matmul FLOPs of a training step, counted as torch.utils.flop_counter.FlopCounterMode counts them.

A matmul of (m × k) by (k × n) is 2·m·k·n FLOPs; elementwise work (norms, activations, softmax, the
optimizer's update) is not counted — it is a few percent of a decoder's work and it is memory-bound,
which is what the MFU figure absorbs. Per token of a row of `s` tokens, for a linear layer of
`in × out` weights:

- forward: 2·in·out;
- backward: 2·in·out for the gradient of its input (whenever something below it trains) plus 2·in·out
  for the gradient of its weight (only when the weight trains). Full fine-tuning is the textbook
  6·N per token; a frozen base (LoRA, QLoRA, IA3, prompt methods) costs 4·N — no weight-gradient
  matmuls — plus its adapters' own 6·r·(in + out) (less where no input gradient is needed);
- attention: forward 4·s·heads·head_dim per token and layer (QKᵀ and AV over the whole s × s square,
  as FlopCounterMode counts it — causal kernels skip about half of it), backward twice that
  (FlopCounterMode counts fused kernels' backward as 2.5× for the recomputed scores: not model FLOPs);
- the head: 2·hidden·vocab per position with a label (tunelab's loss builds no logits elsewhere);
- gradient checkpointing recomputes every block's forward in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.planning.architecture import Architecture
from tunelab.planning.trainable import LinearPlan, Trainables
from tunelab.planning.workload import Workload

# a linear layer's place in its block: a module reads what an earlier stage produced
_STAGE = {"q": 0, "k": 0, "v": 0, "qkv": 0, "o": 1, "gate": 2, "up": 2, "gate_up": 2, "fc_in": 2, "down": 3,
          "fc_out": 3}  # fmt: skip


@dataclass
class Flops:
    tokens_per_micro_batch: int  # every position computed (virtual tokens included)
    logit_positions: int  # positions whose vocabulary logits are built
    forward: float  # one micro-batch's forward
    backward: float
    recompute: float  # gradient checkpointing's second forward
    reference: float  # a frozen reference model's forward (DPO, KTO)
    attention: float  # the attention share of forward + backward
    adapters: float  # the adapters' share (LoRA, DoRA weight norms)
    dense_6n: float  # textbook 6·N·tokens for the same micro-batch (N: matmul weights)
    grad_accum: int
    world_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def per_micro_batch(self) -> float:
        return self.forward + self.backward + self.recompute + self.reference

    @property
    def per_step(self) -> float:
        """One optimizer step on one rank."""
        return self.per_micro_batch * self.grad_accum

    @property
    def per_step_all_ranks(self) -> float:
        return self.per_step * self.world_size

    @property
    def per_token(self) -> float:
        return self.per_micro_batch / max(1, self.tokens_per_micro_batch)


def stage(plan: LinearPlan, arch: Architecture) -> int:
    s = _STAGE.get(plan.part.role, 0)
    return 0 if arch.parallel_residual and s == 2 else s  # GPT-NeoX's MLP reads the block's input too


def input_grad(plans: list[LinearPlan], arch: Architecture, grad_in: bool, norms_train: bool,
               prefix: bool = False) -> dict[str, bool]:  # fmt: skip
    """Per linear of one block: does its input need a gradient (something it depends on trains)? A
    trained key/value prefix makes everything after the attention depend on it."""
    out = {}
    for plan in plans:
        s = stage(plan, arch)
        earlier = any(p.trains for p in plans if stage(p, arch) < s) or (prefix and s >= 1)
        # IA3 on a feed-forward input scales that input: the scaled input needs a gradient itself
        out[plan.name] = grad_in or norms_train or earlier or plan.ia3 == "in"
    return out


def attention_backward_share(plans: list[LinearPlan], grad_in: bool, prefix: bool) -> float:
    """Attention backward as a multiple of its forward: of its four matmuls (dV = Pᵀ·dO, dP = dO·Vᵀ,
    dQ = dS·K, dK = dSᵀ·Q, each half the forward's work) only those for inputs needing a gradient."""

    def rg(*roles: str) -> bool:
        return grad_in or any(p.trains for p in plans if p.part.role in roles)

    q, k, v = rg("q", "qkv"), rg("k", "qkv") or prefix, rg("v", "qkv") or prefix
    return 0.5 * (v + (q or k) + q + k)


def layer_flags(arch: Architecture, tr: Trainables) -> list[dict]:
    """Per block: whether a gradient enters it from below, and whether backward runs through it."""
    flags = []
    below = tr.grad_below_blocks
    for i in range(arch.layers):
        grad_in = below
        trains = tr.layer_trains[i] or tr.prefix_tokens > 0  # a prefix's keys and values sit in every layer
        flags.append({"grad_in": grad_in, "backward": grad_in or trains})
        below = below or trains
    return flags


def training_flops(arch: Architecture, tr: Trainables, w: Workload) -> Flops:
    seq = w.seq_len + tr.virtual_tokens
    tokens = w.rows * seq
    if w.sliced_logits and tr.virtual_tokens == 0:
        logits = round(w.rows * w.seq_len * w.trained_fraction)
    else:  # the model's own loss: logits at every position
        logits = tokens
    kv_len = seq + tr.prefix_tokens
    by_layer: dict[int, list[LinearPlan]] = {}
    for plan in tr.linears:
        by_layer.setdefault(plan.layer, []).append(plan)
    block_norm_trains = _block_norms_train(arch, tr)
    fwd = bwd = attn = adapters = recompute = 0.0
    anything_below_head = False
    flags = layer_flags(arch, tr)
    for i, f in enumerate(flags):
        plans = by_layer.get(i, [])
        needs = input_grad(plans, arch, f["grad_in"], block_norm_trains[i], tr.prefix_tokens > 0)
        layer_fwd = 0.0
        for plan in plans:
            n_in, n_out = plan.part.in_features, plan.part.out_features
            mm = 2.0 * n_in * n_out * tokens
            layer_fwd += mm
            if f["backward"]:
                bwd += mm * (needs[plan.name] + plan.weight_trainable)
            if plan.lora_rank:
                r = plan.lora_rank
                a_fwd = 2.0 * r * (n_in + n_out) * tokens
                layer_fwd += a_fwd
                a_bwd = 2.0 * r * tokens * (2 * n_out + n_in * (1 + needs[plan.name]))
                bwd += a_bwd
                adapters += a_fwd + a_bwd
                if plan.dora:  # the weight norm's B·A, once per forward (detached: no backward)
                    norm_flops = 2.0 * r * n_in * (n_in + n_out)
                    layer_fwd += norm_flops
                    adapters += norm_flops * (2 if w.gradient_checkpointing else 1)
        a = 4.0 * kv_len * arch.attn_dim * tokens  # per token: 4·s_k·heads·head_dim
        layer_fwd += a
        attn_bwd = attention_backward_share(plans, f["grad_in"] or block_norm_trains[i], tr.prefix_tokens > 0) * a
        attn_bwd = attn_bwd if f["backward"] else 0.0
        bwd += attn_bwd
        attn += a + attn_bwd
        fwd += layer_fwd
        if f["backward"] and w.gradient_checkpointing:
            recompute += layer_fwd
            attn += a
        anything_below_head = anything_below_head or f["backward"]
    head_plans = by_layer.get(-1, [])
    below = anything_below_head or tr.final_norm_trainable or tr.grad_below_blocks
    for plan in head_plans:
        n_in, n_out = plan.part.in_features, plan.part.out_features
        mm = 2.0 * n_in * n_out * logits
        fwd += mm
        bwd += mm * (below + plan.weight_trainable)
        if plan.lora_rank:
            r = plan.lora_rank
            a_fwd = 2.0 * r * (n_in + n_out) * logits
            a_bwd = 2.0 * r * logits * (2 * n_out + n_in * (1 + below))
            fwd += a_fwd
            bwd += a_bwd
            adapters += a_fwd + a_bwd
    reference = 0.0
    notes = []
    if w.reference_forward:
        reference = 2.0 * arch.layers * arch.block_linear_params * tokens + 4.0 * kv_len * arch.attn_dim * tokens * arch.layers
        reference += 2.0 * arch.hidden * arch.vocab * logits
        notes.append("a frozen reference model's forward per micro-batch (DPO/KTO)")
    dense = 6.0 * arch.matmul_params * tokens
    return Flops(tokens_per_micro_batch=tokens, logit_positions=logits, forward=fwd, backward=bwd, recompute=recompute,
                 reference=reference, attention=attn, adapters=adapters, dense_6n=dense, grad_accum=w.grad_accum,
                 world_size=w.world_size, notes=notes)  # fmt: skip


def _block_norms_train(arch: Architecture, tr: Trainables) -> list[bool]:
    """Per block: does one of its norms (or another non-linear module) train?"""
    trained = [False] * arch.layers
    for name, i, part in arch.module_names():
        if i >= 0 and part.kind != "linear" and name in tr.trained_modules:
            trained[i] = True
    return trained


def inference_flops_per_token(arch: Architecture, context: int) -> float:
    """One generated token's forward at a given context length (KV cache: attention reads `context` keys)."""
    return 2.0 * arch.matmul_params + 4.0 * context * arch.attn_dim * arch.layers
