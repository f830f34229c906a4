"""The map page in the web UI, in headless Chromium against the real stack.

An editor starts the map job through the API and it is followed to its end; then a reader opens
#/map. The canvas draws every point of GET /api/v1/map; coloured by dataset, its legend counts
them all; pointing at a point shows that image (its ID and its thumbnail) and a click opens it;
the wheel zooms; the last search is placed on the map; a lasso around a rectangle selects exactly
the points the API places inside it (computed here from the canvas's view). "Make the map" shows
to an editor, not to a reader. A synthetic map of 112,120 points, answered in place of the API's,
is drawn whole and lassoed whole; its redraw time is printed, never asserted. Screenshots go to
test-artifacts/, and to docs/ with MEDSEARCH_UPDATE_DOCS=1.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
import requests
from numpy.typing import NDArray
from playwright.sync_api import Page, Route, expect

from tests.gateway import test_browser as browser_tests
from tests.gateway.conftest import HTTP_TIMEOUT_S, Indexed, Stack
from tests.gateway.test_browser import ARTIFACTS, OpenPage
from tests.gateway.test_browser_collection import PHONE, fits
from tests.gateway.test_browser_explore import DOCS_WIDTH, save_doc_shot

pytestmark = pytest.mark.integration

# The browser and its signed-in pages, as the other browser tests have them.
browser = browser_tests.browser
open_page = browser_tests.open_page

JOBS, CURRENT, MAP = "/api/v1/map/jobs", "/api/v1/map/jobs/current", "/api/v1/map"
JOB_GUARD_S = 600.0
HOVER_PX = 6  # the page's reach when it looks for the point under the pointer
SYNTHETIC_POINTS = 112_120
# The canvas's place in the window and its view: screen = offset + scale * unit coordinate.
VIEW = """() => {
    const c = document.querySelector('#map-canvas');
    const b = c.getBoundingClientRect();
    return {left: b.left, top: b.top, width: b.width, height: b.height,
            scale: Number(c.dataset.scale), x: Number(c.dataset.offsetX), y: Number(c.dataset.offsetY)};
}"""
# Pixels of the canvas that are not the white background.
PAINTED = """() => {
    const c = document.querySelector('#map-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) painted += 1;
    return painted;
}"""
SCALE = "Number(document.querySelector('#map-canvas').dataset.scale)"
LEGEND = """(list) => [...list.querySelectorAll('li')].map(
    li => [li.dataset.key, Number(li.dataset.count)])"""
# Redraws after each of these keys, each waited for: the canvas's own timing of each.
REDRAW_TIMES = """async (keys) => {
    const c = document.querySelector('#map-canvas');
    const frame = () => new Promise(resolve => requestAnimationFrame(() => setTimeout(resolve, 0)));
    const times = [];
    for (const key of keys) {
        c.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
        await frame();
        times.push(Number(c.dataset.drawMs));
    }
    return times;
}"""


@pytest.fixture(scope="module")
def collection_map(stack: Stack, indexed: list[Indexed]) -> dict[str, Any]:
    """The map of the ingested sets, made by a job an editor starts (or the one that runs)."""
    started = requests.post(f"{stack.gateway}{JOBS}", headers=stack.auth_as("editor"), timeout=HTTP_TIMEOUT_S)
    assert started.status_code in (202, 409), started.text
    deadline = time.monotonic() + JOB_GUARD_S
    while True:
        current = requests.get(
            f"{stack.gateway}{CURRENT}", headers=stack.auth_as("reader"), timeout=HTTP_TIMEOUT_S
        )
        assert current.status_code == 200, current.text
        job = current.json()
        if job["state"] != "running":
            break
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["state"] == "done", job
    answer = requests.get(f"{stack.gateway}{MAP}", headers=stack.auth_as("reader"), timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def open_map(page: Page) -> None:
    page.click('.site-nav a[data-view="map"]')
    expect(page.locator("#view-map")).to_be_visible()
    expect(page.locator("#map-body")).to_be_visible()
    expect(page.locator("#status")).to_have_text("")


def view_of(page: Page) -> dict[str, float]:
    page.locator("#map-canvas").scroll_into_view_if_needed()
    view: dict[str, float] = page.evaluate(VIEW)
    return view


def on_screen(view: dict[str, float], xy: NDArray[np.float64]) -> NDArray[np.float64]:
    """Where the page draws unit-square points, in the window's CSS px."""
    origin = np.array([view["left"] + view["x"], view["top"] + view["y"]])
    screen: NDArray[np.float64] = origin + view["scale"] * xy
    return screen


def legend_of(page: Page, selector: str) -> dict[str, int]:
    return dict(page.locator(selector).evaluate(LEGEND))


def quiet_rectangle(
    view: dict[str, float], screen: NDArray[np.float64], centre: NDArray[np.float64]
) -> tuple[int, int, int, int]:
    """A rectangle of whole window px about `centre`, within the canvas, with no point on its
    edges (within 0.01 px, far more than the rounding by which the page and this test differ)."""
    width, height = int(0.4 * view["width"]), int(0.4 * view["height"])
    first = min(max(centre[0] - width / 2, view["left"] + 4), view["left"] + view["width"] - width - 4)
    upper = min(max(centre[1] - height / 2, view["top"] + 4), view["top"] + view["height"] - height - 4)
    x, y = screen[:, 0], screen[:, 1]
    for shift in range(49):  # moved by up to 3 px each way until it is clear
        left, top = int(first) + shift % 7 - 3, int(upper) + shift // 7 - 3
        right, bottom = left + width, top + height
        on_sides = (y >= top) & (y <= bottom) & ((np.abs(x - left) < 0.01) | (np.abs(x - right) < 0.01))
        on_ends = (x >= left) & (x <= right) & ((np.abs(y - top) < 0.01) | (np.abs(y - bottom) < 0.01))
        if not (on_sides | on_ends).any():
            return left, top, right, bottom
    raise AssertionError("no rectangle clear of the points")


def lasso(page: Page, corners: list[tuple[float, float]]) -> None:
    """Draws around `corners` with Shift held, back to the first."""
    page.keyboard.down("Shift")
    page.mouse.move(*corners[0])
    page.mouse.down()
    for corner in [*corners[1:], corners[0]]:
        page.mouse.move(*corner, steps=6)
    page.mouse.up()
    page.keyboard.up("Shift")


def test_the_map_draws_colours_points_opens_and_lassoes_them(
    open_page: OpenPage, stack: Stack, indexed: list[Indexed], collection_map: dict[str, Any]
) -> None:
    points, fields = collection_map["points"], collection_map["fields"]
    ids: list[int] = points["id"]
    xy = np.column_stack([points["x"], points["y"]])
    datasets = [fields["dataset"]["values"][code] for code in fields["dataset"]["codes"]]
    page = open_page("reader", width=DOCS_WIDTH, height=1000)
    # A search first, in this page: the map can place it.
    query = indexed[5]
    page.goto(f"{stack.gateway}/#/?query_id={query.image_id}&k=8")
    expect(page.locator("#results a.result")).to_have_count(8)

    open_map(page)
    expect(page.locator("#map-make")).to_be_hidden()  # an editor's button
    canvas = page.locator("#map-canvas")
    expect(canvas).to_have_attribute("data-points", str(len(ids)))
    assert page.evaluate(PAINTED) > len(ids)
    expect(page.locator("#map-summary")).to_contain_text(f"{len(ids)} images")
    expect(page.locator("#map-summary")).to_contain_text("PCA kept")
    expect(page.locator("#map-job")).to_be_hidden()
    expect(canvas).to_have_attribute("aria-label", re.compile(f"{len(ids)} images, coloured by finding"))

    # Coloured by dataset: one legend entry per dataset, its count the map's.
    page.select_option("#map-colour", "dataset")
    expect(page.locator("#map-legend-title")).to_contain_text("dataset")
    legend = legend_of(page, "#map-legend")
    assert legend == dict(Counter(datasets)) and sum(legend.values()) == len(ids)

    # Pointing at the point farthest from any other shows that image.
    gaps = np.linalg.norm(xy[:, None, :] - xy[None, :, :], axis=2)
    np.fill_diagonal(gaps, np.inf)
    alone = int(gaps.min(axis=1).argmax())
    view = view_of(page)
    assert view["scale"] * gaps[alone].min() > HOVER_PX
    spot = on_screen(view, xy[alone])
    page.mouse.move(*spot)
    tooltip = page.locator("#map-tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_have_attribute("data-image-id", str(ids[alone]))
    expect(tooltip).to_contain_text(f"Image {ids[alone]}")
    expect(tooltip).to_contain_text(str(datasets[alone]))
    page.wait_for_function(
        "() => (i => i.complete && i.naturalWidth > 0)(document.querySelector('#map-tooltip img'))"
    )
    page.locator("#map-stage").screenshot(path=str(ARTIFACTS / "ui-map-tooltip.png"))

    # A click opens it, as a result's link does; back, the map is there again.
    page.mouse.click(*spot)
    expect(page.locator("#view-image")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"#/image/{ids[alone]}$"))
    page.go_back()
    expect(page.locator("#view-map")).to_be_visible()
    expect(page.locator("#status")).to_have_text("")
    expect(canvas).to_have_attribute("data-points", str(len(ids)))

    # The wheel zooms around the pointer.
    view = view_of(page)
    page.mouse.move(view["left"] + view["width"] / 2, view["top"] + view["height"] / 2)
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"s => {SCALE} > s", arg=view["scale"])
    page.click("#map-reset")  # back to the whole map
    page.wait_for_function(f"s => {SCALE} === s", arg=view["scale"])

    # The last search: its query (a stored image) marked at its own place, its results ringed.
    page.click("#map-show-search")
    expect(page.locator("#map-show-search")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#map-search-note")).to_contain_text(f"the query is image {query.image_id}")
    expect(page.locator("#map-search-note")).to_contain_text("8 of its 8 results are on the map")

    # A lasso around a rectangle selects the points inside it, by the page's own view.
    view = view_of(page)
    screen = on_screen(view, xy)
    left, top, right, bottom = quiet_rectangle(view, screen, screen[ids.index(query.image_id)])
    inside = (screen[:, 0] > left) & (screen[:, 0] < right) & (screen[:, 1] > top) & (screen[:, 1] < bottom)
    expected = int(inside.sum())
    assert expected > 0
    lasso(page, [(left, top), (right, top), (right, bottom), (left, bottom)])
    selection = page.locator("#map-selection")
    expect(selection).to_be_visible()
    expect(selection).to_have_attribute("data-count", str(expected))
    expect(page.locator("#map-selection-title")).to_contain_text(f"{expected} image")
    chosen = legend_of(page, "#map-selection-breakdown")
    assert chosen == dict(Counter(d for d, kept in zip(datasets, inside, strict=True) if kept))
    links = page.locator("#map-selection-images a")
    expect(links).to_have_count(min(expected, 60))
    listed = {int(i) for i in links.evaluate_all("as => as.map(a => a.dataset.imageId)")}
    assert listed <= {image_id for image_id, kept in zip(ids, inside, strict=True) if kept}
    with page.expect_download() as download:
        page.click("#map-selection-csv")
    with open(download.value.path(), encoding="utf-8") as handle:
        rows = handle.read().split()
    assert rows[0] == "image_id" and len(rows) == expected + 1
    page.mouse.move(0, 0)  # off the map: no tooltip in the picture
    page.evaluate("document.querySelector('#view-map').scrollIntoView()")
    save_doc_shot(page, "ui-map")
    expect(page.locator("#error")).to_have_text("")

    # A phone: the canvas drawn again at the screen's width, nothing wider than the screen.
    page.set_viewport_size(PHONE)
    page.wait_for_function(
        "w => (c => c.clientWidth <= w && c.width === Math.round(c.clientWidth * devicePixelRatio))"
        "(document.querySelector('#map-canvas'))",
        arg=PHONE["width"],
    )
    fits(page, PHONE["width"])
    page.screenshot(path=str(ARTIFACTS / "ui-map-phone.png"), full_page=True)


def map_job(state: str, stage: str, progress: float, error: str | None = None) -> dict[str, Any]:
    """A map job as GET /api/v1/map/jobs/current gives it."""
    return {
        "id": "ui-job",
        "model_id": "ui-model",
        "state": state,
        "stage": stage,
        "progress": progress,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": None if state == "running" else "2026-01-01T00:01:00+00:00",
        "vectors": 407,
        "error": error,
        "automatic": False,
    }


def test_an_editor_follows_a_map_job_to_its_end(open_page: OpenPage, collection_map: dict[str, Any]) -> None:
    """The job's answers are the test's (the real job is the fixture's): the page shows its
    stage and progress, asks again every 2 s, and reads the map anew when it is done; a refusal
    is shown in the API's words, a failed job with its error."""
    page = open_page("editor", width=DOCS_WIDTH, height=900)
    jobs = [map_job("running", "laying out", 0.62), map_job("done", "done", 1.0)]
    maps: list[str] = []

    def start(route: Route) -> None:
        if not jobs:
            detail = "a map job for model ui-model is already running"
            problem = {"title": "Conflict", "status": 409, "detail": detail}
            route.fulfill(status=409, content_type="application/problem+json", body=json.dumps(problem))
            return
        route.fulfill(status=202, json=map_job("running", "reading", 0.05))

    def current(route: Route) -> None:
        failed = map_job("failed", "laying out", 0.7, "the UMAP layout failed (exit 1)")
        route.fulfill(json=jobs.pop(0) if jobs else failed)

    def read_map(route: Route) -> None:
        # After the job: the same points, made by the job just followed.
        maps.append(route.request.url)
        made_by = collection_map["made_by_job"] if len(maps) == 1 else "ui-job"
        route.fulfill(json={**collection_map, "made_by_job": made_by, "job": None})

    page.route("**/api/v1/map/jobs", start)
    page.route("**/api/v1/map/jobs/current", current)
    page.route("**/api/v1/map", read_map)
    open_map(page)
    make = page.locator("#map-make")
    expect(make).to_be_visible()  # an editor's
    expect(make).to_have_text("Recompute the map")
    make.click()
    expect(page.locator("#map-job-text")).to_contain_text("Making the map: reading, 5%")
    expect(make).to_be_disabled()
    expect(page.locator("#map-job-text")).to_contain_text("Making the map: laying out, 62%")
    assert page.locator("#map-job-progress").evaluate("p => p.value") == pytest.approx(0.62)
    expect(page.locator("#map-job")).to_be_hidden()  # done: the map is read again
    for _ in range(100):
        if len(maps) == 2:
            break
        page.wait_for_timeout(100)
    assert len(maps) == 2
    expect(page.locator("#status")).to_have_text("")
    expect(make).to_be_enabled()
    expect(page.locator("#map-canvas")).to_have_attribute(
        "data-points", str(len(collection_map["points"]["id"]))
    )

    make.click()  # one runs already (so the answer says): its state is asked for at once
    expect(page.locator("#error")).to_have_text("a map job for model ui-model is already running")
    expect(page.locator("#map-job")).to_have_class(re.compile("cmap-job-failed"))
    failed = "The last map job failed while laying out: the UMAP layout failed (exit 1)."
    expect(page.locator("#map-job-text")).to_have_text(f"{failed} The map shown is the one before it.")
    expect(make).to_be_enabled()


def synthetic_map(template: dict[str, Any], count: int) -> dict[str, Any]:
    """A map of `count` points in clusters, with the API's fields, for the page's scale."""
    rng = np.random.default_rng(11)
    centres = rng.random((40, 2)) * 0.8 + 0.1
    cluster = rng.integers(0, len(centres), count)
    xy = np.clip(centres[cluster] + rng.normal(0, 0.03, (count, 2)), 0, 1)
    findings = [f"finding-{i}" for i in range(15)]
    picked = [sorted(set(rng.integers(0, 15, n).tolist())) for n in rng.integers(0, 3, count)]
    return {
        **template,
        "made_by_job": "synthetic",
        "points": {
            "id": list(range(1, count + 1)),
            "x": np.round(xy[:, 0], 5).tolist(),
            "y": np.round(xy[:, 1], 5).tolist(),
        },
        "fields": {
            "dataset": {"values": ["hannover", "nih", None], "codes": (cluster % 3).tolist()},
            "sex": {"values": ["F", "M", None], "codes": rng.integers(0, 3, count).tolist()},
            "view_position": {"values": ["AP", "PA"], "codes": rng.integers(0, 2, count).tolist()},
            "age": [None if age > 95 else int(age) for age in rng.integers(0, 100, count)],
            "findings": {"values": findings, "codes": picked},
        },
    }


def test_a_map_of_112120_points_is_drawn_and_lassoed_whole(
    open_page: OpenPage, collection_map: dict[str, Any]
) -> None:
    body = json.dumps(synthetic_map(collection_map, SYNTHETIC_POINTS))
    page = open_page("reader", width=DOCS_WIDTH, height=1000)

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=body)

    page.route("**/api/v1/map", answer)
    open_map(page)
    canvas = page.locator("#map-canvas")
    expect(canvas).to_have_attribute("data-points", str(SYNTHETIC_POINTS))
    # Fifteen findings, each point's one, none or several: the rarest share the grey "other".
    legend = legend_of(page, "#map-legend")
    assert "(other)" in legend and len(legend) == 10 and sum(legend.values()) == SYNTHETIC_POINTS

    times = page.evaluate(REDRAW_TIMES, ["+", "+", "-", "-", "ArrowLeft", "ArrowRight"] * 4)
    print(f"redraw of {SYNTHETIC_POINTS} points: median {np.median(times):.1f} ms, max {max(times):.1f} ms")

    canvas.focus()
    page.keyboard.press("0")
    view = view_of(page)
    edge = [(view["left"] + 2, view["top"] + 2), (view["left"] + view["width"] - 2, view["top"] + 2)]
    edge += [(edge[1][0], view["top"] + view["height"] - 2), (edge[0][0], view["top"] + view["height"] - 2)]
    lasso(page, edge)
    expect(page.locator("#map-selection")).to_have_attribute("data-count", str(SYNTHETIC_POINTS))
    expect(page.locator("#map-selection-images a")).to_have_count(60)
    page.click("#map-selection-clear")
    expect(page.locator("#map-selection")).to_be_hidden()
    expect(canvas).to_be_focused()
