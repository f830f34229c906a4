"""`medsearch` is the one layer that retries a slow gateway: the gateway sends a timed-out call
to a service once and answers 504, and the CLI sends the whole request again, with backoff. Its
connections, one per parallel request (--concurrency), are kept round after round.

Against a fake gateway on a real socket that counts what it gets.
"""

from __future__ import annotations

import threading

import pytest

from medsearch_client.client import GatewayClient, GatewayError, RetryPolicy
from tests.support.counting import counting_service

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_that_says_a_service_is_down_or_slow_is_asked_again(status: int) -> None:
    waits: list[float] = []
    with counting_service(statuses={"/api/v1/search": status}) as gateway:
        client = GatewayClient(gateway.url, retry=RetryPolicy(attempts=3, backoff_s=1.0), sleep=waits.append)
        with client, pytest.raises(GatewayError) as failed:
            client.search(PNG)
        assert gateway.count("POST /api/v1/search") == 3
    assert failed.value.status == status
    assert waits == [1.0, 2.0]


def test_parallel_requests_keep_their_connections() -> None:
    concurrency, rounds = 4, 3
    with counting_service(delay_s=0.3) as gateway:
        with GatewayClient(gateway.url, pool_size=concurrency) as client:
            for _ in range(rounds):
                start = threading.Barrier(concurrency, timeout=30)

                def call(start: threading.Barrier = start) -> None:
                    start.wait()
                    client.stats()

                threads = [threading.Thread(target=call) for _ in range(concurrency)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=30)
        assert gateway.count("GET /api/v1/stats") == concurrency * rounds
        assert len(gateway.connections) == concurrency
