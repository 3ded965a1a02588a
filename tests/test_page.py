"""The chat page in a real headless Chromium against the real server."""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.sync_api import Page, expect, sync_playwright

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, idle_server):
    context = browser.new_context(locale="ja-JP", viewport={"width": 1100, "height": 800})
    # Block everything but our server: the page must work with no network at all.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(idle_server.url)
                  else route.abort())
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(idle_server.url + "/")
    expect(pg.locator("#model-meta")).to_contain_text("4,096")
    yield pg
    context.close()
    assert not errors, errors


def set_max_tokens(page: Page, n: int) -> None:
    page.click("#settings-open")
    page.fill("#max-tokens", str(n))
    page.click("#settings button[value=close]")


def long_generations(page: Page) -> None:
    """Keep the random-weight model from ending its turn, so Stop has something to stop."""
    def route(r):
        body = json.loads(r.request.post_data)
        body["logit_bias"] = {"4": -100}
        r.continue_(post_data=json.dumps(body))
    page.route("**/v1/chat/completions", route)


def test_japanese_ui_streams_stops_and_survives_reload(page, idle_server):
    expect(page.locator("#send")).to_have_text("送信")
    expect(page.locator("#model-name")).to_have_text("tiny-test-llama")
    long_generations(page)
    set_max_tokens(page, 3800)

    page.fill("#input", "日本語で自己紹介してください")
    page.press("#input", "Enter")
    expect(page.locator(".msg.user")).to_have_text("日本語で自己紹介してください")
    answer = page.locator(".msg.assistant .body")
    expect(answer).not_to_be_empty()
    expect(page.locator("#stop")).to_be_visible()
    assert idle_server.engine.busy, "the server should still be generating"

    page.click("#stop")
    expect(page.locator(".msg.assistant .tag").first).to_have_text("停止しました")
    idle_server.wait_idle(timeout=2)
    assert idle_server.engine.last_stats.finish == "cancelled"
    assert idle_server.engine.last_stats.completion_tokens < 3800
    partial = answer.inner_text()

    page.reload()
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator("#conversations li.active")).to_contain_text("日本語で自己紹介")
    expect(page.locator(".msg.user")).to_have_text("日本語で自己紹介してください")
    assert page.locator(".msg.assistant .body").inner_text() == partial


def test_enter_during_ime_composition_does_not_send(page):
    page.fill("#input", "にほんご")
    # What a Japanese IME sends when Enter confirms a conversion.
    page.dispatch_event("#input", "keydown", {"key": "Enter", "code": "Enter", "isComposing": True})
    expect(page.locator("#input")).to_have_value("にほんご")
    assert page.locator(".msg").count() == 0
    page.press("#input", "Shift+Enter")
    page.keyboard.type("二行目")
    expect(page.locator("#input")).to_have_value("にほんご\n二行目")
    assert page.locator(".msg").count() == 0
    page.press("#input", "Enter")
    expect(page.locator(".msg.user")).to_have_text("にほんご\n二行目")


def test_regenerate_replaces_the_last_answer(page):
    set_max_tokens(page, 24)  # a short answer: the random model may otherwise talk for 1024 tokens
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    expect(page.locator(".msg.assistant .regenerate")).to_be_visible()
    page.click(".msg.assistant .regenerate")
    expect(page.locator(".msg.assistant .regenerate")).to_be_visible()
    assert page.locator(".msg.assistant").count() == 1
    assert page.locator(".msg.user").count() == 1


def test_markdown_is_sanitised_and_code_highlighted(page):
    evil = ("**bold** <img src=x onerror=\"window.pwned=1\"> <script>window.pwned=2</script>\n\n"
            "```python\ndef f():\n    return 1\n```")
    conv = {"id": "c1", "title": "md", "updated": 1,
            "messages": [{"role": "user", "content": "<b>not html</b>"}, {"role": "assistant", "content": evil}]}
    page.evaluate("""c => { localStorage.setItem('furoshiki.v1.conversations', JSON.stringify([c]));
                            localStorage.setItem('furoshiki.v1.current', JSON.stringify('c1')); }""", conv)
    page.reload()
    body = page.locator(".msg.assistant .markdown")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("pre code.hljs .hljs-keyword").first).to_have_text("def")
    assert body.locator("img[onerror], script").count() == 0
    assert page.evaluate("window.pwned") is None
    expect(page.locator(".msg.user")).to_have_text("<b>not html</b>")


def test_language_and_theme_switch_and_persist(page):
    page.click("#lang-toggle")
    expect(page.locator("#send")).to_have_text("Send")
    page.click("#theme-toggle")
    theme = page.evaluate("document.documentElement.dataset.theme")
    page.reload()
    expect(page.locator("#send")).to_have_text("Send")
    assert page.evaluate("document.documentElement.dataset.theme") == theme


def test_phone_layout(browser, idle_server):
    context = browser.new_context(locale="en-US", viewport={"width": 390, "height": 780}, is_mobile=True,
                                  has_touch=True)
    pg = context.new_page()
    pg.goto(idle_server.url + "/")
    expect(pg.locator("#sidebar-toggle")).to_be_visible()
    expect(pg.locator("#new-chat")).not_to_be_in_viewport()
    pg.click("#sidebar-toggle")
    expect(pg.locator("#new-chat")).to_be_in_viewport()
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"page scrolls sideways on a phone ({width}px)"
    context.close()
