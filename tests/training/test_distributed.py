"""Training in several processes (torchrun, gloo on the CPU, one thread each): two processes train
exactly what one process trains with the same rows per optimizer step; two "machines" (two torchrun
agents on 127.0.0.1) likewise; only rank 0 writes the run folder; a run killed under the launcher
resumes under it; and what this machine cannot run is refused before anything starts.

The reference is one process with gradient accumulation: 2 processes × 2 rows = 1 process × 2 rows
× 2 accumulation steps, the same rows in each step (each process takes its share of the step's rows).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.runs import RunDir
from tunelab.training import distributed

TESTS = Path(__file__).parents[1]
LOGGED = ("loss", "grad_norm", "learning_rate")


def config(root: Path, tiny_model: Path, data: Path, name: str, *, batch: int, accum: int, **training) -> dict:
    return {
        "name": name,
        "output_dir": str(root / "runs"),
        "model": str(tiny_model),
        "task": "sft",
        "method": "lora",
        "data": {"train": str(data), "max_length": 64, "split": {"validation": 0.1, "test": 0.1, "seed": 1}},
        "training": {"max_steps": 6, "batch_size": batch, "grad_accum": accum, "lr": 5e-3, "logging_steps": 1,
                     "eval_steps": 3, "save_steps": 3, "save_total_limit": 4, "precision": "fp32",
                     "warmup_ratio": 0.0, "threads": 1, **training},
        "evaluation": {"max_new_tokens": 8, "batch_size": 8, "max_examples": 4},
    }  # fmt: skip


def cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(TESTS)}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "tunelab", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def weights(run: RunDir) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted((run.path / "adapter").glob("*.safetensors")) for k, v in load_file(f).items()}


def logged(run: RunDir) -> list[tuple]:
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    return [(r["step"], key, r[key]) for r in rows for key in LOGGED if key in r]


def files(run: RunDir) -> list[str]:
    """Every file of a run folder; the Trainer's per-process RNG states (rng_state_K.pth, one per
    process: the engine's part of a checkpoint) named as one process names its own."""
    names = []
    for path in sorted(run.path.rglob("*")):
        if path.is_file():
            name = str(path.relative_to(run.path))
            names.append(name.replace("rng_state_0.pth", "rng_state.pth") if "rng_state_" in name else name)
    return sorted(set(n for n in names if not n.endswith("rng_state_1.pth")))


