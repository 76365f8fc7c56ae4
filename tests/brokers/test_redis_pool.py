"""The Redis engine under a burst of concurrent commands from one node."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import make_config
from tests.support.redis import delete_keys, unique_prefix
from tidings import Tidings

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def test_hundreds_of_concurrent_publishes_wait_for_a_connection(shared_redis: str) -> None:
    """More concurrent commands than the pool holds wait for a free connection instead of
    failing (an application publishing to hundreds of channels at once)."""
    prefix = unique_prefix()
    rt = Tidings(make_config(broker=shared_redis, broker_prefix=prefix))
    try:
        async with rt:
            results = await asyncio.gather(
                *(rt.publish(f"chat:burst-{n}", {"n": n}) for n in range(500))
            )
        assert [result.offset for result in results] == [1] * 500
    finally:
        await delete_keys(shared_redis, prefix)
