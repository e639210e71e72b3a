"""`tunelab ui` driven in headless Chromium (Playwright, with the system's Chromium; skipped without it):
a bad data file shows its FILE:LINE errors in the form and starts nothing; a tiny run started from the
form progresses and completes; its report opens; chat streams from it and its base; arena votes move
the leaderboard; the export is preference data. Zero console errors, and every request the browser
makes goes to 127.0.0.1. The screenshots in docs/ui/ (shown in the README) are taken here: with
TUNELAB_SCREENSHOTS=1 (`make screenshots`) they are written there; otherwise into the test's temporary
folder, so a test run leaves the checkout as it found it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from reporting.browser import find_chromium

DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"
PROMPT = "What colour is the sun number 3?"


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=binary, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])  # fmt: skip
        yield b
        b.close()


class Watched:
    """A page whose console errors, uncaught errors and requests are recorded."""

    def __init__(self, browser, url: str, shots: Path) -> None:
        self.shots = shots
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("response", lambda r: self.errors.append(f"{r.status} from {r.url}") if r.status >= 400 else None)
        self.url = url

    def open(self, fragment: str) -> None:
        self.page.goto(f"{self.url}/#{fragment}")
        self.page.wait_for_selector("body[data-ready='1']")

    def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def until(page, expression: str, timeout: float = 60.0) -> None:
    """Poll EXPRESSION in the page until it is true (Playwright's wait_for_function evaluates strings,
    which the page's Content-Security-Policy rightly forbids)."""
    import time

    deadline = time.time() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.time() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(100)


def fill_form(page, **fields) -> None:
    for key, value in fields.items():
        selector = f"#f-{key}"
        if page.locator(selector).evaluate("e => e.tagName") == "SELECT":
            page.select_option(selector, str(value))
        else:
            page.fill(selector, str(value))


def test_the_app_end_to_end(browser, serve_ui, tmp_path, tiny_model, qa_file):
    runs = tmp_path / "runs"
    server = serve_ui(runs, seed=0)
    ui = Watched(browser, server.url, DOCS_SHOTS if os.environ.get("TUNELAB_SCREENSHOTS") == "1" else tmp_path / "shots")
    page = ui.page

    # 1. a bad data file: its FILE:LINE errors in the form, and nothing starts
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"\n{"question": "q3", "answers": "a3"}\n')
    ui.open("new")
    fill_form(page, name="tiny-ui", model=tiny_model, task="sft", method="lora", data=bad)
    page.click("#start-btn")
    page.wait_for_selector("#problems li.error")
    problems = page.locator("#problems li.error").all_inner_texts()
    assert any(f"{bad}:2: invalid JSON" in p for p in problems), problems
    assert any(f"{bad}:3" in p and "answer" in p for p in problems), problems
    assert "not started" in page.inner_text("#form-status")
    assert not (runs / "tiny-ui").exists() and json.loads(page.evaluate("fetch('/api/runs').then(r => r.text())")) == []

    # 2. the good file, uploaded through the form: checked, previewed, then started
    page.set_input_files("#f-upload", str(qa_file))
    until(page, "document.querySelector('#f-data').value.includes('uploads')")
    page.wait_for_selector("#problems li.ok")
    assert page.locator("#preview .trained").count() >= 1 and page.locator("#histogram rect").count() >= 1
    fill_form(page, max_steps=150, batch_size=4, lr=0.005, max_length=64, eval_steps=50, max_new_tokens=8)
    page.click("#check-btn")
    until(page, "document.querySelector('#yaml').textContent.includes('max_steps: 150')")
    assert "Memory estimate" in page.inner_text("#plan")
    ui.shot("new-run")
    page.evaluate("""() => { window.seen = []; const o = new MutationObserver(() =>
        window.seen.push(document.querySelector('#run-progress').textContent));
        o.observe(document.querySelector('#run-progress'), {childList: true, characterData: true, subtree: true}); }""")
    page.click("#start-btn")
    page.wait_for_url("**/#run/tiny-ui")

    # 3. it progresses and completes; the report opens in the page
    page.wait_for_selector("#run-state.complete", timeout=180_000)
    seen = page.evaluate("window.seen")
    assert any(s.startswith("step ") and "/150" in s and not s.startswith("step 150/") for s in seen) or \
        any("evaluating" in s for s in seen), seen  # fmt: skip
    assert page.inner_text("#run-progress") == "done"
    assert page.locator("#loss-chart path").count() >= 2  # training and validation loss
    assert page.locator("#lr-chart path").count() == 1
    report = page.frame_locator("#report-frame")
    report.locator("h1").first.wait_for()
    assert "tiny-ui" in report.locator("body").inner_text()
    ui.shot("run")
    ui.open("runs")
    page.wait_for_selector("tr[data-run='tiny-ui'] .badge.complete")
    ui.shot("runs")

    # 4. chat with the run and its base, side by side, streamed
    ui.open("chat")
    page.wait_for_selector("#chat-left option[value='tiny-ui']", state="attached")
    page.select_option("#chat-left", "tiny-ui")
    page.select_option("#chat-right", "tiny-ui:base")
    page.fill("#chat-text", PROMPT)
    page.click("#chat-send")
    page.wait_for_selector("#chat-log-left[data-done='1']", timeout=60_000)
    page.wait_for_selector("#chat-log-right[data-done='1']", timeout=60_000)
    left = page.locator("#chat-log-left .msg.assistant").inner_text()
    assert left.strip() and page.locator("#chat-log-left .msg.user").inner_text() == PROMPT
    ui.shot("chat")

    # 5. arena: blind matches, votes, a leaderboard that changes
    ui.open("arena")
    page.wait_for_selector("#arena-contestants input[value='tiny-ui']")
    page.fill("#arena-who", "tester")
    boards = []
    for vote in ("a", "b", "a", "tie"):
        page.click("#arena-new")
        page.wait_for_selector("#arena-match:not([hidden]) .votes button:not([disabled])", timeout=60_000)
        assert page.inner_text("#arena-name-a") == ""  # blind until the vote
        page.click(f".votes button[data-vote='{vote}']")
        until(page, "document.querySelector('#arena-name-a').textContent.length > 0")
        until(page, f"document.querySelector('#arena-votes').textContent.startsWith('{len(boards) + 1} vote')")
        boards.append(page.inner_text("#leaderboard tbody"))
    assert len(set(boards)) > 1, boards  # the ratings moved with the votes
    assert page.locator("#leaderboard tbody tr").count() == 2
    ui.shot("arena")
    votes = [json.loads(line) for line in (runs / "arena_votes.jsonl").read_text().splitlines()]
    assert [v["vote"] for v in votes] == ["a", "b", "a", "tie"] and {v["who"] for v in votes} == {"tester"}
    assert all({v["a"]["model"], v["b"]["model"]} == {"tiny-ui", "tiny-ui:base"} for v in votes)

    # 6. compare the run with its base
    ui.open("compare")
    page.wait_for_selector("#compare-runs input[value='tiny-ui']")
    page.click("#compare-btn")
    page.wait_for_selector("#compare-table:not([hidden]) tbody tr", timeout=120_000)
    assert page.locator("#compare-table tbody tr").count() >= 2
    page.frame_locator("#compare-frame").locator("h1").first.wait_for()
    ui.shot("compare")

    assert not ui.errors, ui.errors
    hosts = {urlparse(u).netloc for u in ui.requests if not u.startswith(("data:", "blob:", "about:"))}
    assert hosts == {f"127.0.0.1:{server.port}"}, hosts

    # 7. the export is preference rows the data doctor accepts for dpo
    from tunelab.data.doctor import check_file
    from tunelab.stages.registry import STAGES

    decided = [v for v in votes if v["vote"] in ("a", "b") and v["a"]["output"].strip() != v["b"]["output"].strip()
               and v["a"]["output"].strip() and v["b"]["output"].strip()]  # fmt: skip
    response = page.request.get(f"{server.url}/api/arena/export")
    if not decided:  # every decided vote had a blank or identical answer: nothing to prefer, and it says so
        assert response.status == 400 and "no decided votes" in response.text()
    else:
        assert response.ok
        export = tmp_path / "prefs.jsonl"
        export.write_bytes(response.body())
        assert len(export.read_text().splitlines()) == len(decided)
        report = check_file(export, task="dpo", task_shapes=STAGES["dpo"].shapes)
        assert report.ok, [str(p) for p in report.problems]
    page.close()


def test_the_api_key_guards_every_page(browser, serve_ui, tmp_path):
    server = serve_ui(tmp_path / "runs", api_key="sesame")
    ui = Watched(browser, server.url, tmp_path / "shots")
    response = ui.page.goto(f"{server.url}/")
    assert response.status == 401 and "?key=" in ui.page.inner_text("body")
    for _ in range(50):  # the browser's console echo of that 401 can come after the response: wait for it
        if any("Failed to load resource" in e for e in ui.errors):
            break
        ui.page.wait_for_timeout(100)
    ui.errors.clear()  # that refusal was the point
    ui.page.goto(f"{server.url}/?key=sesame")  # sets the cookie, and takes the key out of the address
    ui.page.wait_for_selector("body[data-ready='1']")
    # a second echo of the refusal (the keyless page's own requests) can still arrive late; a 401 on
    # the keyed page would also show as its "401 from URL" response entry, which is kept
    late_echoes = [e for e in ui.errors if e.startswith("Failed to load resource") and "401" in e]
    assert "key=" not in ui.page.url and not [e for e in ui.errors if e not in late_echoes]
    ui.page.close()

