"""The browser UI in a real Chromium (Debian's, driven by Playwright) against a real
server with the real default model: pages load cleanly, a pull shows its progress to
100%, a removal, a streamed chat stopped midway, a tool-call card, keyboard navigation
and labelled controls. Screenshots of each page land in docs/ui/ for the README."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from kronk.server.security.keys import KeyStore
from kronk.server.security.tokens import create_token
from support.file_server import FileServer
from support.live_server import LiveServer, live_server

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "ui"
PAGES = {"models": "Models", "running": "Running", "chat": "Chat", "server": "Server", "api": "API"}
TIMEOUT_MS = 60_000
expect.set_options(timeout=TIMEOUT_MS)  # the model answers on two shared CPU cores
WEATHER_TOOL = (
    '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",'
    ' "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]'
)


@pytest.fixture(scope="module")
def server(
    default_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("ui-home")
    defaults = {"n_ctx": 2048, "n_seq_max": 2}
    with live_server(
        {"qwen": default_model_path}, load_defaults=defaults, home=home, preload="qwen"
    ) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # --no-sandbox: the tests may run as root (containers), where Chromium's sandbox refuses.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    context = browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: _record(errors, m))
    tab.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    tab.console_errors = errors  # type: ignore[attr-defined]
    yield tab
    context.close()


def _record(errors: list[str], message: ConsoleMessage) -> None:
    if message.type == "error":
        errors.append(message.text)


def open_page(page: Page, name: str) -> None:
    page.get_by_role("navigation").get_by_role("link", name=PAGES[name]).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(PAGES[name])


def test_pull_shows_progress_to_100_percent_then_remove_after_confirming(
    page: Page, tiny_llama_path: Path
) -> None:
    with FileServer() as files:
        url = files.add("/ui-tiny.gguf", tiny_llama_path.read_bytes())
        page.goto("/ui/#/models")
        page.get_by_label("Model to pull").fill(url)
        page.get_by_role("button", name="Pull", exact=True).click()
        status = page.locator("#pull-status")
        expect(status.locator(".progress-text")).to_contain_text("done (100%)")
        expect(status.locator("progress")).to_have_attribute("value", "100")
    row = page.get_by_role("row", name=re.compile("^ui-tiny "))
    expect(row).to_contain_text("verified on arrival")

    page.get_by_role("button", name="Remove ui-tiny").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Remove ui-tiny")
    dialog.get_by_role("button", name="Remove").click()
    expect(row).to_have_count(0)
    assert page.console_errors == []  # type: ignore[attr-defined]


def test_chat_streams_and_stops_midway(page: Page) -> None:
    page.goto("/ui/#/chat")
    page.get_by_label("Max tokens", exact=True).first.fill("300")
    page.get_by_label("Message", exact=True).fill("Write a long story about a lighthouse keeper.")
    page.get_by_role("button", name="Send").click()
    answer = page.locator("article.message.assistant").last
    expect(answer.locator(".content")).to_contain_text(re.compile(r"\w+ \w+ \w+"))
    stop = page.get_by_role("button", name="Stop", exact=True).first
    expect(stop).to_be_enabled()
    stop.click()
    expect(answer.locator("footer")).to_contain_text("stopped")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    tokens = int(re.match(r"(\d+) tokens", answer.locator("footer").inner_text()).group(1))  # type: ignore[union-attr]
    assert 0 < tokens < 300
    # Kept in the browser: a reload shows the conversation again.
    page.reload()
    expect(page.locator("article.message.user")).to_contain_text("lighthouse keeper")
    page.screenshot(path=SHOTS / "chat.png")
    assert page.console_errors == []  # type: ignore[attr-defined]


def test_a_forced_tool_call_shows_as_a_card(page: Page) -> None:
    page.goto("/ui/#/chat")
    page.get_by_text("Tools", exact=True).click()
    page.get_by_label("Tools (JSON, OpenAI format)").fill(WEATHER_TOOL)
    page.get_by_label("Tool choice").fill("get_weather")
    page.get_by_label("Max tokens", exact=True).first.fill("48")
    page.get_by_label("Message", exact=True).fill("What is the weather in Paris?")
    page.get_by_role("button", name="Send").click()
    card = page.get_by_role("group", name="Tool call get_weather").last
    expect(card).to_be_visible()
    expect(card).to_contain_text('"city"')
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    assert page.console_errors == []  # type: ignore[attr-defined]


def test_keyboard_reaches_every_page_and_form_controls_are_labelled(page: Page) -> None:
    page.goto("/ui/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Models")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(3):  # skip link, Models, Running, then Chat
        page.keyboard.press("Tab")
    expect(page.get_by_role("navigation").get_by_role("link", name="Chat")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Chat")
    page.get_by_label("Message", exact=True).focus()
    page.keyboard.type("hi")
    expect(page.get_by_label("Message", exact=True)).to_have_value("hi")
    for name in ("chat", "models"):
        open_page(page, name)
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('main input, main select, main textarea')]
                 .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                 .map((el) => el.name || el.outerHTML)"""
        )
        assert unlabelled == [], f"{name}: controls without a label: {unlabelled}"
    expect(page.get_by_label("Search the catalog")).to_be_visible()
    expect(page.get_by_label("Model to pull")).to_be_visible()


