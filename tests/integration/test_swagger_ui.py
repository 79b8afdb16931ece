"""Swagger UI in a real browser: headless Chromium on /docs of a gunicorn gateway.

Needs Debian's ``chromium`` (/usr/bin/chromium) and Playwright's Python package; the
test skips without either (the README's test command installs both). Playwright
drives the system Chromium, so no ``playwright install`` download is needed.

``GATEWAY_UPDATE_SCREENSHOTS=1`` rewrites docs/images/swagger-ui.png from the run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ROOT, TEST_KEY, GatewayProcess
from tests.fake_ollama import FakeOllama

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test extra installs it; the browser fixture skips without it
    sync_playwright = None

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "images" / "swagger-ui.png"
UPDATE_SCREENSHOTS = os.environ.get("GATEWAY_UPDATE_SCREENSHOTS") == "1"
TIMEOUT_MS = 15_000  # any single browser step; the page loads in well under a second
OPERATIONS = [("post", "/v1/generate"), ("post", "/v1/chat"), ("post", "/v1/generate/stream"),
              ("get", "/v1/models"), ("get", "/healthz"), ("get", "/readyz")]
BODY = {"model": "llama3.2", "prompt": "hello"}
# The fake answers every prompt without a [[sim:...]] directive with its 8 tokens.
COMPLETION = "".join(f" tok{i}" for i in range(8))
IS_OPEN = re.compile(r"(^|\s)is-open(\s|$)")  # an expanded tag section's class


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Launch the system's headless Chromium once for the module; skip when it is missing."""
    if sync_playwright is None:
        pytest.skip("Playwright's Python package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def docs(browser: Browser, fake_ollama: FakeOllama, tmp_path: Path,
         gateway_server: Callable[..., GatewayProcess]) -> Iterator[Page]:
    """Open /docs of a gunicorn gateway with API keys on, in front of the fake Ollama."""
    server = gateway_server(GATEWAY_AUTH_DISABLED="0", GATEWAY_API_KEYS=f"tester:{TEST_KEY}",
                            GATEWAY_API_KEYS_FILE=str(tmp_path / "keys.json"),
                            GATEWAY_OLLAMA_URL=fake_ollama.url, GATEWAY_READ_TIMEOUT="10",
                            GATEWAY_POLL_SECONDS="0", GATEWAY_REDIS_URL="")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        response = page.goto(server.url + "/docs", wait_until="load")
        assert response is not None and response.status == 200
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Inference gateway")
        expand_tags(page)
        yield page
        assert not errors, f"JavaScript errors on /docs: {errors}"
    finally:
        context.close()


def expand_tags(page: Page) -> None:
    """Open every collapsed tag section so that its operations are rendered."""
    sections = page.locator(".opblock-tag-section")
    expect(sections.first).to_be_visible()
    for index in range(sections.count()):
        section = sections.nth(index)
        if "is-open" not in (section.get_attribute("class") or ""):
            section.locator(".opblock-tag").click()
        expect(section).to_have_class(IS_OPEN)


def operation(page: Page, method: str, path: str) -> Locator:
    """Return the operation block of ``method path`` (exactly that path)."""
    return page.locator(f".opblock.opblock-{method}").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{path}"]'))


def execute(block: Locator) -> tuple[int, str]:
    """Press Execute and return the live response's status and body text."""
    live = block.locator(".live-responses-table .response")
    clear = block.locator("button.btn-clear")
    if clear.count():  # drop the previous answer, so that it cannot be read as this one
        clear.click()
        expect(live).to_have_count(0)
    block.locator("button.execute").click()
    expect(live).to_be_visible()
    status = live.locator(".response-col_status").inner_text().strip()
    body = live.locator(".response-col_description .highlight-code pre").inner_text()
    return int(status), body


def authorize(page: Page, key: str) -> None:
    """Enter ``Bearer <key>`` through the "Authorize" dialog and close it."""
    page.locator(".scheme-container button.authorize").click()
    dialog = page.locator(".dialog-ux .modal-ux")
    expect(dialog).to_be_visible()
    dialog.locator("input[type=text], input[type=password]").first.fill(f"Bearer {key}")
    dialog.locator(".auth-btn-wrapper button.authorize").click()
    expect(dialog.get_by_role("button", name="Logout")).to_be_visible()
    dialog.locator(".auth-btn-wrapper button.btn-done").click()
    expect(dialog).to_be_hidden()


def test_docs_lists_the_routes(docs: Page) -> None:
    """/docs renders the spec: every public route is listed with its method."""
    for method, path in OPERATIONS:
        block = operation(docs, method, path)
        expect(block).to_have_count(1)
        expect(block.locator(".opblock-summary-method")).to_have_text(method.upper())
    expect(docs.locator(".scheme-container button.authorize")).to_be_visible()


def test_try_it_out_generates(docs: Page, fake_ollama: FakeOllama) -> None:
    """"Try it out" on /v1/generate: 401 without a key, the fake's completion with one."""
    block = operation(docs, "post", "/v1/generate")
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    body = block.locator("textarea.body-param__text")
    body.fill(json.dumps(BODY, indent=2))

    status, text = execute(block)
    assert status == 401, text
    assert json.loads(text)["error"]["type"] == "unauthorized", text
    assert fake_ollama.requests_seen == []

    authorize(docs, TEST_KEY)
    status, text = execute(block)
    assert status == 200, text
    answer = json.loads(text)
    assert answer["text"] == COMPLETION, answer
    assert answer["usage"]["completion_tokens"] == 8, answer
    assert [seen["prompt"] for seen in fake_ollama.requests_seen] == ["hello"]
    expect(block.locator(".curl-command")).to_contain_text(f"Bearer {TEST_KEY}")

    if UPDATE_SCREENSHOTS:
        save_screenshot(docs, block.locator(".live-responses-table"))


def save_screenshot(page: Page, last: Locator) -> None:
    """Write the page from its top down to the bottom of ``last`` to docs/images."""
    page.evaluate("window.scrollTo(0, 0)")
    box = last.bounding_box()
    assert box is not None
    width = page.viewport_size["width"] if page.viewport_size else 1280
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True, animations="disabled",
                    clip={"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 16})
