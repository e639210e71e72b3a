"""Training in several processes, on one machine or several.

The processes are started by torchrun (`tunelab train CONFIG --nproc N` runs it for the user;
`torchrun … -m tunelab train CONFIG` and `accelerate launch -m tunelab train CONFIG` work too) and
the transformers Trainer runs the strategy: DDP, FSDP or DeepSpeed ZeRO. This module is tunelab's
side of it: the `distributed:` config section, which process this one is, the refusals checked
before any work, the Trainer arguments of each strategy, the process group tunelab opens first (so
rank 0 can prepare the run folder while the others wait for it) and the torchrun command line.

Only rank 0 writes the run folder; the other ranks train and stop. Evaluation after training runs on
rank 0 alone: generation metrics (BLEU, ROUGE, exact match), the paired bootstrap intervals and the
predictions file need every answer in one place, and the answers are then the ones a one-process run
gives (sharded generation would batch, and so pad, the rows differently).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.errors import TunelabError


class FsdpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard"] = Field(
        "full_shard", description="full_shard: weights, gradients and optimizer states (ZeRO-3); shard_grad_op: "
        "gradients and states only (ZeRO-2); hybrid_shard: full within a node, replicated across nodes")  # fmt: skip
    cpu_offload: bool = Field(False, description="keep the sharded weights and states in CPU memory between uses")
    version: Literal[1, 2] = Field(2, description="FSDP2 (per-parameter sharding, torch ≥ 2.4) or the older FSDP1")


class DeepSpeedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zero_stage: Literal[2, 3] = Field(2, description="2: gradients and optimizer states sharded; 3: weights too")
    offload_optimizer: bool = Field(False, description="optimizer states (and their step) in CPU memory")
    offload_params: bool = Field(False, description="ZeRO-3 only: the weights in CPU memory between uses")

    @model_validator(mode="after")
    def _params_need_stage_3(self) -> DeepSpeedOptions:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3 (ZeRO-2 does not shard the weights, so it cannot "
                             "offload them)")  # fmt: skip
        return self


class DistributedOptions(BaseModel):
    """How several processes train together (ignored when the run has one process)."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: every process holds the whole model; fsdp / deepspeed: shard it across processes")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on GPUs, gloo on CPUs")
    timeout_minutes: int = Field(60, gt=0, description="how long a process waits for the others (rank 0 "
                                 "evaluates the base model before training while the others wait)")  # fmt: skip
    find_unused_parameters: bool = Field(False, description="DDP: needed only when some trained weights get no "
                                         "gradient in a step")  # fmt: skip
    fsdp: FsdpOptions = Field(default_factory=FsdpOptions)
    deepspeed: DeepSpeedOptions = Field(default_factory=DeepSpeedOptions)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run (torchrun's environment variables)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1
    launched: bool = False  # started by torchrun / accelerate launch (even as a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the `distributed:` strategy applies: several processes, or one a launcher started (so
        `--nproc 1` runs DeepSpeed's offload or FSDP on a machine with one GPU)."""
        return self.size > 1 or self.launched


def world() -> World:
    env = os.environ

    def number(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            return default

    return World(rank=number("RANK", 0), local_rank=number("LOCAL_RANK", 0), size=number("WORLD_SIZE", 1),
                 local_size=number("LOCAL_WORLD_SIZE", 1), launched="LOCAL_RANK" in env)  # fmt: skip


def is_main_process() -> bool:
    return world().is_main


def backend(options: DistributedOptions, cuda: bool) -> str:
    if options.backend != "auto":
        return options.backend
    return "nccl" if cuda else "gloo"


def problems(options: DistributedOptions, *, world_size: int, method: Any, stage: Any,
             gpus: int, local_size: int = 1, launched: bool = False) -> list[TunelabError]:  # fmt: skip
    """Why this machine cannot run `options` with `world_size` processes (empty: it can). Checked
    before the processes start (`tunelab train --nproc`) and again in each one, before any model loads.
    One process is checked only when a launcher starts it (`launched`): otherwise the section is not used."""
    out: list[TunelabError] = []
    if world_size <= 1 and not launched:
        return out

    def refuse(message: str, field: str, expected: str) -> None:
        out.append(TunelabError(message, field=f"distributed.{field}", expected=expected))

    if not stage.supports_distributed:
        refuse(f"task {stage.name!r} trains in one process only", "strategy", "one process (no --nproc)")
    chosen = backend(options, gpus > 0)
    if chosen == "nccl" and gpus == 0:
        refuse("nccl needs CUDA GPUs and this machine has none", "backend", "gloo (or auto) on CPUs")
    elif chosen == "nccl" and local_size > gpus:
        refuse(f"{local_size} processes on this machine but only {gpus} GPU(s): nccl needs one GPU per process",
               "backend", f"--nproc {gpus} or fewer")  # fmt: skip
    if options.strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            refuse("DeepSpeed is not installed", "strategy", "pip install deepspeed, or strategy ddp / fsdp")
    if options.strategy in ("fsdp", "deepspeed"):
        if method.virtual_tokens:
            refuse(f"method {method.name!r} prepends learned virtual tokens, which {options.strategy} cannot shard "
                   "(peft keeps them outside the model's layers)", "strategy", "ddp, or method lora")  # fmt: skip
        if method.name == "qlora":
            refuse(f"QLoRA's 4-bit weights (bitsandbytes) are not sharded by {options.strategy} here",
                   "strategy", "ddp (each process holds the 4-bit model: it is small), or method lora")  # fmt: skip
        if options.strategy == "fsdp" and gpus == 0:
            refuse("FSDP on CPUs (gloo) is not supported: accelerate enables FSDP on GPUs only, and on CPUs would "
                   "train plain DDP without a word", "strategy", "ddp on CPUs; fsdp on a machine with GPUs")  # fmt: skip
    return out


def raise_problems(found: list[TunelabError], where: Any = None) -> None:
    """The first problem, naming the config file when `where` (config._Where) says which."""
    if found:
        raise where.attach(found[0]) if where is not None else found[0]


def trainer_arguments(options: DistributedOptions, *, cuda: bool, layer_classes: list[str] | None = None,
                      training: Any = None) -> dict[str, Any]:  # fmt: skip
    """TrainingArguments fields for the chosen strategy (only when the run has several processes)."""
    args: dict[str, Any] = {
        "ddp_backend": backend(options, cuda),
        "ddp_timeout": options.timeout_minutes * 60,
        "ddp_find_unused_parameters": options.find_unused_parameters,
    }
    if options.strategy == "fsdp":
        f = options.fsdp
        args["fsdp"] = f"{f.sharding} auto_wrap" + (" offload" if f.cpu_offload else "")
        config: dict[str, Any] = {"version": f.version}
        if layer_classes:
            config["transformer_layer_cls_to_wrap"] = layer_classes
        args["fsdp_config"] = config
    elif options.strategy == "deepspeed":
        args["deepspeed"] = deepspeed_config(options.deepspeed, training)
    return args


def deepspeed_config(options: DeepSpeedOptions, training: Any = None) -> dict[str, Any]:
    """A DeepSpeed ZeRO config for the Trainer: the batch sizes, gradient clipping and precision are
    "auto" (the Trainer fills them in from `training:`, so the two never disagree)."""
    zero: dict[str, Any] = {
        "stage": options.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
    }
    if options.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if options.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)  # rank 0 saves whole weights, not shards
        if options.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    return config


def check_deepspeed_config(config: dict[str, Any], training: Any) -> None:
    """DeepSpeed's own validation of `config` (its pydantic schemas), with the "auto" values filled in
    from `training:` as the Trainer will fill them; a wrong key or value becomes one clear message.
    Needs DeepSpeed installed (nothing to check without it: `problems` refuses the strategy then)."""
    if importlib.util.find_spec("deepspeed") is None:
        return
    from deepspeed.runtime.config import DeepSpeedConfig

    filled = dict(config)
    micro, accum = training.batch_size, training.grad_accum
    autos = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
             "train_batch_size": micro * accum,  # validated as one process: DeepSpeed checks micro × accum × world
             "gradient_clipping": training.max_grad_norm}  # fmt: skip
    filled.update({k: v for k, v in autos.items() if filled.get(k) == "auto"})
    for half in ("bf16", "fp16"):
        if isinstance(filled.get(half), dict) and filled[half].get("enabled") == "auto":
            filled[half] = {**filled[half], "enabled": training.precision == half}
    try:
        DeepSpeedConfig(filled)
    except (ValueError, TypeError, AssertionError) as err:  # pydantic's ValidationError is a ValueError
        first = str(err).strip().splitlines()
        raise TunelabError(f"DeepSpeed refused its config: {' '.join(first[:3])}", field="distributed.deepspeed",
                           expected="zero_stage 2 or 3 with offload options DeepSpeed accepts") from None  # fmt: skip


