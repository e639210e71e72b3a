"""The one table of model kinds: what a stage trains (a causal LM, a classifier, …) and everything that
follows from it — the transformers class, the head, how rows are batched, what peft calls the task.

A stage names its kind (`Stage.model_kind`); loading, collating, freezing the head and choosing
adapters read this table instead of branching on the name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def lm_collator(tokenizer: Any, padding_free: bool) -> Any:
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if padding_free:
        # rows are concatenated into one sequence with restarting position_ids: no FLOPs on padding,
        # and per-row attention keeps the rows apart (checked equal to separate rows)
        return DataCollatorWithFlattening(return_position_ids=True)
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, return_tensors="pt")


def padding_collator(tokenizer: Any, padding_free: bool) -> Any:
    """Classifier rows: padded (a head reads one position per row, so rows are never packed)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


def preference_collator(tokenizer: Any, padding_free: bool) -> Any:
    """Pairs {chosen_ids, rejected_ids}: TRL's collator puts every chosen sequence, then every rejected one,
    in one right-padded batch (what TRL's RewardTrainer scores)."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return DataCollatorForPreference(pad_token_id=pad)


def prompt_completion_pair_collator(tokenizer: Any, padding_free: bool) -> Any:
    """Pairs {prompt_ids, chosen_ids, rejected_ids}: TRL's DPO collator (prompt + chosen rows, then
    prompt + rejected rows, with the completion mask its losses read)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return DataCollatorForPreference(pad_token_id=pad)


@dataclass(frozen=True)
class ModelKind:
    name: str
    auto_class: str  # transformers Auto* class that loads it
    peft_task_type: str  # peft's TaskType name for adapters on this kind
    head_modules: tuple[str, ...]  # the task head (trained by `freeze`, kept by peft)
    make_collator: Callable[[Any, bool], Any]  # (tokenizer, padding_free) -> the Trainer's data collator
    classifier: bool = False  # a fresh classification head: needs labels; rows are padded, never packed
    num_labels: int | None = None  # fixed head size (a reward model's single score); None = len(labels)
    packs: bool = True  # rows may be packed padding-free (an LM's {input_ids, labels} rows)

    def load(self, path: str, **kwargs: Any) -> Any:
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(path, **kwargs)

    def head_kwargs(self, labels: list[str] | None, pad_token_id: int | None) -> dict[str, Any]:
        """from_pretrained kwargs that size and name a classification head (nothing for an LM)."""
        if not self.classifier:
            return {}
        if self.num_labels is None and not labels:
            raise ValueError("a classification model needs its labels")
        names = list(labels or [])
        kwargs: dict[str, Any] = {"num_labels": self.num_labels or len(names)}
        if names:
            kwargs.update(id2label=dict(enumerate(names)), label2id={label: i for i, label in enumerate(names)})
        if pad_token_id is not None:
            kwargs["pad_token_id"] = pad_token_id  # decoder classifiers pool the last non-pad token
        return kwargs

    def collator(self, tokenizer: Any, *, padding_free: bool) -> Any:
        return self.make_collator(tokenizer, padding_free)


MODEL_KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind("causal_lm", "AutoModelForCausalLM", "CAUSAL_LM", ("lm_head",), lm_collator),
        ModelKind("seq_cls", "AutoModelForSequenceClassification", "SEQ_CLS", ("score", "classifier", "pooler"),
                  padding_collator, classifier=True, packs=False),
        # a reward model: a one-score head read at the last token, trained on chosen/rejected pairs
        ModelKind("reward", "AutoModelForSequenceClassification", "SEQ_CLS", ("score", "classifier", "pooler"),
                  preference_collator, classifier=True, num_labels=1, packs=False),
        # a causal LM tuned on preferences (DPO family): batches of prompt + chosen, prompt + rejected
        ModelKind("policy_lm", "AutoModelForCausalLM", "CAUSAL_LM", ("lm_head",), prompt_completion_pair_collator,
                  packs=False),
    )
}  # fmt: skip


def is_decoder_classifier(model: Any) -> bool:
    """A classification head on a decoder LLM (pools the last token) rather than an encoder's [CLS]."""
    return hasattr(model, "score") and not hasattr(model, "classifier")