def test_markdown_escapes_html_and_highlights_code(page: Page) -> None:
    page.goto("/ui/#/api")
    rendered = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import('/ui/js/markdown.js');
            const box = document.createElement('div');
            box.innerHTML = renderMarkdown(
                '# Title\\n<img src=x onerror="window.pwned=1">\\n' +
                '[bad](javascript:alert(1)) [good](https://example.org) **bold**\\n\\n' +
                '```python\\ndef f():\\n    return "<b>"  # note\\n```');
            return {
                images: box.querySelectorAll('img').length,
                links: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href')),
                strong: box.querySelector('strong')?.textContent,
                keywords: [...box.querySelectorAll('.tok-k')].map((s) => s.textContent),
                string: box.querySelector('.tok-s')?.textContent,
                comment: box.querySelector('.tok-c')?.textContent,
                text: box.textContent,
            };
        }"""
    )
    assert rendered["images"] == 0 and "<img src=x" in rendered["text"]
    assert rendered["links"] == ["https://example.org"]
    assert rendered["strong"] == "bold"
    assert rendered["keywords"] == ["def", "return"]
    assert rendered["string"] == '"<b>"' and rendered["comment"] == "# note"


def test_an_admin_creates_a_token_on_the_server_page(
    browser: Browser, tiny_llama_path: Path, tmp_path: Path
) -> None:
    store = KeyStore(tmp_path / "keys")
    store.create()
    admin = create_token(store, {}, duration_s=3600, admin=True)
    with live_server({"tiny": tiny_llama_path}, home=tmp_path, auth="all") as secured:
        context = browser.new_context(base_url=secured.base_url)
        context.set_default_timeout(TIMEOUT_MS)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        tab.goto("/ui/#/server")
        dialog = tab.get_by_role("dialog", name="Sign in")
        dialog.get_by_label("Token").fill(admin)
        dialog.get_by_role("button", name="Sign in").click()
        keys = tab.get_by_role("table", name="Signing keys")
        expect(keys).to_contain_text(store.keys()[0].kid)
        tab.get_by_label("Endpoints").fill("models:10/minute")
        tab.get_by_label("Duration").fill("2h")
        tab.get_by_role("button", name="Create token").click()
        shown = tab.get_by_label("New token")
        expect(shown).to_have_value(re.compile(r"^ey[\w-]+\.[\w-]+\.[\w-]+$"))
        expect(tab.locator("#token-result")).to_contain_text("models:10/minute")
        with secured.http() as http:
            headers = {"authorization": f"Bearer {shown.input_value()}"}
            assert http.get("/v1/models", headers=headers).status_code == 200
        context.close()
    assert errors == []


def test_every_page_loads_without_console_errors(page: Page) -> None:
    # Last in the file, so the Running page shows the requests the tests above made.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Models")
    expect(page.get_by_role("row", name=re.compile("^qwen "))).to_be_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name in PAGES:
        open_page(page, name)
        main = page.locator("main")
        if name == "running":
            expect(main.locator("article.card")).to_have_count(1)
        elif name == "server":
            expect(main).to_contain_text("llama.cpp commit")
        elif name == "api":
            expect(main).to_contain_text(f"{page.url.split('/ui')[0]}/v1/chat/completions")
        elif name == "chat":
            expect(page.get_by_label("Model", exact=True)).to_have_value("qwen")
            continue  # its screenshot, with an answer, is the chat test's
        page.screenshot(path=SHOTS / f"{name}.png")
    assert page.console_errors == []  # type: ignore[attr-defined]
