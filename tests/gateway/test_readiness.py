"""The gateway's /readyz asks the three services at once and answers within one deadline (3 s,
under a 5 s probe), naming to an admin the services that hang; it sends none of them twice.

Hung services are listeners that accept connections and never answer.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from medsearch_common.settings import Binding
from medsearch_gateway.app import create_app
from medsearch_gateway.clients import Services
from medsearch_gateway.settings import GatewaySettings, Upstream
from tests.gateway.conftest import Stack
from tests.support.counting import counting_service

DEADLINE_S = 3.0
# Room for a loaded 2-core machine to schedule the answer; still under a 5 s probe.
SLACK_S = 1.0
SERVICES = ("embedder", "search", "catalog")


@pytest.fixture
def hung_url() -> Iterator[Callable[[], str]]:
    """Makes listeners whose backlog accepts connections that are never answered."""
    with ExitStack() as listeners:

        def make() -> str:
            listener = listeners.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            return f"http://127.0.0.1:{listener.getsockname()[1]}"

        yield make


def settings(urls: dict[str, str], **changes: object) -> GatewaySettings:
    return GatewaySettings(
        binding=Binding("127.0.0.1", 0),
        embedder=Upstream("embedder", urls["embedder"], 30),
        search=Upstream("search", urls["search"], 10),
        catalog=Upstream("catalog", urls["catalog"], 10),
        **changes,  # type: ignore[arg-type]
    )


def timed(call: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_three_hung_services_are_named_within_the_deadline(hung_url: Callable[[], str]) -> None:
    services = Services.from_settings(settings({name: hung_url() for name in SERVICES}))
    try:
        checks, elapsed = timed(services.readiness)
    finally:
        services.close()
    assert elapsed < DEADLINE_S + SLACK_S, elapsed
    assert isinstance(checks, dict) and list(checks) == list(SERVICES)
    for name, reason in checks.items():
        assert reason is not None and reason.startswith(name) and "answer" in reason, reason


def test_the_public_readyz_with_hung_services_answers_within_the_deadline(
    hung_url: Callable[[], str],
) -> None:
    app = create_app(settings({name: hung_url() for name in SERVICES}, anonymous_readers=True))
    response, elapsed = timed(lambda: app.test_client().get("/readyz"))
    assert elapsed < DEADLINE_S + SLACK_S, elapsed
    assert response.json == {"status": "degraded", "service": "gateway"}  # type: ignore[attr-defined]


def test_each_service_is_asked_once() -> None:
    with (
        counting_service() as embedder,
        counting_service(statuses={"/readyz": 503}) as search,
        counting_service(statuses={"/readyz": 504}) as catalog,
    ):
        services = Services.from_settings(
            settings({"embedder": embedder.url, "search": search.url, "catalog": catalog.url}, attempts=3)
        )
        try:
            checks = services.readiness()
        finally:
            services.close()
        assert [service.count("GET /readyz") for service in (embedder, search, catalog)] == [1, 1, 1]
    assert checks["embedder"] is None
    assert checks["search"] == "search is unavailable" and checks["catalog"] == "catalog timed out"


@pytest.mark.integration
def test_an_admin_sees_which_services_hang_within_the_deadline(
    stack: Stack, hung_url: Callable[[], str]
) -> None:
    """The catalog answers (it verifies the admin's token); the other two hang."""
    app = create_app(
        settings({"embedder": hung_url(), "search": hung_url(), "catalog": stack.urls["catalog"]})
    )
    response, elapsed = timed(lambda: app.test_client().get("/readyz", headers=stack.auth))
    assert elapsed < DEADLINE_S + SLACK_S, elapsed
    assert response.status_code == 200 and response.json["status"] == "degraded"  # type: ignore[attr-defined]
    checks = response.json["checks"]  # type: ignore[attr-defined]
    assert checks["catalog"] == "ok"
    assert "answer" in checks["embedder"] and "answer" in checks["search"]
