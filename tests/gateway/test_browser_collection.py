"""The collection's pages in the web UI (issue 16), in headless Chromium against the real stack.

The statistics page: one bar chart per count of GET /api/v1/stats?breakdown=true, with the same
numbers as the API (age bands in band order, findings counted either way, index states per
model), at phone width too. The duplicates page: a half-size JPEG copy of an indexed image,
planted under another patient, is found by a scan at 0.999 in a cluster with its original,
flagged "different patients", and exported with its cells guarded; above 0.9999 the two are
alone. Stop ends a scan between ranges and keeps what was found (metadata shown as text, never
markup); a threshold of 1.5 is answered with the API's own words. The planted copy is deleted
at the end. Screenshots go to test-artifacts/, and to docs/ with MEDSEARCH_UPDATE_DOCS=1.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, Route, ViewportSize, expect

from tests.gateway import test_browser as browser_tests
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack, jpeg_half_size
from tests.gateway.test_browser import ARTIFACTS, XSS, OpenPage
from tests.gateway.test_browser_explore import DOCS_WIDTH, save_doc_shot

pytestmark = pytest.mark.integration

# The browser and its signed-in pages, as the other browser tests have them.
browser = browser_tests.browser
open_page = browser_tests.open_page

AGE_BANDS = ["0-17", "18-39", "40-59", "60-79", "80+", "unknown"]
# Image IDs per request of the page's scan.
RANGE = 5000
# The NIH image whose copy is planted (the other browser tests search with others).
PLANTED = 9
COPY_PATIENT = "ui-other-patient"
COPY_EXTERNAL_ID = "=ui-planted-copy"  # a spreadsheet would run it: the CSV must defuse it
PHONE: ViewportSize = {"width": 390, "height": 844}

# A chart's table: [key, [numbers]] per row, in the chart's order.
CHART_NUMBERS = """(figure) => [...figure.querySelectorAll('.chart-table tbody tr')].map(
    tr => [tr.dataset.key, [...tr.querySelectorAll('td')].map(td => Number(td.dataset.value))])"""
# A chart's drawing: [key, the text after its bar] per bar, in the drawn order.
CHART_BARS = """(figure) => [...figure.querySelectorAll('svg.chart-svg g.chart-row')].map(
    g => [g.dataset.key, g.querySelector('.chart-value').textContent])"""
FORMAT_COUNT = "(n) => new Intl.NumberFormat().format(n)"
WIDER_THAN = """(width) => [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => `${e.tagName}#${e.id}.${e.getAttribute('class')}: ${e.getBoundingClientRect().right}`)
    .slice(0, 8)"""


@dataclass(frozen=True)
class Planted:
    original: Indexed
    copy_id: int

    @property
    def pair(self) -> str:
        """The two images as the page names a pair (and its cluster): the lower ID first."""
        first, second = sorted((self.original.image_id, self.copy_id))
        return f"{first}-{second}"

    @property
    def members(self) -> str:
        return self.pair.replace("-", ",")


@pytest.fixture(scope="module")
def planted(stack: Stack, indexed: list[Indexed]) -> Iterator[Planted]:
    """A half-size JPEG copy of an indexed image, added by an editor under another patient of
    the same dataset: a near-duplicate that is a likely filing error."""
    original = indexed[PLANTED]
    metadata = {
        "dataset": original.metadata["dataset"],
        "external_id": COPY_EXTERNAL_ID,
        "patient_id": COPY_PATIENT,
    }
    added = requests.post(
        f"{stack.gateway}/api/v1/images",
        files={"image": ("copy.jpg", jpeg_half_size(original.path))},
        data={"metadata": json.dumps(metadata)},
        headers=stack.auth_as("editor"),
        timeout=HTTP_TIMEOUT_S,
    )
    assert added.status_code == 201 and added.json()["indexed"], added.text
    copy_id: int = added.json()["image"]["id"]
    try:
        yield Planted(original, copy_id)
    finally:
        requests.delete(
            f"{stack.gateway}/api/v1/images/{copy_id}",
            headers=stack.auth_as("editor"),
            timeout=HTTP_TIMEOUT_S,
        )


def chart(page: Page, name: str) -> Locator:
    return page.locator(f'#collection-charts figure[data-chart="{name}"]')


def numbers_of(page: Page, name: str) -> list[tuple[str, list[int]]]:
    figure = chart(page, name)
    expect(figure.locator("svg.chart-svg")).to_be_visible()  # drawn, at the chart's width
    rows = figure.evaluate(CHART_NUMBERS)
    bars = figure.evaluate(CHART_BARS)
    # The drawing says what the table says, row for row: after each bar its count (a stacked
    # bar's total, the table's last column), with thousands separators.
    assert [key for key, _ in bars] == [key for key, _ in rows], name
    assert [text for _, text in bars] == [count_text(page, values[-1]) for _, values in rows], name
    return [(key, values) for key, values in rows]


def count_text(page: Page, count: int) -> str:
    """A count as the page writes it, with the browser's own thousands separators."""
    text: str = page.evaluate(FORMAT_COUNT, count)
    return text


