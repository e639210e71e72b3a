"""Files a user names (a run config, a data file): checked before they are opened, so a NUL in the path,
a folder, a FIFO or a device (which would hang, or read forever) or unreadable bytes are one clear
`TunelabError` naming the file (and the line, for bad bytes) — never a traceback or a hang."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tunelab.errors import TunelabError

__all__ = ["bad_utf8", "check_file", "decode_utf8", "read_bytes", "shown"]


def shown(path: str | Path) -> str:
    """A path as printed in a message: a NUL (which cannot be in a real path) shown as \\0."""
    return str(path).replace("\0", "\\0")


def check_file(path: str | Path, *, expected: str, missing: str = "file not found", kind: str = "file") -> Path:
    """`path` as a Path when it names an existing regular file; else one error saying what it is instead."""
    name = shown(path)
    if "\0" in str(path):
        raise TunelabError("path contains a NUL character", file=name, expected=expected, kind=kind)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise TunelabError(missing, file=name, expected=expected, kind=kind) from None
    except (OSError, ValueError) as err:  # too long a name, no permission on a parent folder, …
        raise TunelabError(f"cannot open it: {getattr(err, 'strerror', None) or err}", file=name, expected=expected,
                           kind=kind) from None  # fmt: skip
    if stat.S_ISDIR(mode):
        raise TunelabError("is a directory, not a file", file=name, expected=expected, kind=kind)
    if not stat.S_ISREG(mode):
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")  # fmt: skip
        raise TunelabError(f"is {what}, not a regular file", file=name, expected=expected, kind=kind)
    return Path(path)


def read_bytes(path: str | Path, *, expected: str, missing: str = "file not found", kind: str = "file") -> bytes:
    """The bytes of a regular file (see `check_file`); an OS error reading it is one error too."""
    path = check_file(path, expected=expected, missing=missing, kind=kind)
    try:
        return path.read_bytes()
    except OSError as err:
        raise TunelabError(f"cannot read it: {err.strerror or err}", file=str(path), expected=expected,
                           kind=kind) from None  # fmt: skip


def bad_utf8(file: str, byte: int, reason: str, line: int) -> TunelabError:
    return TunelabError(
        f"byte 0x{byte:02x} is not valid UTF-8 ({reason})",
        file=file,
        line=line,
        expected="UTF-8 encoded text (re-save the file as UTF-8)",
        kind="encoding",
    )


def decode_utf8(raw: bytes, file: str) -> str:
    """UTF-8 text (a BOM allowed); the first bad byte is an error with its line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise bad_utf8(file, raw[err.start], err.reason, raw[: err.start].count(b"\n") + 1) from None
