"""The web UI in headless Chromium (Playwright driving the system's /usr/bin/chromium).

Sign in through a link or the form, as each role, and out again; upload → results with
thumbnails and IDs → open one → more like this → filter; add and delete as an editor, the
audit trail as an admin; metadata shown as text, never markup; failures shown readably; phone
width without sideways scroll; a browser write without its CSRF token refused. Screenshots go
to test-artifacts/ (and the search and sign-in pages' to docs/ with MEDSEARCH_UPDATE_DOCS=1).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.conftest import REPO_ROOT
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack
from tests.support.identified_dicoms import Patient, gray_of, identified_dicom

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
DOCS = REPO_ROOT / "docs"
# Waits for the UI; a search embeds on 2 CPU cores, so they are generous.
UI_TIMEOUT_MS = 60_000
XSS = "<img src=x onerror=alert(1)>"
SESSION_COOKIE = "medsearch_session"
# A token of the right shape that the catalog never issued.
WRONG_TOKEN = "mst_" + "x" * 43

OpenPage = Callable[..., Page]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser: Browser, stack: Stack) -> Iterator[OpenPage]:
    """Opens a page in a browser of its own (its own cookies), signed in as `role` through a
    sign-in link the way a user does, or signed out with None."""
    contexts = []
    problems: list[str] = []

    def open_(role: str | None, width: int = 1280, height: int = 900) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
        if role is not None:
            sign_in(page, stack, role)
        return page

    yield open_
    for context in contexts:
        context.close()
    # Expected failures (a service cut on purpose, a refusal tested on purpose) log as failed
    # requests; nothing else may.
    unexpected = [p for p in problems if "503" not in p and "Failed to load resource" not in p]
    assert not unexpected, unexpected


@pytest.fixture
def page(open_page: OpenPage, indexed: list[Indexed]) -> Page:
    """The UI as an admin sees it: every control there is."""
    return open_page("admin")


def home(stack: Stack) -> str:
    return f"{stack.gateway}/"


def sign_in(page: Page, stack: Stack, role: str) -> None:
    """Follows a sign-in link (what `make run` prints) and waits for the search page."""
    page.goto(f"{stack.gateway}/signin#token={stack.tokens[role]}")
    page.wait_for_url(home(stack))
    expect(page.locator("#identity")).to_have_text(re.compile(rf"^token:\d+ · {role}$"))


def session_status(page: Page) -> int:
    """What GET /api/v1/session answers this page's browser, with whatever cookies it holds."""
    status: int = page.evaluate("fetch('/api/v1/session', {cache: 'no-store'}).then(r => r.status)")
    return status


def random_png(seed: int, size: int = 80) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(data, format="PNG")
    return data.getvalue()


# A delete sent as this page's own script sends it: with the CSRF token of its cookie.
DELETE_WITH_CSRF = """async (id) => {
    const csrf = document.cookie.split('; ').find(c => c.startsWith('medsearch_csrf=')).split('=')[1];
    const r = await fetch(`/api/v1/images/${id}`, {method: 'DELETE', headers: {'X-CSRF-Token': csrf}});
    return [r.status, await r.json()];
}"""


def add_image(stack: Stack, png: bytes) -> int:
    """An image of the test's own, added by the admin through the API."""
    added = requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("own.png", png)},
        data={"metadata": json.dumps({"dataset": "ui-own"})},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    )
    assert added.status_code == 201, added.text
    image_id: int = added.json()["image"]["id"]
    return image_id


def image_exists(stack: Stack, image_id: int) -> bool:
    url = f"{stack.gateway}/api/v1/images/{image_id}"
    return requests.get(url, headers=stack.auth, timeout=HTTP_TIMEOUT_S).status_code == 200


def delete_image(stack: Stack, image_id: int) -> None:
    url = f"{stack.gateway}/api/v1/images/{image_id}"
    requests.delete(url, headers=stack.auth, timeout=HTTP_TIMEOUT_S)


