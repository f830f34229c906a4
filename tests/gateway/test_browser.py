"""The web UI in headless Chromium (Playwright driving the system's /usr/bin/chromium).

Upload → results with thumbnails and IDs → open one → more like this → filter; metadata
shown as text, never markup; failures shown readably; phone width without sideways scroll.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import REPO_ROOT
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
# Waits for the UI; a search embeds on 2 CPU cores, so they are generous.
UI_TIMEOUT_MS = 60_000
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, stack: Stack, indexed: list[Indexed]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    yield page
    context.close()
    # Expected failures (a service cut on purpose) log as failed requests; nothing else may.
    unexpected = [p for p in problems if "503" not in p and "Failed to load resource" not in p]
    assert not unexpected, unexpected


def result_ids(page: Page) -> list[int]:
    return [
        int(x)
        for x in page.locator("#results a.result").evaluate_all("els => els.map(e => e.dataset.imageId)")
    ]


def search_for(page: Page, path: Path | None = None) -> None:
    if path is not None:
        page.set_input_files("#query-file", str(path))
    page.click("#search-button")
    expect(page.locator("#status")).to_have_text("", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#results a.result").first).to_be_visible()


def test_upload_open_more_like_this_and_filter(page: Page, stack: Stack, indexed: list[Indexed]) -> None:
    response = page.goto(stack.gateway)
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#model-warning")).to_be_visible()
    expect(page.locator("#model-warning")).to_contain_text("Random weights")

    query = indexed[0]
    page.set_input_files("#query-file", str(query.path))
    expect(page.locator("#query-preview-image")).to_be_visible()
    page.fill("#k", "12")
    search_for(page)
    expect(page.locator("#results a.result")).to_have_count(12)
    ids = result_ids(page)
    assert ids[0] == query.image_id
    first = page.locator("#results a.result").first
    expect(first).to_contain_text(str(query.image_id))
    expect(first).to_contain_text(query.metadata["external_id"])
    thumbnails = page.locator("#results img.result-thumb")
    for i in range(thumbnails.count()):  # they load lazily, as they come into view
        thumbnails.nth(i).scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img.result-thumb')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    page.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-search.png"), full_page=True)

    # Open the second hit: its full image and metadata, then more like it.
    second = ids[1]
    page.locator(f'#results a.result[data-image-id="{second}"]').click()
    expect(page.locator("#view-image")).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.querySelector('#full-image'); return i.complete && i.naturalWidth > 0; }"
    )
    expected = next(item for item in indexed if item.image_id == second)
    expect(page.locator("#metadata")).to_contain_text(expected.metadata["external_id"])
    page.screenshot(path=str(ARTIFACTS / "ui-image.png"), full_page=True)
    page.click("#more-like-this")
    expect(page.locator("#status")).to_have_text("")
    expect(page.locator("#results a.result")).to_have_count(12)
    assert second not in result_ids(page)

    # Back to the search, now only women aged 40 to 70.
    page.click("#back-to-results")
    page.select_option("#filter-sex", "F")
    page.fill("#filter-age-min", "40")
    page.fill("#filter-age-max", "70")
    search_for(page)
    by_id = {item.image_id: item.metadata for item in indexed}
    filtered = result_ids(page)
    assert filtered and all(
        by_id[i]["sex"] == "F" and 40 <= (by_id[i].get("age") or -1) <= 70 for i in filtered
    )


def test_metadata_is_shown_as_text_never_as_markup(page: Page, stack: Stack) -> None:
    pixels = np.random.default_rng(4711).integers(0, 255, (96, 96), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(data, format="PNG")
    metadata: dict[str, Any] = {
        "dataset": "xss",
        "external_id": "<script>alert(2)</script>",
        "findings": [XSS],
        "extra": {"note": "<b>bold?</b>"},
    }
    added = requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("x.png", data.getvalue())},
        data={"metadata": json.dumps(metadata)},
        timeout=HTTP_TIMEOUT_S,
    )
    assert added.status_code == 201, added.text
    image_id = added.json()["image"]["id"]
    try:
        page.goto(f"{stack.gateway}/#/image/{image_id}")
        expect(page.locator("#metadata")).to_contain_text(XSS)
        expect(page.locator("#metadata")).to_contain_text("<script>alert(2)</script>")
        expect(page.locator("#metadata")).to_contain_text("<b>bold?</b>")
        assert page.locator('img[src="x"]').count() == 0 and page.locator("#metadata b").count() == 0
        page.click("#more-like-this")
        expect(page.locator("#status")).to_have_text("")
        # In a result card too: search with the image itself.
        page.goto(stack.gateway)
        page.set_input_files(
            "#query-file", files=[{"name": "q.png", "mimeType": "image/png", "buffer": data.getvalue()}]
        )
        search_for(page)
        expect(page.locator("#results a.result").first).to_contain_text(XSS)
        assert page.locator('img[src="x"]').count() == 0
    finally:
        requests.delete(f"{stack.gateway}/api/v1/images/{image_id}", timeout=HTTP_TIMEOUT_S)


def test_a_service_down_is_shown_readably(
    page: Page, stack: Stack, indexed: list[Indexed], restore_proxies: None
) -> None:
    page.goto(stack.gateway)
    page.set_input_files("#query-file", str(indexed[1].path))
    stack.proxies["embedder"].cut()
    page.click("#search-button")
    expect(page.locator("#error")).to_contain_text("embedder")
    expect(page.locator("#error")).to_be_visible()
    stack.proxies["embedder"].restore()
    search_for(page)
    expect(page.locator("#error")).to_have_text("")


def test_a_non_image_is_refused_with_its_reason(page: Page, stack: Stack) -> None:
    page.goto(stack.gateway)
    page.set_input_files(
        "#query-file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"just some text"}]
    )
    page.click("#search-button")
    expect(page.locator("#error")).to_contain_text("not a PNG, JPEG or DICOM")


def test_adding_an_image_through_the_form(page: Page, stack: Stack) -> None:
    pixels = np.random.default_rng(815).integers(0, 255, (80, 80), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(data, format="PNG")
    page.goto(f"{stack.gateway}/#/add")
    page.set_input_files(
        "#add-file", files=[{"name": "new.png", "mimeType": "image/png", "buffer": data.getvalue()}]
    )
    page.fill("#add-dataset", "ui")
    page.fill("#add-patient-id", "ui-patient")
    page.fill("#add-age", "51")
    page.select_option("#add-sex", "F")
    page.fill("#add-findings", "Effusion, Mass")
    page.click("#add-button")
    expect(page.locator("#add-result")).to_contain_text("Added image")
    image_id = int(page.locator("#add-result a").get_attribute("href").rsplit("/", 1)[-1])  # type: ignore[union-attr]
    record = requests.get(f"{stack.gateway}/api/v1/images/{image_id}", timeout=HTTP_TIMEOUT_S).json()
    assert record["metadata"]["findings"] == ["Effusion", "Mass"] and record["metadata"]["age"] == 51
    assert record["index_state"] == "indexed"
    requests.delete(f"{stack.gateway}/api/v1/images/{image_id}", timeout=HTTP_TIMEOUT_S)


def test_keyboard_reaches_the_upload_and_the_page_fits_a_phone(page: Page, stack: Stack) -> None:
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(stack.gateway)
    reached = set()
    for _ in range(30):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement && document.activeElement.id"))
    assert {"query-file", "search-button"} <= reached
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-phone.png"), full_page=True)
