"""Reinforcement learning against a reward, two ways on the same recipe: GRPO (TRL's GRPOTrainer) and
RLOO (TRL's RLOOTrainer, REINFORCE leave-one-out). For each prompt the model samples a group of
answers, a reward scores them, and the model is pushed towards the answers that beat the group: GRPO
compares each answer with its group's mean (divided by the group's spread) and adds a KL penalty
(`beta`) towards the base to its loss; RLOO compares each answer with the mean of the *other* answers
of its group and takes the KL (`beta`) off the reward before it does.

The reward is one of: a built-in programmatic reward (`tunelab.rewards`, e.g. `arithmetic`), a finished
`reward` run's folder (its reward model scores prompt + answer, formatted as it was trained: the
InstructGPT chain), or your own `module:function` with TRL's signature
`fn(prompts, completions, **fields) -> list[float]` (the rows' other fields, e.g. `answer`, come as
lists). Both stages take the same options, each in the section named after it (`grpo:`, `rloo:`).

Judged on held-out prompts, base vs tuned, by greedy answers: `mean_reward` (the training reward),
`gold_score` (the `gold` rule, which training never sees), `kl_to_base` (mean log π − log π_base per
token of the tuned answers) and `mean_output_tokens`. When the reward rises while the gold rule does
not, or the KL or the answers' length run away, the run says **reward hacking suspected**.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.data.shapes import Example
from tunelab.data.templates import PromptFormat
from tunelab.errors import TunelabError
from tunelab.evaluation.bootstrap import mean_metric
from tunelab.inference.prompts import display_input
from tunelab.progress import info
from tunelab.rewards import REWARDS
from tunelab.runs.artifacts import BASE, TUNED, Prediction, write_predictions
from tunelab.runs.layout import write_json_atomic
from tunelab.stages import common
from tunelab.stages.base import Context, Stage
from tunelab.stages.policy_judging import answers, kl_to_base, win_rate

HEADLINE = ("gold_score", "mean_reward", "win_rate_vs_base", "kl_to_base", "mean_output_tokens")
KL_RUNAWAY = 1.0  # nats per token: far beyond what a well-regularised run drifts
LENGTH_RUNAWAY = 2.0  # answers this many times longer than the base's


class GRPOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reward: str | None = Field(None, description="built-in reward (tunelab.rewards), a reward run's folder, or "
                               "module:function (required)")
    gold: str | None = Field(None, description="rule that judges answers but is never trained on")
    num_generations: int = Field(4, ge=2, description="answers sampled per prompt (the group)")
    max_completion_length: int = Field(32, ge=1, description="most tokens per sampled answer")
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False, description="sampling temperature of the group")
    beta: float = Field(0.04, ge=0, allow_inf_nan=False, description="KL coefficient (pull towards the base)")


# -- rewards -------------------------------------------------------------------------------------


class RewardRunScorer:
    """A finished `reward` run as a reward function: its model scores the prompt + answer, formatted
    with the reward run's own template."""

    def __init__(self, run_dir: Path, open_run: Any, field: str = "grpo.reward") -> None:
        self.loaded = open_run(run_dir)
        if self.loaded.cfg.task != "reward":
            raise TunelabError(f"is a {self.loaded.cfg.task} run, not a reward run", file=str(run_dir),
                               field=field, expected="the folder of a finished `task: reward` run")  # fmt: skip
        self.__name__ = f"reward-run:{Path(run_dir).name}"

    def __call__(self, prompts: list[str], completions: list[Any], raw_prompt: list[str], **_: Any) -> list[float]:
        from tunelab.inference.scoring import sequence_scores
        from tunelab.rewards import completion_text

        fmt, tok = self.loaded.fmt, self.loaded.tokenizer
        ids = []
        for prompt, completion in zip(raw_prompt, completions, strict=True):
            answer = completion_text(completion)
            ex = Example("preference", {"prompt": prompt, "chosen": answer, "rejected": ""},
                         [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], None, "", {})  # fmt: skip
            ids.append(fmt.encode(ex, tok, self.loaded.cfg.data.max_length)["input_ids"])
        return sequence_scores(self.loaded.model, tok, ids, batch_size=16)


