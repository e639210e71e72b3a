"""What tunelab may delete: one check in front of every `--overwrite`.

A folder is replaced only when tunelab wrote it (it holds the marker file the operation leaves, such
as a run's `run.json`) or it is empty, and never when it is a filesystem root, the home directory,
the current directory or one of its parents, or a symlink (whose target lies elsewhere).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelab.errors import TunelabError

__all__ = ["check_folder_name", "check_removable", "protected_reason", "remove_owned"]


def check_folder_name(name: str) -> str:
    """A run name is one folder inside output_dir: no separators, no `..`, not empty."""
    if not name or name.strip() != name or name in (".", "..") or any(c in name for c in "/\\\0") or ":" in name:
        raise ValueError(f"{name!r} is not a folder name: a run name is one folder inside output_dir "
                         "(letters, digits, '-', '_', '.'; no '/', '..' or surrounding spaces)")  # fmt: skip
    return name


def protected_reason(path: Path) -> str | None:
    """Why `path` must never be deleted (None when nothing forbids it)."""
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "it is a filesystem root"
    if resolved == Path.home().resolve():
        return "it is the home directory"
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the current directory or holds it"
    return None


def check_removable(path: Path, *, markers: tuple[str, ...], what: str) -> None:
    """Raise unless `path` is absent, empty, or a folder an earlier tunelab command wrote (it holds
    one of `markers`): call it before the work, so a refused --overwrite costs nothing."""
    if not (path.exists() or path.is_symlink()):
        return
    reason = protected_reason(path)
    if reason is None and path.is_symlink():
        reason = "it is a symlink (its target lies elsewhere)"
    if reason is None and not path.is_dir():
        reason = "it is a file, not a folder"
    if reason is None and any(path.iterdir()) and not any((path / m).exists() for m in markers):
        reason = f"it does not look like {what} (no {' or '.join(markers)} in it)"
    if reason is not None:
        raise TunelabError(f"refusing to delete it for --overwrite: {reason}", file=str(path),
                           expected=f"a folder that holds {what}, or another name")  # fmt: skip


def remove_owned(path: Path, *, markers: tuple[str, ...], what: str) -> None:
    """Delete a folder an earlier tunelab command wrote, for `--overwrite` (see `check_removable`)."""
    check_removable(path, markers=markers, what=what)
    if path.is_dir():
        shutil.rmtree(path)
