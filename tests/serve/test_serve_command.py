"""`tunelab serve` itself: a run directory from someone else cannot make it run the code shipped with its
model, and --max-tokens-cap reaches the server."""

import os
import shutil
import subprocess

import pytest
import yaml
from fastapi.testclient import TestClient

from inference.runs import cli_command


@pytest.fixture(scope="module")
def asks_for_remote_code(tiny_run, tmp_path_factory):
    """A copy of the tiny run whose config.yaml says `model.trust_remote_code: true`."""
    run = tmp_path_factory.mktemp("shared") / "someone-elses-run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"] = {"name": cfg["model"], "trust_remote_code": True} if isinstance(cfg["model"], str) else {
        **cfg["model"], "trust_remote_code": True}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


@pytest.fixture()
def no_listening(monkeypatch):
    """`serve` up to the point where it would listen: the app it built, and how the model was loaded."""
    import uvicorn

    import tunelab.models.loading as loading

    seen = {"apps": [], "trust_remote_code": []}
    original = loading.load_model

    def load_model(path, kind, **kwargs):
        seen["trust_remote_code"].append(kwargs.get("trust_remote_code"))
        return original(path, kind, **kwargs)

    monkeypatch.setattr(loading, "load_model", load_model)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen["apps"].append(app))
    return seen


def serve(run, **options):
    from tunelab.commands import use

    args = dict(host="127.0.0.1", port=0, api_key=None, model_name=None, max_batch=4, max_tokens=8,
                max_tokens_cap=1024, trust_remote_code=False, threads=None)
    use.serve(run, **(args | options))


def test_the_cli_refuses_such_a_run_in_one_line_without_the_flag(asks_for_remote_code):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([*cli_command(), "serve", str(asks_for_remote_code), "--port", "0"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "model.trust_remote_code is true" in lines[0] and "pass --trust-remote-code if you trust this run" in lines[0]
    assert str(asks_for_remote_code / "config.yaml") in lines[0]


def test_remote_code_is_off_unless_the_flag_is_given(asks_for_remote_code, tiny_run, no_listening):
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="pass --trust-remote-code"):
        serve(asks_for_remote_code)
    assert no_listening["trust_remote_code"] == []  # refused before anything was loaded

    serve(tiny_run, trust_remote_code=True)  # the flag only allows what the run asks for: nothing here
    serve(asks_for_remote_code, trust_remote_code=True, max_tokens_cap=20)
    assert no_listening["trust_remote_code"] == [False, True]

    with TestClient(no_listening["apps"][-1]) as client:  # --max-tokens-cap reached the app
        for max_tokens, status in ((21, 400), (20, 200)):
            r = client.post("/v1/completions", json={"prompt": "The sky", "max_tokens": max_tokens})
            assert r.status_code == status, r.text
        assert r.json()["usage"]["completion_tokens"] <= 20
        refused = client.post("/v1/completions", json={"prompt": "The sky", "max_tokens": 21}).json()["error"]
        assert refused["param"] == "max_tokens" and "at most 20" in refused["message"]
