"""``GET /ready``: 200 while the broker answers, 503 within ``readiness_timeout`` when it
does not (a private redis-server stopped, frozen, restarted), 503 while shutting down."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import StartServer
from tests.support.http import http
from tests.support.polling import eventually
from tests.support.redis import redis_servers, skip_without_redis_server

pytestmark = pytest.mark.timeout(60)

DEADLINE = 0.5
"""The test's ``readiness_timeout``."""
MARGIN = 1.0
"""What an answer may take beyond it on a loaded 2-core machine."""


async def ready(port: int) -> tuple[int, dict[str, str], float]:
    """Status, JSON body and seconds taken by one ``GET /ready``."""
    started = time.monotonic()
    status, headers, body = await http(port, "GET", "/ready")
    assert headers["content-type"] == "application/json"
    return status, json.loads(body), time.monotonic() - started


async def test_ready_with_the_memory_broker_until_shutdown(start_server: StartServer) -> None:
    running = await start_server()
    status, body, _ = await ready(running.port)
    assert (status, body) == (200, {"status": "ready"})
    status, _, _ = await http(running.port, "POST", "/ready")
    assert status == 405
    status, _, body_bytes = await http(running.port, "GET", "/health")
    assert (status, json.loads(body_bytes)) == (200, {"status": "ok"})

    await running.node.shutdown()  # the listener still answers: shutting down is not ready
    status, body, _ = await ready(running.port)
    assert (status, body) == (503, {"status": "not ready", "reason": "shutting down"})
    status, _, _ = await http(running.port, "GET", "/health")
    assert status == 200  # alive all the same


@pytest.mark.redis
async def test_ready_follows_a_private_redis(start_server: StartServer) -> None:
    skip_without_redis_server()
    with redis_servers() as start_redis:
        redis = start_redis("--appendonly", "no")
        running = await start_server(broker=redis.url, readiness_timeout=DEADLINE)
        status, body, _ = await ready(running.port)
        assert (status, body) == (200, {"status": "ready"})

        # Frozen: connections stay open and nothing answers; /ready gives up at its deadline.
        redis.pause()
        try:
            status, body, took = await ready(running.port)
            assert (status, body) == (503, {"status": "not ready", "reason": "broker unavailable"})
            assert DEADLINE - 0.01 <= took < DEADLINE + MARGIN, took
        finally:
            redis.resume()
        await eventually(lambda: _is_ready(running.port), "ready again after SIGCONT", within=15)

        # Stopped: refused at once, still within the deadline.
        redis.kill()
        status, body, took = await ready(running.port)
        assert (status, body) == (503, {"status": "not ready", "reason": "broker unavailable"})
        assert took < DEADLINE + MARGIN, took

        # Back on the same port: ready once the pub/sub link holds its channels again.
        redis.start()
        await eventually(lambda: _is_ready(running.port), "ready after Redis returns", within=15)


async def _is_ready(port: int) -> bool:
    status, _, _ = await ready(port)
    return status == 200
