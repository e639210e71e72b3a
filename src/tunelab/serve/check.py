"""`tunelab check RUN`: the export contract (`tunelab.export.check`) with the served side answered by a
real `tunelab serve` app on a free 127.0.0.1 port, over HTTP, exactly as a client would see it."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.export.check import Answer, CheckResult
from tunelab.export.check import check_run as check_ways

__all__ = ["check_run"]


@contextmanager
def _server(run_dir: str | Path) -> Iterator[str]:
    import uvicorn

    from tunelab.runs.loading import load_run
    from tunelab.serve.app import create_app

    app = create_app(load_run(run_dir, trust_remote_code=False), max_tokens_cap=4096)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def check_run(run_dir: str | Path, **options: Any) -> CheckResult:
    """Adapter = merged = GGUF = served, token for token, on the run; see `tunelab.export.check`."""
    ways = options.get("ways", ("merged", "gguf", "served"))
    if "served" not in ways:
        return check_ways(run_dir, **options)
    with _server(run_dir) as url:

        def served(prompt: str, max_new_tokens: int) -> Answer:
            body = {"model": Path(run_dir).resolve().name, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                    "max_tokens": max_new_tokens}  # fmt: skip
            request = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - our own 127.0.0.1 server
                said = json.loads(response.read())
            choice = said["choices"][0]
            return Answer(None, None, choice["finish_reason"] == "stop", choice["message"]["content"],
                          prompt_count=said["usage"]["prompt_tokens"])  # fmt: skip

        return check_ways(run_dir, served=served, **options)
