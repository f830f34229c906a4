"""Exploring results in the web UI, in headless Chromium against the real stack (issue 15).

Similarity maps over the results and the query, with their legend; a region dragged on the
query image and searched, and the server's refusal of a too small one; relevance feedback
(marks, Refine, the address that reproduces a refined search and holds no bytes); the
side-by-side comparison (zoom and pan together, keyboard, phone width); a batch of uploads and
the export of a result list. The stack's images are never changed here. Screenshots go to
test-artifacts/, and to docs/ with MEDSEARCH_UPDATE_DOCS=1.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.gateway import test_browser as browser_tests
from tests.gateway.conftest import Indexed, Stack
from tests.gateway.test_browser import ARTIFACTS, DOCS, UI_TIMEOUT_MS, OpenPage, result_ids, search_for
from tests.support.identified_dicoms import Patient, identified_dicom

pytestmark = pytest.mark.integration

# The browser and its signed-in pages, as the other browser tests have them.
browser = browser_tests.browser
open_page = browser_tests.open_page
page = browser_tests.page

# Records what the page's own fetch() sends as multipart form fields (files by name and size):
# the page's requests as its script builds them, whatever the transport makes of the bytes.
SPY_ON_FORMS = """() => {
    if (window.sentForms) return;
    window.sentForms = [];
    const original = window.fetch;
    window.fetch = (url, init) => {
        if (init && init.body instanceof FormData) {
            const fields = {};
            for (const [name, value] of init.body.entries()) {
                fields[name] = typeof value === 'string' ? value : {file: value.name, size: value.size};
            }
            window.sentForms.push({url: String(url), fields});
        }
        return original(url, init);
    };
}"""
# Whether any pixel of a canvas is drawn (not fully transparent).
CANVAS_DRAWN = """(canvas) => {
    if (canvas.hidden || !canvas.width || !canvas.height) return false;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) return true;
    return false;
}"""
ADDRESS_KEYS = {"query_id", "region", "positive", "negative", "k", "filter", "one_per_patient"}
# The width of the README's pictures.
DOCS_WIDTH = 960


def spy_on_forms(page: Page) -> None:
    page.evaluate(SPY_ON_FORMS)


def sent_forms(page: Page, path: str) -> list[dict[str, Any]]:
    forms: list[dict[str, Any]] = page.evaluate("window.sentForms")
    return [form["fields"] for form in forms if form["url"].endswith(path)]


def wait_idle(page: Page) -> None:
    expect(page.locator("#status")).to_have_text("", timeout=UI_TIMEOUT_MS)


def upload_and_search(page: Page, stack: Stack, path: Path, k: int = 10) -> None:
    page.goto(stack.gateway)
    spy_on_forms(page)
    page.set_input_files("#query-file", str(path))
    expect(page.locator("#query-preview-image")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#query-preview-image').naturalWidth > 0")
    page.fill("#k", str(k))
    search_for(page)


def address_params(page: Page) -> dict[str, list[str]]:
    """The search parameters in the address's fragment (after '?')."""
    fragment = page.evaluate("location.hash")
    assert "?" in fragment, fragment
    return parse_qs(fragment.split("?", 1)[1])


def ids_of(value: str) -> list[int]:
    return [int(part) for part in value.split(",")]