def fits(page: Page, width: int) -> None:
    """Nothing wider than the screen: no sideways scroll (the widest offenders named if any)."""
    wider = page.evaluate(WIDER_THAN, width)
    assert page.evaluate("document.documentElement.scrollWidth") <= width, wider


def duplicates_api(stack: Stack, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{stack.gateway}/api/v1/duplicates",
        json=body,
        headers=stack.auth_as("reader"),
        timeout=HTTP_TIMEOUT_S,
    )


def open_duplicates(page: Page) -> None:
    page.click('.site-nav a[data-view="duplicates"]')
    expect(page.locator("#view-duplicates")).to_be_visible()
    # The API's defaults, asked for on the first visit, fill the form.
    expect(page.locator("#dup-k")).not_to_have_value("")


def cluster_of(page: Page, image_id: int) -> Locator:
    return page.locator("#dup-clusters li.cluster").filter(
        has=page.locator(f'li.cluster-member[data-image-id="{image_id}"]')
    )


# -- the statistics page ----------------------------------------------------------------------


def test_the_statistics_page_charts_what_the_api_counts(
    open_page: OpenPage, stack: Stack, indexed: list[Indexed]
) -> None:
    page = open_page("reader", width=DOCS_WIDTH, height=900)
    page.click('.site-nav a[data-view="collection"]')
    expect(page.locator("#view-collection")).to_be_visible()
    stats = requests.get(
        f"{stack.gateway}/api/v1/stats",
        params={"breakdown": "true"},
        headers=stack.auth,
        timeout=HTTP_TIMEOUT_S,
    ).json()
    breakdown, images = stats["breakdown"], stats["images"]
    expect(page.locator("#collection-summary")).to_contain_text(f"{count_text(page, images)} images")

    expected = {
        "datasets": stats["datasets"],
        "findings": breakdown["findings_any"],
        "age_bands": breakdown["age_bands"],
        "sexes": breakdown["sexes"],
        "view_positions": breakdown["view_positions"],
    }
    for name, counts in expected.items():
        rows = numbers_of(page, name)
        assert {key: values[0] for key, values in rows} == counts, name
    # Age bands young to old whatever their counts; the others largest first.
    ages = [key for key, _ in numbers_of(page, "age_bands")]
    assert ages == [band for band in AGE_BANDS if band in breakdown["age_bands"]]
    assert len(ages) > 2 and sum(breakdown["age_bands"].values()) == images
    by_count = [values[0] for _, values in numbers_of(page, "datasets")]
    assert by_count == sorted(by_count, reverse=True)
    save_doc_shot(page, "ui-stats", full_page=True)

    # Findings counted the other way: each image once, under its only finding or "several".
    page.get_by_label(re.compile("its only finding")).check()
    expect(chart(page, "findings").locator(".chart-title")).to_have_text("Images with only this finding")
    only = numbers_of(page, "findings")
    assert {key: values[0] for key, values in only} == breakdown["findings_only"]
    assert sum(values[0] for _, values in only) == images

    # Index states: one stacked bar per model, the active one first.
    models = numbers_of(page, "index")
    assert models[0][0] == stats["model"]["model_id"]
    assert dict(models) == {
        model: [counts["indexed"], counts["pending"], counts["failed"], sum(counts.values())]
        for model, counts in stats["models"].items()
    }
    expect(chart(page, "index").locator("svg")).to_contain_text(f"{stats['model']['model_id']} (active)")

    # The numbers of a chart as a table, by keyboard.
    toggle = chart(page, "datasets").locator(".chart-toggle")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(chart(page, "datasets").locator(".chart-numbers")).not_to_have_class(re.compile("visually-hidden"))
    expect(chart(page, "datasets").locator("svg")).to_have_attribute("role", "img")
    assert re.fullmatch(
        r"112\D120", page.evaluate("import('/static/charts.js').then(m => m.formatCount(112120))")
    )
    page.keyboard.press("Enter")

    # A phone: every chart drawn again at its new width, nothing wider than the screen.
    page.set_viewport_size(PHONE)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#collection-charts svg')].every("
        "s => s.getBoundingClientRect().right <= document.documentElement.clientWidth)"
    )
    fits(page, PHONE["width"])
    page.screenshot(path=str(ARTIFACTS / "ui-stats-phone.png"), full_page=True)


# -- the duplicates page ----------------------------------------------------------------------


