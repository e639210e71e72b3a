"""Fixtures for the UI tests: the app served on 127.0.0.1 in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest


class Served:
    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started, "the UI server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def serve_ui():
    """serve_ui(runs_dir, **options) → a running server (stopped at the end of the test)."""
    from tunelab.ui.app import create_app

    started: list[Served] = []

    def start(runs_dir: Path, **options) -> Served:
        served = Served(create_app(runs_dir, **options), free_port()).__enter__()
        started.append(served)
        return served

    yield start
    for served in started:
        served.__exit__(None, None, None)
        served.app.state.workspace.close()