def reward_function(
    spec: str, base_dir: Path | None, open_run: Any = None, field: str = "grpo.reward"
) -> Any:
    """The configured reward: a reward run's folder (relative to the config; opened with `open_run`),
    else a named function. `field` names the config key in messages (`rloo.reward` for an RLOO run)."""
    from tunelab.rewards import resolve_reward

    folder = Path(spec).expanduser()
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    if folder.is_dir():
        if open_run is None:
            raise TunelabError(
                "a reward run needs the API to open it", field=field, expected="tunelab.train(...)"
            )
        return RewardRunScorer(folder, open_run, field)
    return resolve_reward(spec, field=field, folder=base_dir)


def score(fn: Any, examples: list, texts: list[str]) -> list[float]:
    """A reward function (or gold rule) on answers to `examples`, called as TRL calls it."""
    fields = {k: [ex.meta.get(k) for ex in examples] for k in (examples[0].meta if examples else {})}
    raw = [display_input(ex) for ex in examples]
    return [float(v) for v in fn(prompts=raw, completions=texts, raw_prompt=raw, **fields)]


# -- training ------------------------------------------------------------------------------------


def rl_trainer(library: type, reward: Any) -> Any:
    """A build_trainer for `fit`: TRL's `library` trainer (GRPOTrainer, RLOOTrainer) with the reward, on
    prompt rows."""

    def build(**kwargs: Any) -> Any:
        from datasets import Dataset

        kwargs.pop("data_collator")  # the trainer batches its own prompts and sampled answers
        kwargs["train_dataset"] = Dataset.from_list(kwargs["train_dataset"])
        kwargs.pop("eval_dataset", None)
        return resumable(library)(reward_funcs=[reward], **kwargs)

    return build


def resumable(library: type) -> type:
    """`library` (a TRL RL trainer) whose prompt order depends on the epoch alone, so that a run resumed
    from a checkpoint samples what an uninterrupted one does.

    TRL's RepeatSampler shuffles each epoch with a generator seeded once and advanced by each pass,
    so a run resumed in epoch e >= 1 (a fresh process, a fresh generator) would replay epoch 0's
    order. Here `set_epoch(e)`, which the Trainer calls as each epoch starts, rewinds the generator to
    where an uninterrupted run has it after e epochs. (The sampled answers need nothing: they come
    from the global RNG, which the Trainer checkpoints and restores.)"""
    import torch
    from trl.trainer.utils import RepeatSampler

    class EpochRepeatSampler(RepeatSampler):
        def set_epoch(self, epoch: int) -> None:
            if self.shuffle and self.seed is not None:
                self.generator.manual_seed(self.seed)
                for _ in range(epoch):
                    torch.randperm(self.num_samples, generator=self.generator)

    class Resumable(library):
        def _get_train_sampler(self, dataset: Any = None) -> Any:
            sampler = super()._get_train_sampler(dataset)
            if type(sampler) is RepeatSampler:
                sampler.__class__ = EpochRepeatSampler  # the same sampler, with set_epoch
            return sampler

    Resumable.__name__ = Resumable.__qualname__ = library.__name__
    return Resumable


def _trainer_classes(task: str) -> tuple[type, type]:
    """TRL's trainer and config classes of the task."""
    import trl

    return (trl.RLOOTrainer, trl.RLOOConfig) if task == "rloo" else (trl.GRPOTrainer, trl.GRPOConfig)


def prompt_rows(fmt: PromptFormat, tokenizer: Any, examples: list) -> list[dict[str, Any]]:
    """TRL's rows: the prompt as the model sees it (template applied), the raw prompt and the row's
    other fields for the reward."""
    return [{"prompt": fmt.prompt_text(ex, tokenizer), "raw_prompt": display_input(ex), **ex.meta} for ex in examples]