def image_count(stack: Stack) -> int:
    stats = requests.get(f"{stack.gateway}/api/v1/stats", headers=stack.auth, timeout=HTTP_TIMEOUT_S)
    assert stats.status_code == 200, stats.text
    count: int = stats.json()["images"]
    return count


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
    if os.environ.get("MEDSEARCH_UPDATE_DOCS") == "1":
        page.screenshot(path=str(DOCS / "ui-search.jpg"), type="jpeg", quality=80, full_page=True)

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
        headers=stack.auth,
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
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        )


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
    page.goto(f"{stack.gateway}/#/add")
    page.set_input_files(
        "#add-file", files=[{"name": "new.png", "mimeType": "image/png", "buffer": random_png(815)}]
    )
    page.fill("#add-dataset", "ui")
    page.fill("#add-patient-id", "ui-patient")
    page.fill("#add-age", "51")
    page.select_option("#add-sex", "F")
    page.fill("#add-findings", "Effusion, Mass")
    page.click("#add-button")
    expect(page.locator("#add-result")).to_contain_text("Added image")
    image_id = int(page.locator("#add-result a").get_attribute("href").rsplit("/", 1)[-1])  # type: ignore[union-attr]
    record = requests.get(
        f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
    ).json()
    assert record["metadata"]["findings"] == ["Effusion", "Mass"] and record["metadata"]["age"] == 51
    assert record["index_state"] == "indexed"
    requests.delete(f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S)


