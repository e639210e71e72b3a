"""The allocator preload: what TUNELAB_MALLOC chooses, and that a `tunelab` process re-executed on
tcmalloc trains exactly what glibc's malloc trains (skipped where no tcmalloc is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tunelab import allocator
from tunelab.errors import TunelabError


def test_the_choice_is_read_and_checked():
    assert allocator.choice({}) == "auto"
    assert allocator.choice({allocator.ENV: " TCMalloc "}) == "tcmalloc"
    with pytest.raises(TunelabError, match="TUNELAB_MALLOC") as info:
        allocator.choice({allocator.ENV: "mimalloc"})
    assert "auto | tcmalloc | jemalloc | system" in str(info.value)


def test_nothing_is_preloaded_when_told_not_to_or_already_done(monkeypatch):
    monkeypatch.setattr(allocator, "active", lambda: None)
    monkeypatch.setattr(allocator, "find_library", lambda name: Path(f"/lib/lib{name}.so"))
    assert allocator.preload({allocator.ENV: "system"}) is None
    assert allocator.preload({allocator.ENV: "auto", "TUNELAB_MALLOC_PRELOADED": "/x"}) is None  # never twice
    assert allocator.preload({}) == Path("/lib/libtcmalloc.so")
    assert allocator.preload({allocator.ENV: "jemalloc"}) == Path("/lib/libjemalloc.so")
    monkeypatch.setattr(allocator, "active", lambda: "jemalloc")  # started under one already
    assert allocator.preload({}) is None


def test_a_missing_library_is_refused_only_when_asked_for_by_name(monkeypatch):
    monkeypatch.setattr(allocator, "active", lambda: None)
    monkeypatch.setattr(allocator, "find_library", lambda name: None)
    assert allocator.preload({}) is None  # auto: glibc's, as before
    with pytest.raises(TunelabError, match="jemalloc is not installed") as info:
        allocator.preload({allocator.ENV: "jemalloc"})
    assert "apt-get install libjemalloc2" in str(info.value)


def test_only_the_tunelab_program_re_executes():
    assert allocator.started_as_tunelab(["/venv/bin/python", "/venv/bin/tunelab", "train", "c.yaml"])
    assert allocator.started_as_tunelab(["python", "-u", "-m", "tunelab", "train"])
    assert not allocator.started_as_tunelab(["python", "/venv/bin/pytest", "tests"])  # pytest calling main()
    assert not allocator.started_as_tunelab(["python", "-m", "pytest"])
    assert not allocator.started_as_tunelab(["python"])


def test_active_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert allocator.active(maps) == "tcmalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator.active(maps) is None
    assert allocator.active(tmp_path / "absent") is None


def _train(tmp_path: Path, cfg: dict, malloc: str) -> tuple[dict, dict]:
    cfg = {**cfg, "name": f"run-{malloc}", "output_dir": str(tmp_path / "runs")}
    config = tmp_path / f"{malloc}.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", allocator.ENV: malloc, "OMP_NUM_THREADS": "1"}
    env.pop("TUNELAB_MALLOC_PRELOADED", None)
    env.pop("LD_PRELOAD", None)
    res = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config)], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / cfg["name"]
    status = json.loads((run / "run.json").read_text(encoding="utf-8"))
    return status, load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator.find_library("tcmalloc") is None,
                    reason="no tcmalloc here (Debian: apt-get install libtcmalloc-minimal4)")  # fmt: skip
def test_training_on_tcmalloc_learns_exactly_what_glibc_malloc_learns(tmp_path, tiny_config):
    cfg = tiny_config(training={"max_steps": 6, "eval_steps": None, "save_steps": None, "threads": 1},
                      evaluation={"enabled": False})  # fmt: skip
    system_status, system = _train(tmp_path, cfg, "system")
    tc_status, tc = _train(tmp_path, cfg, "tcmalloc")
    assert system_status["malloc"] == "system" and tc_status["malloc"] == "tcmalloc"
    assert system.keys() == tc.keys() and system
    for name in system:  # the allocator decides where bytes live, never what they are
        assert system[name].equal(tc[name]), name


def test_the_planner_names_glibc_with_a_fixed_mmap_threshold_apart(monkeypatch):
    monkeypatch.setattr(allocator, "active", lambda: None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert allocator.running() == "glibc"
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert allocator.running() == "glibc-mmap"
    monkeypatch.setattr(allocator, "active", lambda: "tcmalloc")
    assert allocator.running() == "tcmalloc"