def run(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    task = cfg.task
    options = cfg.task_options()
    if not options.reward:
        raise TunelabError(f"a {task} run needs a reward", field=f"{task}.reward",
                           expected=f"{task}: {{reward: NAME}}: a built-in ({', '.join(REWARDS)}), a reward run's "
                           "folder, or module:function")  # fmt: skip
    trainer_class, args_class = _trainer_classes(task)
    common.setup(ctx)
    splits = common.load_data(ctx)
    reward = reward_function(options.reward, cfg._source_dir, ctx.open_run, field=f"{task}.reward")
    gold = None
    if options.gold:
        from tunelab.rewards import resolve_reward

        gold = resolve_reward(options.gold, field=f"{task}.gold", folder=cfg._source_dir)
    _check_columns(splits, reward, gold, task)
    fmt = PromptFormat.build(ctx.tokenizer, shape=splits.shape, template=cfg.data.template,
                             system_prompt=cfg.data.system_prompt)  # fmt: skip
    train_rows = prompt_rows(fmt, ctx.tokenizer, splits.train)
    test = common.held_out(ctx, splits)

    model = common.load_base_model(ctx)
    ev = cfg.evaluation
    judged = ev.enabled and bool(test)
    base_said = base_scores = None
    if judged and ev.compare_base:
        base_said = answers(model, ctx, fmt, test, "base")
        base_scores = _scores(reward, gold, test, base_said["texts"])
        write_json_atomic(ctx.run.base_eval_json, {"answers": base_said["texts"], **base_scores})
    extra = {"num_generations": options.num_generations, "max_completion_length": options.max_completion_length,
             "temperature": options.temperature, "beta": options.beta, "disable_dropout": False,
             "log_completions": False}  # fmt: skip
    trained = common.train_and_save(ctx, model, train_rows, [], fmt, build_trainer=rl_trainer(trainer_class, reward),
                                    args_class=args_class, extra_args=extra)  # fmt: skip
    model = trained["model"]
    base = tuned = None
    paired = None
    if judged:
        said = answers(model, ctx, fmt, test, "tuned")
        scores = _scores(reward, gold, test, said["texts"])
        tuned = _metrics(scores, said)
        kl = kl_to_base(model, ctx, said)
        tuned["kl_to_base"] = round(kl, 4) if kl is not None else None
        if base_scores is not None:
            base = {**_metrics(base_scores, base_said), "kl_to_base": 0.0}
            key = "gold" if gold is not None else "reward"
            tuned["win_rate_vs_base"] = win_rate(base_scores[key], scores[key])["win_rate"]
            base["win_rate_vs_base"] = 50.0  # against itself: every prompt a tie
            paired = (mean_metric(f"{key}_score" if key == "gold" else "mean_reward"), base_scores[key], scores[key])
        write_predictions(ctx.run.predictions, _predictions(test, base_said, base_scores, said, scores))
    results = common.write_results(ctx, trained, base=base, tuned=tuned, n_test=len(test), paired=paired)
    if base is not None and tuned is not None:
        results["reward_check"] = common.interval_check("mean_reward", base_scores["reward"], scores["reward"])
        hacking = reward_hacking(base, tuned, results["reward_check"], results.get("learning_check") if gold else None)
        results["reward_hacking"] = hacking
        for reason in hacking:
            info(f"[red]reward hacking suspected[/red] {reason}")
            results["warnings"].append(f"reward hacking suspected: {reason}")
        write_json_atomic(ctx.run.eval_json, results)
    return results


def _scores(reward: Any, gold: Any, examples: list, texts: list[str]) -> dict[str, list[float]]:
    out = {"reward": score(reward, examples, texts)}
    if gold is not None:
        out["gold"] = [100.0 * v for v in score(gold, examples, texts)]
    return out


def _metrics(scores: dict[str, list[float]], said: dict[str, Any]) -> dict[str, Any]:
    n = len(scores["reward"])
    metrics: dict[str, Any] = {"mean_reward": sum(scores["reward"]) / max(n, 1), "n": n,
                               "mean_output_tokens": round(sum(len(i) for i in said["ids"]) / max(n, 1), 1)}  # fmt: skip
    if "gold" in scores:
        metrics["gold_score"] = sum(scores["gold"]) / max(n, 1)
    return metrics


def reward_hacking(base: dict[str, Any], tuned: dict[str, Any], reward: dict[str, Any], gold: dict[str, Any] | None) -> list[str]:
    """Why the tuned model may be gaming its reward rather than getting better (empty when nothing
    suggests it): the reward rose beyond doubt but the gold rule did not; the KL to the base ran away;
    the answers grew far longer than the base's."""
    reasons = []
    if reward["better"] and gold is not None and not gold["better"]:
        reasons.append(f"the reward rose ({reward['base']:.3g} → {reward['tuned']:.3g}, 95% CI of the rise "
                       f"[{reward['low']:+.3g}, {reward['high']:+.3g}]) but the gold rule did not "
                       f"({gold['base']:.1f} → {gold['tuned']:.1f}, [{gold['low']:+.1f}, {gold['high']:+.1f}])")  # fmt: skip
    kl = tuned.get("kl_to_base")
    if kl is not None and kl > KL_RUNAWAY:
        reasons.append(f"the tuned model moved far from the base (KL {kl:.2f} nats per token > {KL_RUNAWAY})")
    if base.get("mean_output_tokens") and tuned["mean_output_tokens"] > LENGTH_RUNAWAY * base["mean_output_tokens"]:
        reasons.append(f"answers grew from {base['mean_output_tokens']:.1f} to {tuned['mean_output_tokens']:.1f} tokens")
    return reasons


def _predictions(examples: list, base: dict | None, base_scores: dict | None, tuned: dict, scores: dict) -> list[Prediction]:
    rows = []
    for i, ex in enumerate(examples):
        row = Prediction(source=ex.source, input=display_input(ex), reference=str(ex.meta.get("answer", "")),
                         meta=dict(ex.meta))  # fmt: skip
        for name, said, got in ((BASE, base, base_scores), (TUNED, tuned, scores)):
            if said is not None and got is not None:
                row.outputs[name] = said["texts"][i]
                row.stats[name] = {k: v[i] for k, v in got.items()}
        rows.append(row)
    return rows


def _check_columns(splits: Any, reward: Any, gold: Any, task: str) -> None:
    """The reward and the gold rule get the rows' other columns (and `raw_prompt`): refuse one that needs
    a column the rows lack, before the model loads."""
    from tunelab.rewards import check_fields

    columns = ["raw_prompt", *(splits.train[0].meta if splits.train else {})]
    for fn, key in ((reward, "reward"), (gold, "gold")):
        if fn is not None:
            check_fields(fn, columns, field=f"{task}.{key}", source=splits.source)


def refuse(cfg: Any) -> tuple[str, tuple[str, ...]] | None:
    """Both trainers sample one generation batch (batch_size × grad_accum rows) per optimizer step, and
    both insist that it hold whole groups (GRPOConfig, RLOOConfig: generation_batch_size % num_generations)."""
    t, groups = cfg.training, cfg.task_options().num_generations
    if (t.batch_size * t.grad_accum) % groups:
        return (f"batch_size × grad_accum ({t.batch_size * t.grad_accum}) is not a multiple of {cfg.task}."
                f"num_generations ({groups}): each batch must hold whole groups of answers; set training.batch_size "
                f"to a multiple of {groups}", ("training", "batch_size"))  # fmt: skip
    return common.responses_only(cfg)


def _stage(name: str, summary: str) -> Stage:
    return Stage(name=name, summary=summary, run=run, model_kind="policy_lm", shapes=("prompt",), loss=name,
                 headline_metrics=HEADLINE, options=GRPOOptions, reference_model=True, generates_in_loop=True,
                 refuse=refuse)  # fmt: skip


STAGE = _stage("grpo", "RL with GRPO against a reward: built-in, a reward run, or your function (TRL)")
RLOO = _stage("rloo", "RL with RLOO (REINFORCE leave-one-out) against the same rewards as grpo (TRL)")