def test_a_dicom_added_through_the_form_shows_rendered_in_the_image_view(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    """Browsers cannot draw DICOM: the stored (de-identified) file is shown rendered to a PNG."""
    made = identified_dicom(gray_of(indexed[20].path), Patient("ZQXUI", age="058Y"))
    page.goto(f"{stack.gateway}/#/add")
    page.set_input_files("#add-file", files=[{"name": "IM0001", "mimeType": "", "buffer": made.data}])
    page.fill("#add-dataset", "ui-dicom")
    page.click("#add-button")
    expect(page.locator("#add-result")).to_contain_text("Added image")
    image_id = int(page.locator("#add-result a").get_attribute("href").rsplit("/", 1)[-1])  # type: ignore[union-attr]
    try:
        page.click("#add-result a")
        expect(page.locator("#view-image")).to_be_visible()
        page.wait_for_function(
            "() => { const i = document.querySelector('#full-image');"
            " return i.src.startsWith('blob:') && i.complete && i.naturalWidth === 1024; }"
        )
        expect(page.locator("#metadata")).to_contain_text("application/dicom")
        expect(page.locator("#metadata")).to_contain_text("58")
    finally:
        requests.delete(
            f"{stack.gateway}/api/v1/images/{image_id}", headers=stack.auth, timeout=HTTP_TIMEOUT_S
        )


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


# -- signing in and out, and what each role sees ---------------------------------------------


def test_a_signed_out_browser_lands_on_sign_in_and_a_wrong_token_is_refused(
    open_page: OpenPage, stack: Stack
) -> None:
    page = open_page(None)
    response = page.goto(stack.gateway)
    assert page.url == f"{stack.gateway}/signin"
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    token = page.get_by_label("API token")
    expect(token).to_be_visible()
    expect(token).to_have_attribute("type", "password")
    expect(token).to_be_focused()
    expect(page.locator("#token-help")).to_contain_text("make run")
    expect(page.locator("#token-help")).to_contain_text("medsearch tokens create --role reader|editor|admin")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-signin.png"), full_page=True)
    if os.environ.get("MEDSEARCH_UPDATE_DOCS") == "1":
        page.set_viewport_size({"width": 960, "height": 640})
        page.screenshot(path=str(DOCS / "ui-signin.jpg"), type="jpeg", quality=80, full_page=True)

    token.fill(WRONG_TOKEN)
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_have_text(
        "Sign-in failed: the API token is unknown, revoked or expired."
    )
    assert page.url == f"{stack.gateway}/signin"
    assert session_status(page) == 401
    assert SESSION_COOKIE not in {cookie["name"] for cookie in page.context.cookies()}

    # A sign-in link with a wrong token: the same error, and the token leaves the address bar;
    # opened in a new tab, and in a tab showing this page already (only the fragment changes).
    error = page.locator("#signin-error")
    for before in ("about:blank", f"{stack.gateway}/signin"):
        page.goto(before)
        page.goto(f"{stack.gateway}/signin#token={WRONG_TOKEN}")
        page.wait_for_url(f"{stack.gateway}/signin")
        expect(error).to_contain_text("unknown, revoked or expired")
    page.goto(stack.gateway)
    assert page.url == f"{stack.gateway}/signin"


def test_signing_in_by_keyboard_on_a_phone(open_page: OpenPage, stack: Stack) -> None:
    page = open_page(None, width=375, height=800)
    page.goto(f"{stack.gateway}/signin")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(stack.tokens["reader"])
    page.keyboard.press("Tab")
    expect(page.locator("#signin-button")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(home(stack))
    expect(page.locator("#identity")).to_contain_text("reader")
    expect(page.locator("#sign-out")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # Signed in already: the sign-in page sends the browser on to the search.
    page.goto(f"{stack.gateway}/signin")
    page.wait_for_url(home(stack))


def test_the_token_of_a_sign_in_link_leaves_the_address_bar_before_it_is_sent(
    open_page: OpenPage, stack: Stack
) -> None:
    page = open_page(None)
    token = stack.tokens["editor"]
    at_sign_in: list[str] = []

    def record_address(route: Route) -> None:
        if route.request.method == "POST":
            at_sign_in.append(page.evaluate("location.href"))
            assert json.loads(route.request.post_data or "{}") == {"token": token}
        route.continue_()

    page.route("**/api/v1/session", record_address)
    sign_in(page, stack, "editor")
    assert at_sign_in == [f"{stack.gateway}/signin"]
    assert token not in page.url and token not in page.evaluate("location.href + document.title")
    # The session is out of the page's reach; only the CSRF token is readable, by design.
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    assert cookies[SESSION_COOKIE]["httpOnly"] and cookies[SESSION_COOKIE]["sameSite"] == "Strict"
    assert SESSION_COOKIE not in page.evaluate("document.cookie")
    assert "medsearch_csrf=" in page.evaluate("document.cookie")


def test_a_reader_searches_but_is_offered_no_changes(
    open_page: OpenPage, stack: Stack, indexed: list[Indexed]
) -> None:
    page = open_page("reader")
    expect(page.locator("#sign-out")).to_be_visible()
    expect(page.locator('.site-nav a[data-view="search"]')).to_be_visible()
    expect(page.locator('.site-nav a[data-view="add"]')).to_be_hidden()
    expect(page.locator('.site-nav a[data-view="audit"]')).to_be_hidden()
    search_for(page, indexed[0].path)
    assert result_ids(page)[0] == indexed[0].image_id
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img.result-thumb')]"
        ".slice(0, 4).every(i => i.complete && i.naturalWidth > 0)"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-reader.png"), full_page=True)

    page.locator("#results a.result").first.click()
    expect(page.locator("#metadata")).to_contain_text(indexed[0].metadata["external_id"])
    expect(page.locator("#more-like-this")).to_be_visible()
    expect(page.locator("#delete-image")).to_be_hidden()
    expect(page.locator("#reindex-image")).to_be_hidden()

    page.goto(f"{stack.gateway}/#/add")
    expect(page.locator("#view-search")).to_be_visible()
    expect(page.locator("#view-add")).to_be_hidden()
    expect(page.locator("#error")).to_contain_text("needs the editor role; this identity's role is reader")
    page.goto(f"{stack.gateway}/#/audit")
    expect(page.locator("#view-audit")).to_be_hidden()
    expect(page.locator("#error")).to_contain_text("needs the admin role")

    # Hidden is not the guard: the gateway refuses a reader's delete, CSRF token and all.
    image_id = add_image(stack, random_png(93))
    try:
        status, problem = page.evaluate(DELETE_WITH_CSRF, image_id)
        assert status == 403 and "reader" in problem["detail"]
        assert image_exists(stack, image_id)
    finally:
        delete_image(stack, image_id)


def test_an_editor_adds_and_deletes_an_image_through_the_ui(open_page: OpenPage, stack: Stack) -> None:
    page = open_page("editor")
    expect(page.locator('.site-nav a[data-view="audit"]')).to_be_hidden()
    page.click('.site-nav a[data-view="add"]')
    expect(page.locator("#view-add")).to_be_visible()
    page.set_input_files(
        "#add-file", files=[{"name": "e.png", "mimeType": "image/png", "buffer": random_png(91)}]
    )
    page.fill("#add-dataset", "ui-editor")
    page.click("#add-button")
    expect(page.locator("#add-result")).to_contain_text("Added image")
    page.locator("#add-result a").click()
    expect(page.locator("#image-detail")).to_be_visible()
    image_id = int(page.url.rsplit("/", 1)[-1])
    url = f"{stack.gateway}/api/v1/images/{image_id}"
    assert requests.get(url, headers=stack.auth, timeout=HTTP_TIMEOUT_S).status_code == 200

    page.click("#delete-image")
    expect(page.locator("#delete-question")).to_contain_text(f"Delete image {image_id}")
    page.click("#delete-cancel")  # a change of mind deletes nothing
    expect(page.locator("#delete-confirm")).to_be_hidden()
    page.click("#delete-image")
    page.click("#delete-confirm-button")
    page.wait_for_url(home(stack) + "#/")
    expect(page.locator("#notice")).to_have_text(f"Deleted image {image_id}.")
    assert requests.get(url, headers=stack.auth, timeout=HTTP_TIMEOUT_S).status_code == 404

    page.goto(f"{stack.gateway}/#/audit")
    expect(page.locator("#error")).to_contain_text("needs the admin role; this identity's role is editor")


def test_an_admin_reads_the_audit_trail(page: Page, stack: Stack) -> None:
    expect(page.locator('.site-nav a[data-view="add"]')).to_be_visible()
    page.click('.site-nav a[data-view="audit"]')
    expect(page.locator("#view-audit")).to_be_visible()
    rows = page.locator("#audit-rows tr")
    expect(rows.first).to_be_visible()
    assert 0 < rows.count() <= 100
    # This admin's own sign-in, a moment ago, as plain text cells.
    signed_in = page.locator('#audit-rows tr[data-action="sign_in"]').first
    expect(signed_in).to_contain_text("admin")
    expect(signed_in).to_contain_text("ok")
    assert page.locator("#audit-rows td *:not(span.state)").count() == 0
    expect(page.locator("#audit-csv")).to_have_attribute("href", "/api/v1/audit.csv")
    csv = page.request.get(f"{stack.gateway}/api/v1/audit.csv")
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "sign_in" in csv.text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-audit.png"), full_page=True)


def test_signing_out_ends_the_session(open_page: OpenPage, stack: Stack) -> None:
    page = open_page("reader")
    session = next(c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE)
    page.click("#sign-out")
    page.wait_for_url(f"{stack.gateway}/signin")
    assert session_status(page) == 401
    # The old session cookie, replayed by anyone who kept it, is dead too.
    replayed = requests.get(
        f"{stack.gateway}/api/v1/session", cookies={SESSION_COOKIE: session}, timeout=HTTP_TIMEOUT_S
    )
    assert replayed.status_code == 401
    page.goto(stack.gateway)
    assert page.url == f"{stack.gateway}/signin"


def test_a_browser_write_without_the_csrf_token_is_refused(open_page: OpenPage, stack: Stack) -> None:
    page = open_page("editor")
    before = image_count(stack)
    # What a forged form post or a script without the page's CSRF token would send.
    write = """async ([bytes, csrf]) => {
        const body = new FormData();
        body.append('image', new Blob([new Uint8Array(bytes)], {type: 'image/png'}), 'forged.png');
        body.append('metadata', JSON.stringify({dataset: 'forged'}));
        const headers = csrf === null ? {} : {'X-CSRF-Token': csrf};
        const r = await fetch('/api/v1/images', {method: 'POST', body, headers});
        return [r.status, r.headers.get('Content-Type'), await r.json()];
    }"""
    png = list(random_png(92))
    for csrf in (None, "msc_not-this-sessions-token"):
        status, content_type, problem = page.evaluate(write, [png, csrf])
        assert status == 403 and content_type.startswith("application/problem+json"), problem
        assert "X-CSRF-Token" in problem["detail"]
    assert image_count(stack) == before
    # Nor is anything deleted.
    image_id = add_image(stack, random_png(94))
    try:
        status = page.evaluate(
            "async (id) => (await fetch(`/api/v1/images/${id}`, {method: 'DELETE'})).status", image_id
        )
        assert status == 403 and image_exists(stack, image_id)
    finally:
        delete_image(stack, image_id)
