"""Which malloc the process runs on: tcmalloc (or jemalloc) when the machine has one, as PyTorch's own
CPU launcher does (`python -m torch.backends.xeon.run_cpu` preloads tcmalloc by default).

Why: on CPU every tensor is a malloc. glibc's allocator hands large freed blocks back to the system
and takes them again, so every step pays page faults and zeroing, and it keeps medium-sized freed
tensors in a fragmented heap. Measured on SmolLM2-135M LoRA training (2-core CPU, 8 × 256 tokens):
tcmalloc trained 1.8–1.9× faster and its peak RSS was 0.65 GiB lower (`tunelab plan CONFIG --measure`
under each allocator; benchmarks/vs_trl.py --malloc and benchmarks/plan_memory.py --malloc compare them).

A preload must be in place before the process starts, so the `tunelab` command re-executes itself
once with LD_PRELOAD set (Linux only). `TUNELAB_MALLOC` chooses: `auto` (the default: tcmalloc, else
jemalloc, else glibc's), `tcmalloc`, `jemalloc`, or `system` (no preload). The library is a system
package (Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`); without one nothing changes. Python
code that imports tunelab in a running interpreter (a notebook) keeps the allocator it started with.
What is computed does not depend on the allocator (tests/test_allocator.py trains both ways).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from tunelab.errors import TunelabError

ENV = "TUNELAB_MALLOC"
_TRIED = "TUNELAB_MALLOC_PRELOADED"  # set on the re-executed process: never re-execute twice
CHOICES = ("auto", "tcmalloc", "jemalloc", "system")
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
INSTALL = {"tcmalloc": "apt-get install libtcmalloc-minimal4", "jemalloc": "apt-get install libjemalloc2"}


def _library_dirs() -> list[Path]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(Path(os.environ["CONDA_PREFIX"]) / "lib")
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        if multiarch:
            dirs.append(Path(root) / multiarch)
        dirs.append(Path(root))
    dirs.append(Path("/usr/lib64"))
    return dirs


def find_library(name: str) -> Path | None:
    """The shared library of allocator `name` ("tcmalloc", "jemalloc") on this machine, or None."""
    for directory in _library_dirs():
        for filename in LIBRARIES[name]:
            path = directory / filename
            if path.is_file():
                return path
    return None


def active(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The allocator this process has loaded ("tcmalloc", "jemalloc"), or None for the C library's."""
    try:
        text = maps.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for name in LIBRARIES:
        if f"lib{name}" in text:
            return name
    return None


def running() -> str:
    """The allocator this process runs on, as the planner names it: "tcmalloc", "jemalloc", "glibc", or
    "glibc-mmap" (glibc with MALLOC_MMAP_THRESHOLD_ set, which hands freed blocks back at once). For the
    `tunelab` command (re-executed onto the preload) it is what `tunelab train` runs on too."""
    return active() or ("glibc-mmap" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "glibc")


def choice(environ: dict[str, str] | None = None) -> str:
    value = (os.environ if environ is None else environ).get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise TunelabError(f"is {value!r}", field=ENV, expected=" | ".join(CHOICES))
    return value


def preload(environ: dict[str, str] | None = None) -> Path | None:
    """The library to preload for a new `tunelab` process, or None to run as it is. Refuses an allocator
    asked for by name that this machine lacks."""
    env = os.environ if environ is None else environ
    wanted = choice(env)
    if wanted == "system" or not sys.platform.startswith("linux") or env.get(_TRIED) or active() is not None:
        return None
    for name in (("tcmalloc", "jemalloc") if wanted == "auto" else (wanted,)):
        path = find_library(name)
        if path is not None:
            return path
    if wanted != "auto":
        raise TunelabError(f"{wanted} is not installed here (looked for {', '.join(LIBRARIES[wanted])})", field=ENV,
                           expected=f"the library installed ({INSTALL[wanted]}), or {ENV}=auto / system")  # fmt: skip
    return None


def started_as_tunelab(orig_argv: list[str] | None = None) -> bool:
    """Whether this interpreter was started as the `tunelab` program (its console script or `python -m
    tunelab`), not as another program that calls tunelab's CLI (pytest): only then may it re-execute."""
    argv = list(getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv)
    rest = argv[1:]
    while rest and rest[0].startswith("-") and rest[0] != "-m":  # interpreter flags (-u, -X …)
        rest = rest[2:] if rest[0] in ("-X", "-W") else rest[1:]
    return bool(rest) and (Path(rest[0]).name == "tunelab" or rest[:2] == ["-m", "tunelab"])


def reexec_with_preload(args: list[str]) -> None:
    """Replace this process by `python -m tunelab ARGS` with the chosen allocator preloaded; return
    (doing nothing) when there is none to preload, or when this process is not the `tunelab` program."""
    if not started_as_tunelab():
        return
    library = preload()
    if library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (str(library), env.get("LD_PRELOAD", "")) if p)
    env[_TRIED] = str(library)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "tunelab", *args], env)