def shards_weights(options: DistributedOptions, current: World) -> bool:
    """Whether each process holds only a shard of the weights after training (FSDP, ZeRO-3): then all
    of them gather the whole weights before rank 0 saves and evaluates them."""
    return current.distributed and (
        options.strategy == "fsdp" or (options.strategy == "deepspeed" and options.deepspeed.zero_stage == 3)
    )


# -- the process group ---------------------------------------------------------------------------


def start(options: DistributedOptions, current: World) -> bool:
    """Open the process group (torchrun's rendezvous) before the Trainer does, so tunelab can share
    rank 0's outcome with the others; the Trainer (accelerate) then uses this group. False when one
    was open already (the caller's, left open)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    cuda = torch.cuda.is_available()
    name = backend(options, cuda)
    kwargs: dict[str, Any] = {"backend": name, "timeout": timedelta(minutes=options.timeout_minutes)}
    if name == "nccl":
        torch.cuda.set_device(current.local_rank)
        kwargs["device_id"] = torch.device("cuda", current.local_rank)
    dist.init_process_group(**kwargs)
    return True


def share_outcome(current: World, work: Any) -> Any:
    """Run `work()` on rank 0 only and tell every rank how it went: its result, or its error (raised
    on every rank, so none is left waiting for a run rank 0 refused)."""
    if not current.distributed:
        return work()
    import torch.distributed as dist

    outcome: list[Any] = [None]
    result = None
    if current.is_main:
        try:
            result = work()
        except TunelabError as err:
            outcome[0] = {"message": err.message, "file": err.file, "line": err.line, "field": err.field,
                          "expected": err.expected, "kind": err.kind}  # fmt: skip
            dist.broadcast_object_list(outcome, src=0)
            raise
        except BaseException:
            outcome[0] = {"message": "rank 0 stopped with an error (see its output)"}
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None and not current.is_main:
        raise TunelabError(**outcome[0])
    return result


def finish() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class WorkerFinished(Exception):  # noqa: N818 - not an error: a rank other than 0 has done its part
    """Raised on ranks other than 0 once training ends: saving and evaluation are rank 0's."""


# -- the launcher ------------------------------------------------------------------------------


def torchrun_command(train_args: list[str], *, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str = "127.0.0.1", master_port: int = 29500) -> list[str]:  # fmt: skip
    """The torchrun command that runs `tunelab train TRAIN_ARGS` in `nproc` processes on each of
    `nnodes` machines (this one being `node_rank`)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        command += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={master_addr}",
                    f"--master-port={master_port}"]  # fmt: skip
    else:
        # one machine: a free port of its own, so two runs on one machine do not collide
        command += ["--standalone"]
    return [*command, "-m", "tunelab", "train", *train_args]


def launch_environment(threads: int | None) -> dict[str, str]:
    """The environment of the launched processes: one CPU thread each unless `training.threads` says
    otherwise (torchrun's own default too, said here so two processes do not fight over the cores)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads or 1))
    return env
