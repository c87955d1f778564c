"""The web page at / in headless Chromium: status, model name, metrics, a streamed chat reply, with --api-key."""

from __future__ import annotations

import os
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
