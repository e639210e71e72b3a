"""Nothing outside a command's own folder is ever deleted: run names are one folder, and --overwrite
replaces only what tunelab wrote (never the current or home directory, a root, or a symlink)."""

import os
from pathlib import Path

import pytest

import tunelab
from tunelab.config import config_from_dict
from tunelab.errors import TunelabError
from tunelab.export.merge import export_adapter, merge_run
from tunelab.paths import check_removable, remove_owned


@pytest.mark.parametrize("name", ["../victim", "", ".", "..", "a/b", "/abs", " padded", "a\\b", "c:x"])
def test_a_run_name_is_one_folder(name):
    with pytest.raises(TunelabError, match="name: .*not a folder name"):
        config_from_dict({"name": name, "data": {"train": "x.jsonl"}})


def test_output_dir_expands_home():
    cfg = config_from_dict({"output_dir": "~/runs", "data": {"train": "x.jsonl"}})
    assert cfg.run_dir == Path.home() / "runs" / "run"


def _victim(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder / "thesis.tex"


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, tiny_config):
    precious = _victim(tmp_path / "runs" / "mine")
    with pytest.raises(TunelabError, match=r"refusing to delete it for --overwrite: .*no run.json"):
        tunelab.train(tiny_config(name="mine"), overwrite=True)
    assert precious.read_text() == "years of work"


def test_overwrite_refuses_a_symlinked_run_folder(tmp_path, tiny_config):
    precious = _victim(tmp_path / "elsewhere")
    (precious.parent / "run.json").write_text("{}")  # even one that looks like a run
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link").symlink_to(precious.parent)
    with pytest.raises(TunelabError, match="symlink"):
        tunelab.train(tiny_config(name="link"), overwrite=True)
    assert precious.exists()


@pytest.mark.parametrize("where", ["cwd", "parent", "home", "root"])
def test_never_the_current_directory_its_parents_home_or_root(tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    (work / "run.json").write_text("{}")  # marked as a run: refused all the same
    monkeypatch.chdir(work)
    path = {"cwd": Path("."), "parent": Path(".."), "home": Path.home(), "root": Path("/")}[where]
    with pytest.raises(TunelabError, match="refusing to delete"):
        remove_owned(path, markers=("run.json",), what="a tunelab run")
    assert (work / "run.json").exists()


def test_merge_and_export_refuse_before_any_work(tmp_path, monkeypatch):
    precious = _victim(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    for call in (merge_run, export_adapter):
        # refused on the output alone: the run directory does not even exist
        with pytest.raises(TunelabError, match="no merge_info.json or adapter_config.json"):
            call(tmp_path / "no-such-run", precious.parent, overwrite=True)
        with pytest.raises(TunelabError, match="current directory"):
            call(tmp_path / "no-such-run", Path("."), overwrite=True)
    assert precious.read_text() == "years of work"


def test_an_empty_or_owned_folder_is_replaced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_removable(empty, markers=("run.json",), what="a run")
    owned = tmp_path / "owned"
    owned.mkdir()
    (owned / "run.json").write_text("{}")
    remove_owned(owned, markers=("run.json",), what="a run")
    assert not owned.exists()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(TunelabError, match="a file, not a folder"):
        remove_owned(file, markers=("run.json",), what="a run")
    assert file.exists() and os.path.exists(empty)
