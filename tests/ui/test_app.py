"""The UI's HTTP surface without a browser: the page's security headers, files only from its own
folder, clear 400s for bad requests, the API key, and the arena's commands (`tunelab arena …`)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from conftest import run_cli
from tunelab.evaluation import arena
from tunelab.ui.app import create_app


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(tmp_path / "runs")) as c:
        yield c


def test_the_page_loads_only_its_own_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    for path in ("/static/app.js", "/static/app.css", "/favicon.ico"):
        assert client.get(path).status_code == 200
    assert "http://" not in client.get("/static/app.js").text.replace("http://www.w3.org/2000/svg", "")
    for sneaky in ("/static/..%2fapp.py", "/static/.hidden", "/compare/..%2f..%2fetc/report"):
        assert client.get(sneaky).status_code == 404


def test_bad_requests_get_one_clear_message(client):
    r = client.post("/api/arena/vote", json={"id": "nope", "vote": "a"})
    assert r.status_code == 400 and "no such match" in r.json()["error"]
    r = client.post("/api/chat", json={"model": "ghost", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "no run named 'ghost'" in r.json()["error"]
    r = client.post("/api/arena/match", json={"contestants": ["only-one"]})
    assert r.status_code == 400 and "at least two" in r.json()["error"]
    r = client.post("/api/check", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert client.get("/api/runs/../../etc").status_code == 404
    assert client.get("/api/runs/ghost").status_code == 400
    assert client.get("/api/arena/leaderboard").json() == {"votes": 0, "rows": []}
    r = client.get("/api/arena/export")
    assert r.status_code == 400 and "no decided votes" in r.json()["error"]


def test_api_key_by_header_or_cookie(tmp_path):
    with TestClient(create_app(tmp_path / "runs", api_key="sesame")) as c:
        assert c.get("/api/runs").status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer sesame"}).status_code == 200
        r = c.get("/?key=sesame", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/"
        assert c.get("/api/runs").status_code == 200  # the cookie it set


def test_arena_commands(tmp_path, capsys):
    votes = tmp_path / "runs" / arena.VOTES_FILE
    for i, v in enumerate(["a", "a", "b", "tie", "a"]):
        arena.record_vote(votes, arena.make_vote(f"p{i}", ("x", f"x{i}"), ("y", f"y{i}"), v))
    code, out, _ = run_cli(["arena", "leaderboard", "--runs", str(tmp_path / "runs"), "--resamples", "50"], capsys)
    assert code == 0 and "5 votes" in out and out.index(" x ") < out.index(" y ")
    code, out, _ = run_cli(["arena", "export", str(tmp_path / "prefs.jsonl"), "--votes", str(votes)], capsys)
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert code == 0 and len(rows) == 4 and rows[2] == {**rows[2], "chosen": "y2", "rejected": "x2"}
    with votes.open("a") as f:
        f.write('{"prompt": "p", "a": {"model": "x", "output": "1"}, "b": {"model": "y", "output": "2"}, "vote": "A"}\n')
    code, out, err = run_cli(["arena", "export", str(tmp_path / "again.jsonl"), "--votes", str(votes)], capsys)
    assert code == 2 and f"{votes}:6: vote: unknown vote 'A'" in err and "Traceback" not in err
    code, _, err = run_cli(["arena", "leaderboard", "--runs", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no vote file" in err