def assert_same_training(got: RunDir, want: RunDir) -> None:
    a, b = weights(got), weights(want)
    assert a.keys() == b.keys() and a
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ by up to {worst}"
    assert [(s, k) for s, k, _ in logged(got)] == [(s, k) for s, k, _ in logged(want)]
    for (step, key, x), (_, _, y) in zip(logged(got), logged(want), strict=True):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-7), (step, key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """One process (batch 2 × accumulation 2) and two processes (batch 2 each), from the same config."""
    import tunelab
    from conftest import qa_rows

    root = tmp_path_factory.mktemp("ddp")
    data = root / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n", encoding="utf-8")
    one = config(root, tiny_model, data, "one", batch=2, accum=2)
    threads = torch.get_num_threads()
    try:
        tunelab.train(one)
    finally:
        torch.set_num_threads(threads)
    two = root / "two.json"
    two.write_text(json.dumps(config(root, tiny_model, data, "two", batch=2, accum=1)))
    done = cli("train", str(two), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    return {"root": root, "data": data, "one": RunDir(root / "runs/one"), "two": RunDir(root / "runs/two")}


@pytest.mark.integration
def test_two_processes_train_exactly_what_one_process_trains_with_the_same_rows_per_step(runs):
    one, two = runs["one"], runs["two"]
    assert one.is_complete and two.is_complete
    assert_same_training(two, one)
    tokens = [json.loads(r.eval_json.read_text())["training"]["train_tokens"] for r in (one, two)]
    assert tokens[0] == tokens[1] > 0  # every process's tokens counted, once
    assert two.read_status()["world_size"] == 2 and one.read_status()["world_size"] == 1
    # held-out evaluation runs on rank 0 alone, so its answers are a one-process run's
    assert json.loads(two.eval_json.read_text())["metrics"] == json.loads(one.eval_json.read_text())["metrics"]


@pytest.mark.integration
def test_only_rank_0_writes_the_run_folder(runs):
    one, two = runs["one"], runs["two"]
    assert files(two) == files(one)  # the same files, no second copy of any
    checkpoint = two.checkpoints / "checkpoint-3"
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    # one metrics row per logged step (rank 1 appended none) and one lock holder
    assert len(two.metrics.read_text().splitlines()) == len(one.metrics.read_text().splitlines())


@pytest.mark.integration
def test_two_machines_simulated_on_localhost_train_the_same(runs, tiny_model):
    root = runs["root"]
    cfg = root / "nodes.json"
    cfg.write_text(json.dumps(config(root, tiny_model, runs["data"], "nodes", batch=2, accum=1)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1", "OMP_NUM_THREADS": "1"}
    agents = [
        subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(cfg), "--nproc", "1", "--nnodes", "2",
                          "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [agent.communicate(timeout=240) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(err[-3000:] for _, err in outputs)
    nodes = RunDir(root / "runs/nodes")
    assert nodes.is_complete and nodes.read_status()["world_size"] == 2
    assert_same_training(nodes, runs["one"])


@pytest.mark.integration
def test_accelerate_launch_runs_the_same_training(runs, tiny_model):
    root = runs["root"]
    path = root / "accelerate.json"
    path.write_text(json.dumps(config(root, tiny_model, runs["data"], "accelerate", batch=2, accum=1)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunelab",
                           "train", str(path)], env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    run = RunDir(root / "runs/accelerate")
    assert run.read_status()["world_size"] == 2
    assert_same_training(run, runs["one"])


@pytest.mark.integration
def test_a_run_killed_under_the_launcher_resumes_under_it_and_ends_where_it_would_have(runs, tiny_model):
    root = runs["root"]
    cfg = config(root, tiny_model, runs["data"], "killed", batch=2, accum=1)
    path = root / "killed.json"
    path.write_text(json.dumps(cfg))
    killed = RunDir(root / "runs/killed")
    # every process SIGKILLs itself just after step 4 (checkpoint-3 saved, step 4 lost)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_QUIET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(TESTS)}  # fmt: skip
    crash = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                            str(TESTS / "stages/crash_driver.py"), str(path), "train", str(killed.path), "step:4"],
                           env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert crash.returncode != 0 and not killed.is_complete, crash.stderr[-3000:]
    assert killed.last_checkpoint().name == "checkpoint-3"

    # 3 processes cannot share 2 micro-batches per step: refused before anything starts
    refused = cli("train", "--resume", str(killed.path), "--nproc", "3")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "2 micro-batches per step, which 3 processes cannot share evenly" in refused.stderr
    assert f"--resume {killed.path} --nproc 2" in refused.stderr

    copy = root / "runs/killed-resumed-in-one"
    shutil.copytree(killed.path, copy)
    resumed = cli("train", "--resume", str(killed.path), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert killed.is_complete
    assert_same_training(killed, runs["two"])

    # DDP's checkpoint is whole: one process resumes it with accumulation 2, the same rows in every step
    one = cli("train", "--resume", str(copy))
    assert one.returncode == 0, one.stderr[-4000:]
    assert RunDir(copy).read_status()["resumed_grad_accum"] == 2
    assert_same_training(RunDir(copy), runs["two"])


# -- refused before anything starts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("distributed_section", "method", "message"),
    [
        ({"backend": "nccl"}, "lora", "nccl needs CUDA GPUs and this machine has none"),
        ({"strategy": "fsdp"}, "lora", "FSDP on CPUs (gloo) is not supported"),
        ({"strategy": "fsdp"}, "prompt", "prepends learned virtual tokens, which fsdp cannot shard"),
        ({"strategy": "deepspeed"}, "qlora", "4-bit weights (bitsandbytes) are not sharded by deepspeed"),
    ],
)
def test_a_setup_this_machine_cannot_run_is_refused_before_any_process_starts(
    tiny_config, train_refused, distributed_section, method, message
):
    if torch.cuda.is_available():
        pytest.skip("these refusals are a CPU machine's")
    cfg = tiny_config(method=method, distributed=distributed_section)
    code, err = train_refused(cfg, "run.json", "--nproc", "2")
    assert code == 2 and message in err and "Traceback" not in err
    assert "run.json" in err and "distributed." in err  # the file and the key


def test_one_process_ignores_the_distributed_section(tiny_config):
    """`distributed:` describes several processes; a one-process run with it set validates as usual."""
    from tunelab.config import check_before_loading, config_from_dict

    cfg = config_from_dict(tiny_config(distributed={"strategy": "fsdp", "backend": "nccl"}))
    assert check_before_loading(cfg, output_dir=False, model=False) == []


def test_launcher_flags_are_checked(tiny_config, train_refused):
    code, err = train_refused(tiny_config(), "run.json", "--nnodes", "2", "--node-rank", "2")
    assert code == 2 and "--node-rank: is 2 (expected 0 to 1" in err
    code, err = train_refused(tiny_config(), "run.json", "--nproc", "0")
    assert code == 2 and "--nproc: is 0" in err


def test_a_wrong_distributed_setting_names_its_key(tiny_config, train_refused):
    code, err = train_refused(tiny_config(distributed={"strategy": "zero"}), "run.json")
    assert code == 2 and "distributed.strategy" in err and "'ddp', 'fsdp' or 'deepspeed'" in err
    code, err = train_refused(tiny_config(distributed={"deepspeed": {"zero_stage": 2, "offload_params": True}}))
    assert code == 2 and "distributed.deepspeed" in err and "offload_params needs zero_stage: 3" in err


def test_the_torchrun_command_runs_tunelab_train_on_every_machine():
    one = distributed.torchrun_command(["cfg.yaml", "--set", "training.lr=1e-4"], nproc=4)
    assert one[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone"]
    assert one[-6:] == ["-m", "tunelab", "train", "cfg.yaml", "--set", "training.lr=1e-4"]
    two = distributed.torchrun_command(["cfg.yaml"], nproc=8, nnodes=2, node_rank=1, master_addr="10.0.0.1",
                                       master_port=29400)  # fmt: skip
    assert "--nnodes=2" in two and "--node-rank=1" in two and "--master-addr=10.0.0.1" in two
    assert "--master-port=29400" in two and "--standalone" not in two


def test_the_deepspeed_config_leaves_the_batch_and_precision_to_the_trainer():
    options = distributed.DeepSpeedOptions(zero_stage=3, offload_optimizer=True, offload_params=True)
    config = distributed.deepspeed_config(options)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # rank 0 saves whole weights
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"  # filled in by the Trainer from `training:`, so they never disagree
    two = distributed.deepspeed_config(distributed.DeepSpeedOptions())
    assert two["zero_optimization"]["stage"] == 2 and "offload_param" not in two["zero_optimization"]


def test_this_process_s_place_comes_from_torchrun_s_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    current = distributed.world()
    assert (current.rank, current.size, current.local_rank, current.local_size) == (3, 4, 1, 2)
    assert not current.is_main and current.distributed
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name)
    assert distributed.world() == distributed.World() and distributed.world().is_main


@pytest.mark.integration
@pytest.mark.parametrize(("stage", "nproc"), [(2, 2), (3, 2), (3, 1)])
def test_deepspeed_zero_on_cpu_processes_trains_what_one_plain_process_trains(runs, tiny_model, stage, nproc):
    """ZeRO-2 shards the optimizer states and gradients, ZeRO-3 the weights too (rank 0 then gathers
    them, loads them into a whole model and saves and evaluates that); the result is one plain process's,
    to float rounding (DeepSpeed reduces in another order). `--nproc 1` runs DeepSpeed in one process
    (what a one-GPU machine does to offload), with accumulation 2 for the same rows per step."""
    pytest.importorskip("deepspeed")
    root = runs["root"]
    name = f"zero{stage}-{nproc}"
    cfg = config(root, tiny_model, runs["data"], name, batch=2, accum=2 // nproc)
    cfg["distributed"] = {"strategy": "deepspeed", "deepspeed": {"zero_stage": stage}}
    path = root / f"{name}.json"
    path.write_text(json.dumps(cfg))
    done = cli("train", str(path), "--nproc", str(nproc), timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    run = RunDir(root / f"runs/{name}")
    assert run.is_complete
    assert any(p.name.startswith("global_step") for p in (run.checkpoints / "checkpoint-6").iterdir())  # DeepSpeed's own
    a, b = weights(run), weights(runs["one"])
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"weights differ by up to {worst}"
    assert [r[2] for r in logged(run) if r[1] == "loss"] == pytest.approx(
        [r[2] for r in logged(runs["one"]) if r[1] == "loss"], rel=1e-5)
    assert json.loads(run.eval_json.read_text())["metrics"]["tuned"]["perplexity"] == pytest.approx(
        json.loads(runs["one"].eval_json.read_text())["metrics"]["tuned"]["perplexity"], rel=1e-4)


def test_a_deepspeed_config_deepspeed_refuses_is_one_message(tiny_config):
    pytest.importorskip("deepspeed")
    from tunelab.errors import TunelabError

    options = distributed.DeepSpeedOptions()
    good = distributed.deepspeed_config(options)
    training = tunelab_config(tiny_config()).training
    distributed.check_deepspeed_config(good, training)  # the generated config passes DeepSpeed's own checks
    bad = {**good, "zero_optimization": {**good["zero_optimization"], "stagee": 2}}
    with pytest.raises(TunelabError, match="DeepSpeed refused its config: .*stagee"):
        distributed.check_deepspeed_config(bad, training)
    bad = {**good, "zero_optimization": {**good["zero_optimization"], "offload_optimizer": {"device": "gpu"}}}
    with pytest.raises(TunelabError, match="DeepSpeed refused its config"):
        distributed.check_deepspeed_config(bad, training)


def tunelab_config(raw: dict):
    from tunelab.config import config_from_dict

    return config_from_dict(raw)
