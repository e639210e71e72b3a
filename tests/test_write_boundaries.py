"""No tunelab command deletes or writes outside the folder it is meant to write.

A sandbox holds a precious folder beside the runs, a run folder that is a symlink to it, a folder
that is not a run, and a finished run. Every destructive command is tried with names and paths
that point elsewhere (`..`, absolute, empty, `.`, the home directory, a filesystem root, symlinks):
each must stop with exit 2, and a snapshot of every file in the sandbox (content and kind) must be
unchanged. Then the same commands pointed at their own folders succeed and change only those.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from tunelab.cli import main


def cli(*args: str) -> int:
    argv = sys.argv
    sys.argv = ["tunelab", *args]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return 0


def snapshot(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every path under root: a symlink's target, a folder, or a file's content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {path.readlink()}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_model):
    from conftest import qa_rows

    root = tmp_path_factory.mktemp("sandbox")
    (root / "victim").mkdir()
    (root / "victim" / "precious.txt").write_text("years of work")
    (root / "victim" / "train.jsonl").write_text('{"my": "own data"}\n')
    (root / "home").mkdir()
    (root / "home" / "notes.txt").write_text("mine")
    work = root / "work"
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "link").symlink_to(root / "victim", target_is_directory=True)
    (work / "notarun").mkdir()
    (work / "notarun" / "file.txt").write_text("not tunelab's")
    (work / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n")
    (work / "run.yaml").write_text(
        f"name: ok\noutput_dir: runs\nmodel: {tiny_model}\n"
        "data: {train: qa.jsonl, max_length: 64, split: {validation: 0.1, test: 0.1}}\n"
        "training: {max_steps: 2, batch_size: 4, save_steps: 1, precision: fp32}\n"
        "evaluation: {max_new_tokens: 4}\n"
    )
    return root


@pytest.fixture()
def in_work(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox / "work")
    monkeypatch.setenv("HOME", str(sandbox / "home"))
    monkeypatch.setenv("TUNELAB_QUIET", "1")
    return sandbox


REFUSED = {
    "train: name ../victim": ["train", "run.yaml", "--set", "name=../victim", "--overwrite"],
    "train: empty name": ["train", "run.yaml", "--set", "name=", "--overwrite"],
    "train: name .": ["train", "run.yaml", "--set", "name=.", "--overwrite"],
    "train: absolute name": ["train", "run.yaml", "--set", "name={root}/victim", "--overwrite"],
    "train: output_dir .. and name victim": ["train", "run.yaml", "--set", "output_dir=..", "--set", "name=victim",
                                             "--overwrite"],
    "train: output_dir ~ and name ..": ["train", "run.yaml", "--set", "output_dir=~", "--set", "name=..",
                                        "--overwrite"],
    "train: run folder is a symlink": ["train", "run.yaml", "--set", "name=link", "--overwrite"],
    "train: a folder that is not a run": ["train", "run.yaml", "--set", "output_dir=.", "--set", "name=notarun",
                                          "--overwrite"],
    "resume: not a run": ["train", "--resume", "{root}/victim"],
    "merge: --out ..": ["merge", "runs/ok", "--out", "..", "--overwrite"],
    "merge: --out .": ["merge", "runs/ok", "--out", ".", "--overwrite"],
    "merge: --out ~": ["merge", "runs/ok", "--out", "~", "--overwrite"],
    "merge: --out /": ["merge", "runs/ok", "--out", "/", "--overwrite"],
    "merge: --out a symlink": ["merge", "runs/ok", "--out", "runs/link", "--overwrite"],
    "merge: --out a foreign folder": ["merge", "runs/ok", "--out", "../victim", "--overwrite"],
    "merge: --out the run itself": ["merge", "runs/ok", "--out", "runs/ok", "--overwrite"],
    "export adapter: --out a foreign folder": ["export", "runs/ok", "-f", "adapter", "--out", "../victim",
                                               "--overwrite"],
    "export adapter: --out ..": ["export", "runs/ok", "-f", "adapter", "--out", "..", "--overwrite"],
    "export hf: --out a symlink": ["export", "runs/ok", "-f", "hf", "--out", "runs/link", "--overwrite"],
    "export gguf: --out a file not .gguf": ["export", "runs/ok", "-f", "gguf", "--out", "../victim/precious.txt",
                                            "--overwrite"],
    "cv: --out a foreign folder": ["cv", "run.yaml", "-k", "2", "--out", "../victim", "--overwrite"],
    "cv: name ../victim": ["cv", "run.yaml", "-k", "2", "--set", "name=../victim", "--overwrite"],
    "data prepare: --out a folder with my train.jsonl": ["data", "prepare", "qa.jsonl", "--out", "../victim",
                                                         "--overwrite"],
}


@pytest.fixture(scope="module")
def trained(sandbox):
    import os

    cwd = os.getcwd()
    os.chdir(sandbox / "work")
    try:
        assert cli("train", "run.yaml") == 0
    finally:
        os.chdir(cwd)
    return sandbox


@pytest.mark.parametrize("case", list(REFUSED))
def test_pointed_elsewhere_a_command_refuses_and_touches_nothing(trained, in_work, case):
    root = in_work
    before = snapshot(root)
    code = cli(*(a.format(root=root) for a in REFUSED[case]))
    assert code == 2, case
    assert snapshot(root) == before, case
    assert (root / "victim" / "precious.txt").read_text() == "years of work"


def test_pointed_at_their_own_folders_commands_write_only_there(trained, in_work):
    root = in_work
    work = root / "work"
    own = (work / "runs" / "ok", work / "merged", work / "adapter-out", work / "prepared")
    before = snapshot(root, skip=own)
    assert cli("train", "run.yaml", "--overwrite") == 0
    assert cli("merge", "runs/ok", "--out", "merged") == 0
    assert cli("merge", "runs/ok", "--out", "merged", "--overwrite") == 0
    assert cli("export", "runs/ok", "-f", "adapter", "--out", "adapter-out") == 0
    assert cli("data", "prepare", "qa.jsonl", "--out", "prepared") == 0
    assert snapshot(root, skip=own) == before
    assert (work / "merged" / "merge_info.json").is_file() and (work / "prepared" / "train.jsonl").is_file()
