"""The gateway keeps one connection per thread to each service: as many threads as it serves
requests with (MEDSEARCH_GATEWAY_THREADS) call a service at once, round after round, over the
same connections, none closed and opened again for want of room in the pool."""

from __future__ import annotations

import threading

from medsearch_common.settings import Binding
from medsearch_gateway.clients import Services
from medsearch_gateway.settings import GatewaySettings, Upstream
from tests.support.counting import counting_service

THREADS = 6
ROUNDS = 3


def test_every_thread_of_the_gateway_reuses_its_connection_round_after_round() -> None:
    with counting_service(delay_s=0.3) as catalog:
        settings = GatewaySettings(
            binding=Binding("127.0.0.1", 0),
            embedder=Upstream("embedder", catalog.url, 10),
            search=Upstream("search", catalog.url, 10),
            catalog=Upstream("catalog", catalog.url, 10),
            threads=THREADS,
        )
        services = Services.from_settings(settings)
        try:
            for _ in range(ROUNDS):
                start = threading.Barrier(THREADS, timeout=30)

                def call(start: threading.Barrier = start) -> None:
                    start.wait()
                    services.catalog.client.request("GET", "/v1/stats")

                threads = [threading.Thread(target=call) for _ in range(THREADS)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=30)
        finally:
            services.close()
        assert catalog.count("GET /v1/stats") == THREADS * ROUNDS
        assert len(catalog.connections) == THREADS  # one each, kept: no reconnects
