"""Headless Chromium from the command line, for the report tests (shared by tests/reporting and
tests/evaluation; each conftest offers it as the `chromium` fixture, which skips when it is missing)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Chromium logs every console message and uncaught error of the page as "...:CONSOLE(N)] "text", source: …"
# (or ":CONSOLE:N]"), whatever its level, when started with --enable-logging=stderr --v=0.
_CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\]\s*(.*)")


def find_chromium() -> str | None:
    env = os.environ.get("TUNELAB_CHROMIUM")
    for candidate in ((env,) if env else ()) + CHROMIUM_CANDIDATES:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found


@dataclass
class Page:
    dom: str
    console: list[str]  # every console message / uncaught error / CSP violation the page produced
    stderr: str


class Chromium:
    """Headless Chromium from the command line: dump the DOM after scripts ran, or take a screenshot."""

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
    )

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def _run(self, url: str, *extra: str) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="tunelab-chromium-") as profile:
            return subprocess.run(
                [self.binary, *self.FLAGS, f"--user-data-dir={profile}", *extra, url],
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )

    @staticmethod
    def _console(stderr: str) -> list[str]:
        return [m.group(1) for line in stderr.splitlines() if (m := _CONSOLE.search(line))]

    def load(self, path: Path, fragment: str = "") -> Page:
        url = path.resolve().as_uri() + (f"#{fragment}" if fragment else "")
        proc = self._run(url, "--dump-dom")
        assert proc.returncode == 0, proc.stderr[-2000:]
        return Page(dom=proc.stdout, console=self._console(proc.stderr), stderr=proc.stderr)

    def screenshot(self, path: Path, out: Path, *, width: int = 1280, height: int = 2400) -> Page:
        proc = self._run(path.resolve().as_uri(), f"--screenshot={out}", f"--window-size={width},{height}",
                         "--hide-scrollbars")
        assert proc.returncode == 0, proc.stderr[-2000:]
        return Page(dom="", console=self._console(proc.stderr), stderr=proc.stderr)


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return Chromium(binary)
