"""The chat page (``clara-lite serve --ui``): a real headless Chromium (Debian's ``chromium``, driven by
Playwright) opens /ui on a live server, asks a question and sees the answer ``ClaraIndex.ask`` gives and the
file it came from; a follow-up keeps the conversation; with an API key the page wants the key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_index import QUESTIONS, corpus, served_model
from test_index_serving import _free_port

from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.openai_api import conversation
from clara_lite.serve.ui import SHARE_WARNING, format_sources, launch_inline

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "ui-test-key-0123456789abcdef"

pytest.importorskip("gradio", reason="the chat page needs gradio (pip install 'clara-lite[ui]')")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _documents(folder: Path) -> Path:
    folder.mkdir()
    for i, text in enumerate(corpus(6)):
        (folder / f"note-{i}.txt").write_text(text, encoding="utf-8")
    return folder


def _serve(tmp_path: Path, *extra: str):
    model = served_model()
    model.save_pretrained(tmp_path / "model")
    index = ClaraIndex.build(tmp_path / "kb", model, _documents(tmp_path / "docs"), keys=(), progress=False)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "clara_lite.cli", "serve", "--ui", "--model", str(tmp_path / "model"), "--index",
         str(tmp_path / "kb"), "--port", str(port), "--max-new-tokens", "8", *extra], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return index, server, f"http://127.0.0.1:{port}"


def _wait(server, base: str, headers=None) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
        try:
            if httpx.get(f"{base}/health", headers=headers, timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)


def _stop(server) -> str:
    server.terminate()
    return server.communicate(timeout=60)[0]


def _normal(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install -y chromium (Debian's package)")
def test_the_chat_page_in_chromium_streams_the_index_answer_with_its_source_and_keeps_the_conversation(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (drives the browser)")
    index, server, base = _serve(tmp_path)
    try:
        _wait(server, base)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{base}/ui", wait_until="networkidle", timeout=120_000)
            question = page.locator("#clara-question textarea")
            sources = page.locator("#clara-sources")
            answers = page.locator("#clara-chat [data-testid='bot']")

            page.evaluate("""() => {  // every text the answer shows, as it changes: a streamed answer grows
                window.seen = [];
                new MutationObserver(() => {
                    const bots = document.querySelectorAll("#clara-chat [data-testid='bot']");
                    const text = bots.length ? bots[bots.length - 1].innerText.trim() : "";
                    if (text && text !== window.seen[window.seen.length - 1]) window.seen.push(text);
                }).observe(document.querySelector("#clara-chat"), {subtree: true, childList: true, characterData: true});
            }""")
            question.fill(QUESTIONS[0])
            question.press("Enter")
            page.wait_for_function("() => document.querySelector('#clara-sources').innerText.includes('note-')",
                                   timeout=120_000)
            expected = index.ask(QUESTIONS[0], max_new_tokens=8)
            assert _normal(answers.last.inner_text()) == _normal(expected.text)
            seen = [_normal(t) for t in page.evaluate("window.seen")]
            assert len(seen) >= 2 and seen[-1] == _normal(expected.text), seen  # it grew token by token
            assert all(_normal(expected.text).startswith(t.rstrip("�")) for t in seen[:-1]), seen
            shown = sources.inner_text()
            assert expected.hits[0].chunk.source in shown  # the file name
            assert _normal(expected.hits[0].chunk.text)[:30] in _normal(shown)  # the passage
            page.screenshot(path=str(tmp_path / "chat-page.png"), full_page=True)

            question.fill(QUESTIONS[1])  # a follow-up: the first question is folded into the retrieval query
            question.press("Enter")
            page.wait_for_function("n => document.querySelectorAll(\"#clara-chat [data-testid='bot']\").length == n"
                                   " && !document.querySelector('#clara-sources').innerText.includes('retrieving')",
                                   arg=2, timeout=120_000)
            page.wait_for_timeout(500)
            _, query = conversation([{"role": "user", "content": QUESTIONS[0]},
                                     {"role": "assistant", "content": expected.text},
                                     {"role": "user", "content": QUESTIONS[1]}])
            follow = index.ask(QUESTIONS[1], max_new_tokens=8, query=query)
            assert _normal(answers.last.inner_text()) == _normal(follow.text)
            assert _normal(format_sources(follow.hits).split("\n")[2].split("`")[1]) in sources.inner_text()
            page.screenshot(path=str(tmp_path / "chat-page-follow-up.png"), full_page=True)
            browser.close()
        assert (tmp_path / "chat-page.png").stat().st_size > 1000
    finally:
        output = _stop(server)
    assert "chat page: http://127.0.0.1" in output


def test_with_an_api_key_the_chat_page_wants_the_key_and_the_api_still_wants_the_bearer(tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    _, server, base = _serve(tmp_path, "--api-key-file", str(tmp_path / "key"))
    try:
        _wait(server, base, {"Authorization": f"Bearer {KEY}"})
        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.get("/health").status_code == 401
            assert http.get("/ui/config").status_code == 401  # the page's data needs the login
            assert http.get("/ui/gradio_api/info").status_code == 401
            asked = http.post("/ui/gradio_api/queue/join", json={"data": ["Where does Ada live?", []], "fn_index": 0,
                                                                 "session_hash": "x"})
            assert asked.status_code == 401  # no answer without the key
            assert http.post("/ui/login", data={"username": "me", "password": KEY[:-1]}).status_code == 400
            assert http.post("/ui/login", data={"username": "me", "password": KEY}).status_code == 200
            assert http.get("/ui/config").status_code == 200
            assert http.get("/health").status_code == 401  # the page's cookie opens the page only
    finally:
        output = _stop(server)
    assert KEY not in output


def test_the_notebook_page_launches_locally_with_no_public_link_unless_asked(tmp_path, capsys):
    index = ClaraIndex.build(tmp_path / "kb", served_model(), _documents(tmp_path / "docs"), keys=(), progress=False)
    page = launch_inline(index, max_new_tokens=4)
    try:
        assert page.share_url is None and page.local_url.startswith("http://127.0.0.1:")
        assert httpx.get(page.local_url, timeout=30).status_code == 200
        config = httpx.get(page.local_url.rstrip("/") + "/config", timeout=30).json()
        assert {"clara-chat", "clara-question", "clara-sources"} <= {
            c.get("props", {}).get("elem_id") for c in config["components"]}
    finally:
        page.close()
    assert SHARE_WARNING not in capsys.readouterr().out  # printed only with share=True
