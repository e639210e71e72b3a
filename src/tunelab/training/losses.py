"""The one table of training losses a stage can name (`Stage.loss`), and the Trainer that computes it.

A loss is a function `(model, inputs, num_items_in_batch, **options) -> (loss, outputs)`; the table
says whether it is already a per-batch mean (classifier losses: Trainer then divides it across
gradient-accumulation steps itself) or a sum over `num_items_in_batch` tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def response_only_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None, *, return_outputs: bool = False
) -> Any:
    """Causal-LM loss that builds vocabulary logits only where a label exists.

    The LM head (576 × 49,152 for SmolLM2) is a fifth of the model's FLOPs; with the loss on the
    response only, most positions need no logits at all. Equal to the usual shifted cross-entropy.
    """
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    shift = labels[:, 1:]
    keep = (shift != -100).any(dim=0).nonzero().squeeze(-1)  # positions whose next token is trained
    outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
    logits = outputs.logits
    targets = shift[:, keep]
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum().clamp(min=1)
    loss = loss / count
    return (loss, outputs) if return_outputs else loss


def classification_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None, *,
                        class_weights: list[float] | None = None, return_outputs: bool = False) -> Any:  # fmt: skip
    """Cross-entropy over the head's logits, optionally class-weighted ('balanced' in the config)."""
    import torch
    import torch.nn.functional as F

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    outputs = model(**inputs)
    weight = None
    if class_weights is not None:
        weight = torch.tensor(class_weights, dtype=torch.float32, device=outputs.logits.device)
    loss = F.cross_entropy(outputs.logits.float(), labels, weight=weight)
    return (loss, outputs) if return_outputs else loss


@dataclass(frozen=True)
class Loss:
    name: str
    compute: Callable[..., Any] | None  # None: the stage's own trainer computes it (TRL), see `trainer` below
    per_batch_mean: bool  # True: Trainer divides across accumulation steps (not by num_items_in_batch)
    needs_positions: bool = False  # computes logits only at trained positions (methods must keep positions)
    model_loss_without_options: bool = False  # with no options it equals the model's own loss: use that
    trainer: str | None = None  # the library trainer that computes a loss tunelab does not (for people reading)
    shows_learning: bool = True  # a falling loss means learning (not GRPO's, which sits near zero by design)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("causal_lm", response_only_loss, per_batch_mean=False, needs_positions=True),
        Loss("classification", classification_loss, per_batch_mean=True, model_loss_without_options=True),
        # −log σ(r_chosen − r_rejected) over pairs, computed by TRL's RewardTrainer
        Loss("bradley_terry", None, per_batch_mean=True, trainer="trl.RewardTrainer"),
        # preference losses on the policy itself, with the base as the reference
        Loss("dpo", None, per_batch_mean=True, trainer="trl.DPOTrainer"),
        Loss("kto", None, per_batch_mean=True, trainer="trl.KTOTrainer"),
        # reference-free: an SFT loss on chosen plus an odds-ratio term (ORPO); a length-normalised margin (SimPO)
        Loss("orpo", None, per_batch_mean=True, trainer="trl.experimental.orpo.ORPOTrainer"),
        Loss("simpo", None, per_batch_mean=True, trainer="trl.experimental.cpo.CPOTrainer"),
        # policy gradient on sampled answers, advantages relative to their group
        Loss("grpo", None, per_batch_mean=True, trainer="trl.GRPOTrainer", shows_learning=False),
        # the same, advantages relative to the mean of the other answers of the group (leave-one-out)
        Loss("rloo", None, per_batch_mean=True, trainer="trl.RLOOTrainer", shows_learning=False),
    )
}


def loss_trainer(loss_name: str, *, sliced_logits: bool, options: dict[str, Any] | None = None) -> type:
    """A transformers Trainer computing the named loss. A method that cannot slice logits (virtual
    tokens shift positions) gets the model's own loss for losses that need positions."""
    from transformers import Trainer

    loss = LOSSES[loss_name]
    if loss.compute is None:
        raise ValueError(f"loss {loss_name!r} is computed by {loss.trainer}: the stage passes fit(build_trainer=...)")
    extra = {k: v for k, v in (options or {}).items() if v is not None}
    if (loss.needs_positions and not sliced_logits) or (loss.model_loss_without_options and not extra):
        return Trainer

    class LossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            # evaluation asks for outputs too; with prediction_loss_only the sliced logits are never read
            out = loss.compute(model, inputs, num_items_in_batch, return_outputs=True, **extra)
            value = out[0]
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                # the count is every process's tokens and DDP averages the gradients: scale back up, as
                # Trainer.compute_loss does for the losses it computes itself
                value = value * (self.accelerator.num_processes // self.get_tp_size())
            return (value, out[1]) if return_outputs else value

    LossTrainer.__name__ = f"{loss_name.title().replace('_', '')}Trainer"
    return LossTrainer