def drag(page: Page, selector: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag over the element, from and to fractions of its box."""
    box = page.locator(selector).bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=6)
    page.mouse.up()


def save_doc_shot(page: Page, name: str, full_page: bool = False) -> None:
    """A screenshot for test-artifacts/, and for the README with MEDSEARCH_UPDATE_DOCS=1."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
    if os.environ.get("MEDSEARCH_UPDATE_DOCS") == "1":
        page.screenshot(path=str(DOCS / f"{name}.jpg"), type="jpeg", quality=80, full_page=full_page)


def wait_thumbnails(page: Page, count: int) -> None:
    page.wait_for_function(
        f"() => [...document.querySelectorAll('#results img.result-thumb')].slice(0, {count})"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )


def card(page: Page, image_id: int) -> Any:
    return page.locator(f'#results article.result-card[data-image-id="{image_id}"]')


# -- similarity maps --------------------------------------------------------------------------


def test_similarity_maps_overlay_the_results_and_the_query(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    page.set_viewport_size({"width": DOCS_WIDTH, "height": 900})
    upload_and_search(page, stack, indexed[3].path, k=4)
    toggle = page.locator("#maps-toggle")
    expect(page.get_by_text("Similarity maps", exact=True).first).to_be_visible()
    expect(toggle).not_to_be_checked()
    expect(page.locator("#maps-legend")).to_be_hidden()
    assert sent_forms(page, "/similarity-maps") == []  # nothing asked while they are off

    toggle.check()
    legend = page.locator("#maps-legend")
    expect(legend).to_be_visible()
    expect(legend).to_contain_text("Warmer: that part of the image contributes more to the similarity score")
    expect(legend).to_contain_text("not a finding")
    expect(page.get_by_label("Map opacity")).to_be_visible()

    first, second = result_ids(page)[:2]
    first_canvas = card(page, first).locator("canvas.map-canvas")
    expect(first_canvas).to_be_visible(timeout=UI_TIMEOUT_MS)
    wait_idle(page)
    assert first_canvas.evaluate(CANVAS_DRAWN)
    query_canvas = page.locator("#query-preview canvas.map-canvas")
    expect(query_canvas).to_be_visible()
    assert query_canvas.evaluate(CANVAS_DRAWN)
    expect(page.locator("#query-map-caption")).to_contain_text(f"image {first}")
    # The visible results' maps came in requests of at most 16 results each, with the upload.
    asked = sent_forms(page, "/similarity-maps")
    assert asked and all(1 <= len(ids_of(form["result_id"])) <= 16 for form in asked)
    assert all(form["image"]["size"] > 0 for form in asked)
    assert first in ids_of(asked[0]["result_id"])

    # Pointing at another result shows its map on the query.
    card(page, second).hover()
    expect(page.locator("#query-map-caption")).to_contain_text(f"image {second}")
    expect(card(page, second)).to_have_class(re.compile(r"\bis-shown\b"))
    page.get_by_label("Map opacity").fill("90")
    assert page.evaluate("getComputedStyle(document.querySelector('.map-canvas')).opacity") == "0.9"
    page.get_by_label("Map opacity").fill("60")

    for id_ in result_ids(page):  # each visible result gets its map
        card(page, id_).scroll_into_view_if_needed()
        expect(card(page, id_).locator("canvas.map-canvas")).to_be_visible(timeout=UI_TIMEOUT_MS)
    wait_thumbnails(page, 4)
    wait_idle(page)
    save_doc_shot(page, "ui-maps", full_page=True)

    toggle.uncheck()
    expect(legend).to_be_hidden()
    expect(first_canvas).to_be_hidden()


# -- search by region -------------------------------------------------------------------------


def test_a_region_dragged_on_the_query_searches_that_region(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    query = indexed[5]
    with Image.open(query.path) as image:
        width, height = image.size
    page.set_viewport_size({"width": DOCS_WIDTH, "height": 900})
    upload_and_search(page, stack, query.path, k=3)
    drag(page, "#query-preview-image", (0.25, 0.2), (0.75, 0.7))
    region_text = page.locator("#query-region .region-text")
    expect(region_text).to_contain_text("Region")
    page.locator("#query-region .region-search").click()
    wait_idle(page)
    expect(page.locator("#results .list-summary")).to_contain_text("region")
    expect(page.locator("#results a.result").first).to_be_visible()

    region = ids_of(sent_forms(page, "/search")[-1]["region"])
    # In the image's own pixels, whatever size the preview is shown at (within a pixel or two).
    expected = [0.25 * width, 0.2 * height, 0.75 * width, 0.7 * height]
    assert all(
        abs(got - want) <= 0.01 * max(width, height) for got, want in zip(region, expected, strict=True)
    ), region
    assert "image" in sent_forms(page, "/search")[-1]

    # The maps are of the region against each result.
    page.locator("#maps-toggle").check()
    expect(page.locator("#query-preview canvas.map-canvas")).to_be_visible(timeout=UI_TIMEOUT_MS)
    wait_idle(page)
    assert sent_forms(page, "/similarity-maps")[-1]["region"] == ",".join(map(str, region))
    for id_ in result_ids(page):
        card(page, id_).scroll_into_view_if_needed()
        expect(card(page, id_).locator("canvas.map-canvas")).to_be_visible(timeout=UI_TIMEOUT_MS)
    wait_thumbnails(page, 3)
    wait_idle(page)
    save_doc_shot(page, "ui-region", full_page=True)


def test_a_region_of_a_large_dicom_is_sent_in_the_dicoms_own_pixels(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    """A DICOM's preview is at most 1024 px: the box is scaled to the size its header gives."""
    width, height = 1400, 1200
    with Image.open(indexed[8].path) as image:
        pixels = np.asarray(image.convert("L").resize((width, height), Image.Resampling.BILINEAR))
    made = identified_dicom(pixels, Patient("ZQXREGION"))
    page.goto(stack.gateway)
    spy_on_forms(page)
    page.set_input_files("#query-file", files=[{"name": "IM0002", "mimeType": "", "buffer": made.data}])
    page.wait_for_function("() => document.querySelector('#query-preview-image').naturalWidth === 1024")
    drag(page, "#query-preview-image", (0.5, 0.5), (0.9, 0.9))
    page.locator("#query-region .region-search").click()
    wait_idle(page)
    expect(page.locator("#results a.result").first).to_be_visible()
    region = ids_of(sent_forms(page, "/search")[-1]["region"])
    expected = [0.5 * width, 0.5 * height, 0.9 * width, 0.9 * height]
    assert all(abs(got - want) <= 0.01 * width for got, want in zip(region, expected, strict=True)), region
    assert "ZQXREGION" not in page.url


def test_a_region_too_small_shows_the_servers_reason(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    upload_and_search(page, stack, indexed[6].path)
    preview = page.locator("#query-preview-image").bounding_box()
    assert preview is not None
    # About 12 CSS px of a preview 240 px high: under 64 px of the 1024 px image.
    side = 12 / preview["width"]
    drag(page, "#query-preview-image", (0.4, 0.4), (0.4 + side, 0.4 + side))
    region = page.locator("#query-region .region-text")
    expect(region).to_contain_text("Region")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/search")) as answer:
        page.locator("#query-region .region-search").click()
    assert answer.value.status == 422
    detail = answer.value.json()["detail"]
    assert "64" in detail
    expect(page.locator("#error")).to_have_text(detail)
    expect(page.locator("#error")).to_be_visible()


def test_a_region_of_a_stored_image_is_searched_in_its_own_pixels(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    stored = indexed[7]
    page.goto(f"{stack.gateway}/#/image/{stored.image_id}")
    spy_on_forms(page)
    page.wait_for_function(
        "() => { const i = document.querySelector('#full-image'); return i.complete && i.naturalWidth > 0; }"
    )
    # With the keyboard: focus the image, Enter places a box, Shift+arrows make it larger.
    page.locator("#full-stage").focus()
    page.keyboard.press("Enter")
    for _ in range(3):
        page.keyboard.press("Shift+ArrowRight")
    page.locator("#image-region .region-search").click()
    wait_idle(page)
    expect(page.locator("#results a.result").first).to_be_visible()
    sent = sent_forms(page, "/search")[-1]
    assert sent["query_id"] == str(stored.image_id) and "image" not in sent
    left, top, right, bottom = ids_of(sent["region"])
    with Image.open(stored.path) as image:
        width, height = image.size
    assert (left, top) == (round(0.3 * width), round(0.3 * height))
    assert (right, bottom) == (round(0.76 * width), round(0.7 * height))
    assert stored.image_id not in result_ids(page)
    assert address_params(page)["region"] == [sent["region"]]
    # The maps of the stored image's region: asked by its ID, drawn on the open image.
    page.locator("#maps-toggle").check()
    expect(page.locator("#full-stage canvas.map-canvas")).to_be_visible(timeout=UI_TIMEOUT_MS)
    asked = sent_forms(page, "/similarity-maps")[-1]
    assert asked["query_id"] == str(stored.image_id) and asked["region"] == sent["region"]
    assert "image" not in asked


def test_an_address_with_a_stored_query_runs_it_in_the_search_view(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    stored = indexed[9]
    page.goto(f"{stack.gateway}/#/?query_id={stored.image_id}&region=100,120,700,800&k=5")
    wait_idle(page)
    expect(page.locator("#results a.result")).to_have_count(5)
    assert stored.image_id not in result_ids(page)
    expect(page.locator("#results-title")).to_have_text(f"Similar to a region of image {stored.image_id}")
    expect(page.locator("#results .list-summary")).to_contain_text("region 100, 120 to 700, 800 px")
    expect(page.locator("#query-name")).to_contain_text(f"Image {stored.image_id}")
    expect(page.locator("#query-preview-image")).to_be_visible()
    expect(page.locator("#k")).to_have_value("5")
    params = address_params(page)
    assert params["query_id"] == [str(stored.image_id)] and params["region"] == ["100,120,700,800"]


# -- relevance feedback -----------------------------------------------------------------------


def test_marks_refine_the_search_and_the_address_reproduces_it(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    query = indexed[10]
    page.set_viewport_size({"width": DOCS_WIDTH, "height": 900})
    page.goto(f"{stack.gateway}/#/image/{query.image_id}")
    page.click("#more-like-this")
    wait_idle(page)
    first, second = result_ids(page)[:2]
    card(page, first).locator("button.mark-positive").click()
    card(page, second).locator("button.mark-negative").click()
    expect(card(page, first).locator("button.mark-positive")).to_have_attribute("aria-pressed", "true")
    expect(card(page, second).locator("button.mark-negative")).to_have_attribute("aria-pressed", "true")
    bar = page.locator("#results .refine-bar")
    expect(bar).to_contain_text("2 images marked: 1 more like this, 1 not like this")

    bar.locator("button.refine-button").click()
    wait_idle(page)
    refined = result_ids(page)
    assert refined and not {first, second, query.image_id} & set(refined)
    params = address_params(page)
    assert set(params) <= ADDRESS_KEYS
    assert params["positive"] == [str(first)] and params["negative"] == [str(second)]
    assert page.evaluate("location.hash").startswith(f"#/image/{query.image_id}?")
    expect(page.locator("#results .list-summary")).to_contain_text(
        "refined with 1 more like this, 1 not like this"
    )

    # The address alone gives the same refined results.
    page.reload()
    wait_idle(page)
    expect(page.locator("#results a.result").first).to_be_visible()
    assert result_ids(page) == refined
    expect(page.locator("#results .refine-bar")).to_contain_text("2 images marked")

    # Refine again: the marks add up; a removed mark leaves the search.
    also = refined[0]
    card(page, also).locator("button.mark-positive").click()
    expect(page.locator("#results .refine-bar button.chip")).to_have_count(3)
    wait_thumbnails(page, 3)
    page.locator("#results-title").scroll_into_view_if_needed()
    page.evaluate(
        "window.scrollBy(0, document.querySelector('#results-title').getBoundingClientRect().top - 8)"
    )
    save_doc_shot(page, "ui-refine")
    page.locator("#results .refine-bar button.refine-button").click()
    wait_idle(page)
    assert address_params(page)["positive"] == [f"{first},{also}"]
    twice = result_ids(page)
    assert not {first, second, also} & set(twice)

    page.locator(f'#results .refine-bar button.chip[data-image-id="{second}"]').click()
    expect(page.locator("#results .refine-bar")).to_contain_text("Refine to search with these marks")
    page.locator("#results .refine-bar button.refine-button").click()
    wait_idle(page)
    assert "negative" not in address_params(page)
    expect(page.locator("#results .list-summary")).to_contain_text(
        "refined with 2 more like this, 0 not like this"
    )


def test_refining_an_upload_keeps_its_bytes_out_of_the_address(
    open_page: OpenPage, stack: Stack, indexed: list[Indexed]
) -> None:
    page = open_page("reader")  # all of it is a reader's
    upload_and_search(page, stack, indexed[12].path)
    marked = result_ids(page)[1]
    card(page, marked).locator("button.mark-positive").click()
    page.locator("#results .refine-bar button.refine-button").click()
    wait_idle(page)
    assert marked not in result_ids(page)
    sent = sent_forms(page, "/search")[-1]
    assert sent["positive"] == str(marked) and sent["image"]["size"] > 0  # the upload, as it was
    address = page.url
    params = address_params(page)
    assert set(params) <= ADDRESS_KEYS and "query_id" not in params and "region" not in params
    assert params["positive"] == [str(marked)]
    assert "blob" not in address and indexed[12].path.name not in address
    assert indexed[12].metadata["external_id"] not in address
    # Opened anew, the address searches with the marked image alone.
    page.goto("about:blank")
    page.goto(address)
    wait_idle(page)
    expect(page.locator("#results-title")).to_have_text(f"Like image {marked}")
    expect(page.locator("#results a.result").first).to_be_visible()
    assert marked not in result_ids(page)


# -- side by side ------------------------------------------------------------------------------


def stage_transforms(page: Page) -> list[str]:
    transforms: list[str] = page.locator(".compare-stage").evaluate_all(
        "stages => stages.map(s => getComputedStyle(s).transform)"
    )
    return transforms


def test_compare_zooms_and_pans_both_images_together(
    page: Page, stack: Stack, indexed: list[Indexed]
) -> None:
    page.set_viewport_size({"width": DOCS_WIDTH, "height": 720})
    upload_and_search(page, stack, indexed[14].path)
    target = result_ids(page)[1]
    opener = card(page, target).locator("button.compare-button")
    opener.click()
    dialog = page.locator("#compare")
    expect(dialog).to_be_visible()
    expect(page.locator("#compare-title")).to_contain_text(f"image {target}")
    expect(page.locator("#compare-zoom-in")).to_be_focused()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.compare-stage img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    assert stage_transforms(page) == ["matrix(1, 0, 0, 1, 0, 0)"] * 2

    page.keyboard.press("+")
    page.keyboard.press("+")
    query_transform, result_transform = stage_transforms(page)
    assert query_transform == result_transform == "matrix(1.5625, 0, 0, 1.5625, 0, 0)"
    expect(page.locator("#compare-zoom-level")).to_have_text("156%")
    page.locator("#compare-result-viewport").focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowUp")
    query_transform, result_transform = stage_transforms(page)
    assert query_transform == result_transform == "matrix(1.5625, 0, 0, 1.5625, 40, 40)"
    page.keyboard.press("-")
    assert len(set(stage_transforms(page))) == 1

    # Window and level as brightness and contrast, on both images alike.
    page.get_by_label("Brightness").fill("150")
    page.get_by_label("Contrast").fill("200")
    filters = page.locator(".compare-stage img").evaluate_all("images => images.map(i => i.style.filter)")
    assert filters == ["brightness(1.5) contrast(2)"] * 2
    page.get_by_label("Brightness").fill("105")
    page.get_by_label("Contrast").fill("120")
    page.locator("#compare-maps").check()
    for canvas in page.locator(".compare-stage canvas.map-canvas").all():
        expect(canvas).to_be_visible(timeout=UI_TIMEOUT_MS)
    wait_idle(page)
    save_doc_shot(page, "ui-compare")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(opener).to_be_focused()


def test_compare_at_phone_width_stacks_the_two_images(
    open_page: OpenPage, stack: Stack, indexed: list[Indexed]
) -> None:
    page = open_page("reader", width=390, height=844)
    upload_and_search(page, stack, indexed[15].path)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    opener = card(page, result_ids(page)[0]).locator("button.compare-button")
    opener.focus()
    page.keyboard.press("Enter")
    query_pane = page.locator("#compare-query-viewport")
    result_pane = page.locator("#compare-result-viewport")
    expect(query_pane).to_be_visible()
    expect(result_pane).to_be_visible()
    top, bottom = query_pane.bounding_box(), result_pane.bounding_box()
    assert top is not None and bottom is not None
    assert bottom["y"] >= top["y"] + top["height"]  # one above the other
    assert top["x"] >= 0 and top["x"] + top["width"] <= 390 and bottom["y"] + bottom["height"] <= 844
    page.keyboard.press("=")
    assert stage_transforms(page) == ["matrix(1.25, 0, 0, 1.25, 0, 0)"] * 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-compare-phone.png"))
    page.keyboard.press("Escape")
    expect(page.locator("#compare")).to_be_hidden()
    expect(opener).to_be_focused()


# -- batch and export ---------------------------------------------------------------------------


def test_a_batch_of_uploads_gives_a_list_each_and_each_exports(
    open_page: OpenPage, stack: Stack, indexed: list[Indexed]
) -> None:
    page = open_page("reader")
    page.goto(stack.gateway)
    spy_on_forms(page)
    queries = [indexed[20], indexed[21]]
    page.set_input_files("#query-file", [str(query.path) for query in queries])
    expect(page.locator("#query-name")).to_contain_text("2 images")
    page.click("#search-button")
    wait_idle(page)
    lists = page.locator("#results section.result-list")
    expect(lists).to_have_count(2)
    for i, query in enumerate(queries):
        expect(lists.nth(i).locator(".list-title")).to_have_text(query.path.name)
        expect(lists.nth(i).locator("a.result").first).to_have_attribute("data-image-id", str(query.image_id))
    assert len(sent_forms(page, "/search")) == 2

    second = lists.nth(1)
    shown = [
        int(i) for i in second.locator("a.result").evaluate_all("els => els.map(e => e.dataset.imageId)")
    ]
    with page.expect_download() as download:
        second.locator("button.export-csv").click()
    assert download.value.suggested_filename.endswith(".csv")
    data = Path(download.value.path()).read_bytes()
    assert b"\x89PNG" not in data and b"base64" not in data
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert [int(row["image_id"]) for row in rows] == shown
    assert [int(row["rank"]) for row in rows] == list(range(1, len(shown) + 1))
    assert rows[0]["external_id"] == queries[1].metadata["external_id"]

    with page.expect_download() as download:
        second.locator("button.export-json").click()
    assert download.value.suggested_filename.endswith(".json")
    exported = json.loads(Path(download.value.path()).read_text())
    assert [result["image_id"] for result in exported["results"]] == shown
    assert set(exported["results"][0]) == {"image_id", "rank", "score", "metadata"}
    assert exported["query"]["uploaded"] is True and "base64" not in json.dumps(exported)


def test_an_exported_csv_cannot_run_formulas_and_batches_run_four_at_a_time(page: Page, stack: Stack) -> None:
    """The page's own modules, on lists of its own: the stack's images stay as they are."""
    page.goto(stack.gateway)
    exported = page.evaluate(
        """async () => {
            const {toCsv} = await import('/static/export.js');
            const meta = {dataset: '=HYPERLINK("x")', external_id: '+1', patient_id: '-2', extra: {a: 1},
                          findings: ['@SUM(1)', 'Mass'], view_position: 'PA'};
            return toCsv({results: [{rank: 1, score: -0.25, image: {id: 7, metadata: meta}}],
                          applied: {positive: [], negative: []}, query: {}, options: {}});
        }"""
    )
    rows = list(csv.reader(io.StringIO(exported)))
    row = dict(zip(rows[0], rows[1], strict=True))
    assert (
        row["dataset"] == '\'=HYPERLINK("x")' and row["external_id"] == "'+1" and row["patient_id"] == "'-2"
    )
    assert row["findings"] == "'@SUM(1); Mass" and row["view_position"] == "PA" and row["score"] == "-0.25"
    most = page.evaluate(
        """async () => {
            const {inPool} = await import('/static/searching.js');
            let running = 0, most = 0;
            await inPool([...Array(9).keys()], 4, async () => {
                running += 1; most = Math.max(most, running);
                await new Promise(r => setTimeout(r, 30));
                running -= 1;
            });
            return most;
        }"""
    )
    assert most == 4
