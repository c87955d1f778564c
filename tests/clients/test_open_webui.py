"""Open WebUI (own venv, started once for this module) against the server: through its HTTP API
(sign-in, model list, a chat completion it forwards) and through its page in headless Chromium (a
chat typed into the page; the screenshot is kept in test-artifacts/clients/).  Marked
`clients_heavy` (it starts in 40-80 s and takes ~1.2 GB).  Profile: `vllm-mlx serve MODEL --client open-webui`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from .client_support import (ARTIFACTS, client_version, find_client, outbound_connects, sandbox_env, start_group,
                             stop_group)

OPEN_WEBUI = find_client("open-webui")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.clients_heavy,
              pytest.mark.skipif(OPEN_WEBUI is None, reason="Open WebUI is not installed "
                                                            "(scripts/install-clients.sh --heavy)")]
REPLY = "Hello from the scripted agent model."
ENV = {  # what an operator sets (see docs/clients.md), plus everything that keeps it offline
    "ENABLE_OLLAMA_API": "False", "WEBUI_AUTH": "False", "WEBUI_SECRET_KEY": "local-test-secret",
    "OFFLINE_MODE": "True", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAG_EMBEDDING_ENGINE": "openai",
    "BYPASS_EMBEDDING_AND_RETRIEVAL": "True", "ANONYMIZED_TELEMETRY": "False", "DO_NOT_TRACK": "true",
    "SCARF_NO_ANALYTICS": "true", "ENABLE_VERSION_UPDATE_CHECK": "False",
}


def open_webui_version() -> str:
    python = os.path.join(os.path.dirname(OPEN_WEBUI), "python")
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('open-webui'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


@pytest.fixture(scope="module")
def webui(agent_server, tmp_path_factory):
    server = agent_server("qwen3")
    root = tmp_path_factory.mktemp("open-webui")
    (root / "data").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = sandbox_env(root / "home", None, **ENV, OPENAI_API_BASE_URL=f"{server.base_url}/v1",
                      OPENAI_API_KEY=server.api_key, DATA_DIR=str(root / "data"))
    strace = shutil.which("strace")
    log = open(root / "open-webui.log", "wb")
    cmd = [OPEN_WEBUI, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if strace:
        cmd = [strace, "-f", "-qq", "-e", "trace=connect", "-o", str(root / "connects.strace"), *cmd]
    started = time.monotonic()
    proc = start_group(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, (root / "open-webui.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() - started < 240, "Open WebUI did not start in 240 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield {"url": url, "server": server, "startup_seconds": round(time.monotonic() - started, 1),
               "strace": root / "connects.strace" if strace else None, "log": root / "open-webui.log"}
    finally:
        stop_group(proc, timeout=30)  # Open WebUI and its workers, not only strace in front of them
        log.close()


def offline(webui) -> list[str]:
    return outbound_connects(webui["strace"]) if webui["strace"] and webui["strace"].exists() else []


def test_open_webui_api_chat(webui, record):
    server = webui["server"]
    row = record(client="Open WebUI", variant="HTTP API", version=open_webui_version(), family=server.parser,
                 startup_seconds=webui["startup_seconds"])
    started = time.monotonic()
    with server.watch() as seen:
        signin = httpx.post(f"{webui['url']}/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=30)
        assert signin.status_code == 200, signin.text
        headers = {"Authorization": f"Bearer {signin.json()['token']}"}
        models = httpx.get(f"{webui['url']}/api/models", headers=headers, timeout=60).json()
        assert server.model in [m["id"] for m in models["data"]]
        reply = httpx.post(f"{webui['url']}/api/chat/completions", headers=headers, timeout=120, json={
            "model": server.model, "stream": False,
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]})
    evidence = seen[0]
    row.update(client_seconds=round(time.monotonic() - started, 1), **evidence.facts())
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == REPLY
    assert any("You are terse." in c["context"] and "Say hello." in c["context"] for c in evidence.conversations)
    assert [r for r in evidence.requests if r["path"] == "/v1/models"], "Open WebUI never listed the models"
    assert not offline(webui), offline(webui)
    row.update(text=True, tools=False, refused_egress=[])


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/install-clients.sh --heavy)")
def test_open_webui_page_in_chromium(webui, proxy, record):
    from playwright.sync_api import sync_playwright

    server = webui["server"]
    row = record(client="Open WebUI", variant="page in headless Chromium", version=open_webui_version(),
                 family=server.parser, browser=client_version(CHROMIUM))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "open-webui-chat.png"
    off_page: list[str] = []  # requests the page made anywhere but Open WebUI
    started = time.monotonic()
    with server.watch() as seen, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--no-pings", "--disable-domain-reliability",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            f"--proxy-server={proxy.url}"])  # loopback bypasses it
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("request", lambda r: None if r.url.startswith((webui["url"], "data:", "blob:"))
                    else off_page.append(r.url))
            page.goto(f"{webui['url']}/?model={server.model}", wait_until="load", timeout=120_000)
            box = page.locator("#chat-input")
            box.wait_for(timeout=60_000)
            dialog = page.locator("div[role=dialog]")  # the "what's new" dialog comes a moment later
            for _ in range(20):
                if dialog.count() == 0 or not dialog.first.is_visible():
                    break
                page.keyboard.press("Escape")
                time.sleep(0.5)
            box.click()
            page.keyboard.type("Say hello.")
            page.keyboard.press("Enter")
            page.get_by_text(REPLY).last.wait_for(timeout=120_000)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    evidence = seen[0]
    row.update(client_seconds=round(time.monotonic() - started, 1),
               screenshot=str(shot.relative_to(ARTIFACTS.parents[1])),
               **evidence.facts())
    assert any("Say hello." in c["context"] for c in evidence.conversations), evidence.conversations
    assert shot.stat().st_size > 10_000
    # The page itself (Open WebUI's front end) asked nothing of any other host. Chromium's own
    # background requests (its vendor's update and account services) go to the proxy, which refuses
    # them; they are recorded, not failed on: they are the browser's, not the page's or the server's.
    assert not off_page, f"the page loaded something from elsewhere: {off_page}"
    assert not offline(webui), offline(webui)
    row.update(text=True, tools=False,
               refused_egress=sorted({f"Chromium: {a.split()[1].split('/')[2] if '://' in a else a.split()[1]}"
                                      for a in proxy.attempts}))
