"""The web page at / in headless Chromium: status, model name, metrics, a streamed chat reply, with --api-key."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("VLLM_MLX_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
KEY = "page-key"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Chromium at /usr/bin/chromium")]


@pytest.fixture(scope="module")
def page_server(start_server, scripted_qwen3):
    return start_server(scripted_qwen3, "--trust-remote-code", "--served-model-name", "scripted-page",
                        "--api-key", KEY, "--profile", "text-default")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def test_page_shows_status_and_streams_a_chat_reply(page_server, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(page_server.base_url + "/")
    expect(page.locator("#status")).to_have_text("ok", timeout=15_000)
    # without the key /health tells liveness only, and the protected panels say so
    expect(page.locator("#metrics-note")).to_contain_text("API key")
    expect(page.locator("#model-name")).to_have_text("—")
    page.fill("#api-key", KEY)
    page.locator("#api-key").dispatch_event("change")
    expect(page.locator("#model-name")).to_have_text("scripted-page", timeout=15_000)
    expect(page.locator("#m-state")).not_to_have_text("—")
    expect(page.locator("#c-context")).to_contain_text("tokens", timeout=10_000)
    expect(page.locator("#c-tools")).to_have_text("hermes")
    # chat: the reply arrives as a stream of deltas, each one a separate update of the page
    page.evaluate("""() => { window.updates = 0; new MutationObserver((m) => { window.updates += m.length; })
        .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }""")
    page.fill("#prompt", "Say hi please")
    page.click("#send")
    reply = page.locator(".msg.assistant .content").last
    expect(reply).to_have_text("Hello from the scripted model. The answer is 42.", timeout=60_000)
    assert page.evaluate("window.updates") > 8  # many deltas, not one final write
    expect(page.locator(".msg.assistant.done")).to_have_count(1)
    expect(page.locator(".msg.assistant .meta").last).to_contain_text("finish: stop")
    expect(page.locator(".msg.assistant .meta").last).to_contain_text("tokens")
    # the key survives a reload (localStorage), and the metrics panel fills in after traffic
    page.reload()
    expect(page.locator("#api-key")).to_have_value(KEY)
    expect(page.locator("#m-requests")).not_to_have_text("—", timeout=10_000)
    expect(page.locator("#m-ttft")).to_contain_text("ms")
    # another message after the reload
    page.fill("#prompt", "What is the weather?")
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.assistant .content").last).to_have_text(
        "It is sunny in Paris, 22 °C. Have a nice day!", timeout=60_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "operator-page.png"), full_page=True)
    assert (ARTIFACTS / "operator-page.png").stat().st_size > 10_000
    page.close()


def test_page_reports_a_wrong_key(page_server, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(page_server.base_url + "/ui")
    page.evaluate("localStorage.setItem('vllm-mlx-api-key', 'wrong')")
    page.reload()
    page.fill("#prompt", "hello")
    page.click("#send")
    expect(page.locator(".msg.error")).to_contain_text("invalid or missing API key", timeout=15_000)
    page.close()




@pytest.fixture(scope="module")
def long_server(start_server, models_dir):
    """A model that never ends on its own (visible text, no EOS), so a request runs until cancelled."""
    from vllm_mlx_testing import build_tiny_model

    import json

    model = build_tiny_model(models_dir / "page-visible-qwen3", "qwen3", init_scale=8.0, tie_word_embeddings=False,
                             visible_text=True)
    # room for 120,000 tokens (a minute or more here, speculating on its repeating text included): a busy
    # browser clicks Stop while the reply still runs
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}))
    return start_server(model, "--served-model-name", "endless", "--api-key", KEY)


def test_page_lists_running_requests_and_cancels_one(long_server, browser):
    """A long generation shows in the running-requests table (id, tokens/s, cache hit rate); its Cancel
    button ends it, and its client gets a normal end: finish_reason "cancelled", then [DONE]."""
    import json
    import threading
    import time

    import httpx
    from playwright.sync_api import expect

    seen: dict = {"lines": []}

    def generate():
        with httpx.stream("POST", f"{long_server.base_url}/v1/chat/completions", timeout=120,
                          headers={"authorization": f"Bearer {KEY}"},
                          json={"model": "endless", "stream": True, "max_tokens": 120000,
                                "messages": [{"role": "user", "content": "Tell me everything, at length."}]}) as r:
            seen["id"] = r.headers["x-request-id"]
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen["lines"].append(line[6:])

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(long_server.base_url + "/")
    page.evaluate(f"localStorage.setItem('vllm-mlx-api-key', '{KEY}')")
    page.reload()
    expect(page.locator("#requests-note")).to_have_text("none running", timeout=15_000)
    worker = threading.Thread(target=generate)
    worker.start()
    row = page.locator("#requests tr")
    expect(row).to_have_count(1, timeout=30_000)
    expect(row.locator(".rid")).to_have_text(re.compile(r"^chatcmpl-"))
    for _ in range(100):  # the row can show before the response headers reach the client thread
        if "id" in seen:
            break
        time.sleep(0.05)
    assert row.get_attribute("data-id") == row.locator(".rid").text_content() == seen["id"]
    expect(row.locator(".api")).to_have_text("chat.completions")
    expect(row.locator(".tps")).not_to_have_text("—", timeout=15_000)
    expect(row.locator(".hit")).to_have_text(re.compile(r"^\d+%$"))
    page.evaluate("pollHealth()")  # the engine panel refreshes every 2 s: now, for the screenshot
    expect(page.locator("#m-running")).to_have_text("1", timeout=5_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # docs/images/status-page-running-requests.png is a copy
    page.screenshot(path=str(ARTIFACTS / "status-page-running-requests.png"))
    row.locator("button.cancel").click()
    expect(row).to_have_count(0, timeout=30_000)
    worker.join(60)
    assert seen["lines"][-1] == "[DONE]"
    finals = [json.loads(x)["choices"][0]["finish_reason"] for x in seen["lines"][:-1]
              if json.loads(x)["choices"] and json.loads(x)["choices"][0]["finish_reason"]]
    assert finals == ["cancelled"]
    expect(page.locator("#requests-note")).to_contain_text("1 cancelled since start", timeout=10_000)
    page.close()


def test_page_stop_button_cancels_on_the_server(long_server, browser):
    """The playground's Stop cancels the request by its id: the reply stays, ended "finish: cancelled".
    The page stays responsive through a long, fast stream (it used to rewrite the whole reply and lay
    the page out at every delta: a few seconds in, Stop could not be clicked for minutes)."""
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(long_server.base_url + "/ui")
    page.evaluate(f"localStorage.setItem('vllm-mlx-api-key', '{KEY}')")
    page.reload()
    page.fill("#max-tokens", "120000")
    page.fill("#prompt", "Tell me a long story")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant .content').textContent.length > 8000",
                           timeout=60_000)
    page.click("#stop", timeout=10_000)
    expect(page.locator(".msg.assistant.done")).to_have_count(1, timeout=30_000)
    expect(page.locator(".msg.assistant .meta").last).to_contain_text("finish: cancelled")
    page.close()