def test_a_scan_finds_a_copy_filed_under_another_patient(
    open_page: OpenPage, stack: Stack, planted: Planted
) -> None:
    page = open_page("reader", width=DOCS_WIDTH, height=900)
    default = duplicates_api(stack, {"from": 0, "to": 1}).json()
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/api/v1/duplicates") else None)
    open_duplicates(page)
    expect(page.locator("#dup-threshold")).to_have_value(str(default["threshold"]))
    expect(page.locator("#dup-k")).to_have_value(str(default["k"]))

    page.fill("#dup-threshold", "0.999")
    page.click("#dup-scan")
    expect(page.locator("#dup-results")).to_be_visible()
    expect(page.locator("#status")).to_have_text("")
    expect(page.locator("#error")).to_have_text("")
    # Range after range of 5,000 IDs, up to the highest ID the catalog has given.
    scans = [json.loads(r.post_data or "{}") for r in sent[1:]]
    highest = duplicates_api(stack, {"from": 0, "to": 1}).json()["max_image_id"]
    assert [(s["from"], s["to"]) for s in scans] == [(lo, lo + RANGE) for lo in range(0, highest + 1, RANGE)]
    assert all(s["threshold"] == 0.999 and s["k"] == default["k"] for s in scans)
    assert all(r.headers.get("x-csrf-token") for r in sent)
    assert page.evaluate("(p => p.value === p.max)(document.querySelector('#dup-progress'))")
    expect(page.locator("#dup-progress-text")).to_contain_text("Scanned image IDs 0–")

    cluster = cluster_of(page, planted.copy_id)
    expect(cluster).to_have_count(1)
    members = [int(i) for i in (cluster.get_attribute("data-members") or "").split(",")]
    assert {planted.original.image_id, planted.copy_id} <= set(members)
    expect(cluster).to_have_class(re.compile("cluster-alert"))
    expect(cluster.locator(".cluster-kinds")).to_contain_text("different patients")
    expect(cluster.locator(".cluster-warning")).to_contain_text("likely a filing or labelling error")
    pair = cluster.locator(f'li.cluster-pair[data-pair="{planted.pair}"]')
    expect(pair).to_contain_text("different patients")
    score = float(re.search(r"score (\d\.\d+)", pair.text_content() or "").group(1))  # type: ignore[union-attr]
    assert 0.999 <= score <= 1.0001
    # Each image with its ID, patient and external ID, as text.
    copy_card = cluster.locator(f'li.cluster-member[data-image-id="{planted.copy_id}"]')
    expect(copy_card).to_contain_text(f"Image {planted.copy_id}")
    expect(copy_card).to_contain_text(COPY_PATIENT)
    expect(copy_card).to_contain_text(COPY_EXTERNAL_ID)
    original_card = cluster.locator(f'li.cluster-member[data-image-id="{planted.original.image_id}"]')
    expect(original_card).to_contain_text(str(planted.original.metadata["patient_id"]))
    expect(original_card).to_contain_text(str(planted.original.metadata["external_id"]))
    for image_id in (planted.original.image_id, planted.copy_id):  # thumbnails load in view
        cluster.locator(f'li.cluster-member[data-image-id="{image_id}"]').scroll_into_view_if_needed()
    page.wait_for_function(
        "ids => ids.every(id => { const i = document.querySelector("
        '`#dup-clusters li.cluster-member[data-image-id="${id}"] img`);'
        " return i && i.complete && i.naturalWidth > 0; })",
        arg=[planted.original.image_id, planted.copy_id],
    )
    page.check("#dup-only-different")
    expect(cluster).to_have_count(1)
    expect(page.locator("#dup-clusters li.cluster:not(.cluster-alert)")).to_have_count(0)

    # Exported: one CSV row per pair, a formula-like cell defused; JSON by cluster.
    with page.expect_download() as download:
        page.click("#dup-export-csv")
    assert download.value.suggested_filename.endswith(".csv")
    with open(download.value.path(), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    row = next(r for r in rows if f"{r['a']}-{r['b']}" == planted.pair)
    assert row["kind"] == "different_patients" and "different_patients" in row["cluster_kinds"]
    copy_side = "a" if int(row["a"]) == planted.copy_id else "b"
    assert row[f"{copy_side}_external_id"] == "'" + COPY_EXTERNAL_ID
    assert row[f"{copy_side}_patient_id"] == COPY_PATIENT
    with page.expect_download() as download:
        page.click("#dup-export-json")
    with open(download.value.path(), encoding="utf-8") as handle:
        document = json.load(handle)
    assert document["threshold"] == 0.999 and document["scanned"]["complete"] is True
    exported = next(
        c for c in document["clusters"] if planted.copy_id in [m["image_id"] for m in c["members"]]
    )
    assert "different_patients" in exported["kinds"]

    # The test stack's random weights put different images above 0.999 too (one large cluster);
    # above 0.9999 the copy and its original are alone.
    page.fill("#dup-threshold", "0.9999")
    page.click("#dup-scan")
    expect(page.locator("#dup-summary")).to_contain_text("threshold 0.9999")
    expect(cluster).to_have_attribute("data-members", planted.members)
    page.set_viewport_size({"width": DOCS_WIDTH, "height": 1350})
    page.evaluate("window.scrollTo(0, 0)")
    save_doc_shot(page, "ui-duplicates")
    members = [int(i) for i in planted.members.split(",")]

    # At phone width the images still sit side by side, nothing wider than the screen.
    page.set_viewport_size(PHONE)
    fits(page, PHONE["width"])
    boxes = [cluster.locator(f'li.cluster-member[data-image-id="{i}"]').bounding_box() for i in members[:2]]
    assert boxes[0] and boxes[1] and boxes[0]["y"] == boxes[1]["y"]
    page.screenshot(path=str(ARTIFACTS / "ui-duplicates-phone.png"), full_page=True)

    # A thumbnail opens the image; back, the clusters are still there.
    cluster.locator(f'a.cluster-link[data-image-id="{planted.copy_id}"]').click()
    expect(page.locator("#view-image")).to_be_visible()
    expect(page.locator("#metadata")).to_contain_text(COPY_EXTERNAL_ID)
    page.go_back()
    expect(page.locator("#view-duplicates")).to_be_visible()
    expect(cluster).to_have_count(1)


def test_stop_ends_a_scan_between_ranges_and_keeps_what_it_found(
    open_page: OpenPage, stack: Stack, planted: Planted
) -> None:
    page = open_page("reader")
    held: list[Route] = []

    # The first range is answered by the gateway, as if the catalog went up to ID 14,999 and the
    # copy's metadata were markup; the second range is held until Stop is pressed.
    def answer(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        if body.get("from", 0) >= RANGE:
            held.append(route)
        elif body.get("to") == RANGE:
            response = route.fetch()
            found = response.json()
            for image in found["images"]:
                if image["id"] == planted.copy_id:
                    image["metadata"].update(patient_id=XSS, external_id="<b>bold?</b>")
            route.fulfill(response=response, json={**found, "max_image_id": 3 * RANGE - 1})
        else:
            route.continue_()

    page.route("**/api/v1/duplicates", answer)
    try:
        open_duplicates(page)
        page.click("#dup-scan")
        first, last = count_text(page, RANGE - 1), count_text(page, 3 * RANGE - 1)
        expect(page.locator("#dup-progress-text")).to_contain_text(f"Scanned image IDs 0–{first} of 0–{last}")
        for _ in range(100):
            if held:
                break
            page.wait_for_timeout(100)
        assert held, "the second range was never asked for"
        second = json.loads(held[0].request.post_data or "{}")
        assert (second["from"], second["to"]) == (RANGE, 2 * RANGE)
        expect(page.locator("#dup-stop")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#dup-progress-text")).to_contain_text(
            f"Stopped after image IDs 0–{first} of 0–{last}"
        )
        expect(page.locator("#dup-summary")).to_contain_text(f"image IDs 0–{first} only")
        # Metadata is text, never markup.
        copy_card = cluster_of(page, planted.copy_id).locator(f'li[data-image-id="{planted.copy_id}"]')
        expect(copy_card).to_contain_text(XSS)
        expect(copy_card).to_contain_text("<b>bold?</b>")
        assert page.locator('img[src="x"]').count() == 0 and copy_card.locator("b").count() == 0
        expect(page.locator("#error")).to_have_text("")
        expect(page.locator("#dup-scan")).to_be_enabled()
        expect(page.locator("#dup-stop")).to_be_disabled()
        assert len(held) == 1
    finally:
        for route in held:
            try:
                route.abort()
            except PlaywrightError:
                pass  # the page gave up on it already
        page.unroute("**/api/v1/duplicates")


def test_a_threshold_out_of_range_is_answered_with_the_apis_words(
    open_page: OpenPage, stack: Stack, indexed: list[Indexed]
) -> None:
    page = open_page("reader", **PHONE)
    refused = duplicates_api(stack, {"from": 0, "to": RANGE, "threshold": 1.5})
    assert refused.status_code == 400
    open_duplicates(page)
    fits(page, PHONE["width"])
    threshold = page.locator("#dup-threshold")
    threshold.focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("1.5")
    page.keyboard.press("Enter")
    expect(page.locator("#error")).to_have_text(refused.json()["detail"])
    expect(page.locator("#dup-progress-text")).to_have_text("Failed before the first range was scanned.")
    expect(page.locator("#dup-results")).to_be_hidden()
    expect(page.locator("#dup-scan")).to_be_focused()
    fits(page, PHONE["width"])
