"""Redis killed and restarted while a publisher keeps publishing through a node.

Two node processes use a private redis-server; a centrifuge-python client is on
one node, a centrifuge-js client on the other. Redis is killed (``kill -9``)
and started again on the same port and data directory:

* without persistence the streams are gone: clients are told ``recovered:
  false`` and move to a new epoch, never handed a silent gap;
* with ``appendonly yes`` and ``appendfsync always`` nothing acknowledged is
  lost: clients recover in the same epoch and see every offset exactly once.

While Redis is down a publish is answered with error 100 (temporary) within
the broker's bound (1 s), not left hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.scale.conftest import JsSubscriber, StartNodes, Story
from tests.support.http import api
from tests.support.redis import StartRedis

pytestmark = [pytest.mark.redis, pytest.mark.node, pytest.mark.timeout(90)]

CHANNEL = "chat:restart"
BEFORE, AFTER, LIVE = 20, 30, 10
"""Publications acknowledged before the kill, right after the restart (while the clients
resubscribe), and once every client has resubscribed."""


class Publisher:
    """Publishes through one node's API until told to stop; records what was acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: list[tuple[int, str, int]] = []
        """(offset, epoch, n) of each acknowledged publication."""
        self.failures: list[float] = []
        """Seconds each publish answered by an error took."""
        self.restarted = asyncio.Event()
        self.changed = asyncio.Event()
        self.target = BEFORE
        self._n = 0

    async def run(self) -> None:
        while len(self.acked) < self.target or not self.restarted.is_set():
            if self.failures and not self.restarted.is_set():
                await self.restarted.wait()  # Redis is down: wait for the test to restart it
            await self.publish_one()

    async def publish_one(self) -> None:
        """One publish; an error must be 100 (temporary), and is recorded with its duration."""
        self._n += 1
        started = time.monotonic()
        status, answer = await api(
            self.port, "publish", {"channel": CHANNEL, "data": {"n": self._n}}
        )
        assert status == 200, answer
        if "error" in answer:
            assert answer["error"] == {
                "code": 100,
                "message": "internal server error",
                "temporary": True,
            }
            self.failures.append(time.monotonic() - started)
        else:
            result = answer["result"]
            self.acked.append((result["offset"], result["epoch"], self._n))
        self.changed.set()

    async def wait(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(20):
                while not condition():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pytest.fail(f"publisher: timed out waiting for {what}; acked {len(self.acked)}")


@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "aof-always"])
async def test_redis_restart_while_publishing(
    persistent: bool,
    private_redis_factory: StartRedis,
    tidings_nodes: StartNodes,
    py_subscriber: Callable[..., Awaitable[Story]],
    js_subscriber: Callable[..., Awaitable[JsSubscriber]],
) -> None:
    options = ("--appendonly", "yes", "--appendfsync", "always") if persistent else ()
    redis = private_redis_factory(*options)
    first, second = await tidings_nodes(2, redis.url, "restart")
    py = await py_subscriber(first.ws_url, CHANNEL)
    js = (await js_subscriber(second.ws_url, CHANNEL)).story
    stories = [py, js]
    for story in stories:
        await story.wait(lambda s: len(s.subscribed) == 1, "the first subscribe")

    publisher = Publisher(first.port)
    task = asyncio.create_task(publisher.run())
    try:
        await publisher.wait(lambda: len(publisher.acked) >= BEFORE, f"{BEFORE} publications")
        for story in stories:
            await story.wait(lambda s: len(s.publications) >= BEFORE, "live publications")
        old_epoch = publisher.acked[0][1]

        redis.kill()
        await publisher.wait(lambda: bool(publisher.failures), "a publish to fail")
        assert publisher.failures[0] < 2.0, "a publish must fail within the broker's bound"
        acked_before = len(publisher.acked)
        redis.start()
        publisher.target = acked_before + AFTER
        publisher.restarted.set()
        await asyncio.wait_for(task, 30)

        new_epochs = {epoch for _, epoch, _ in publisher.acked[acked_before:]}
        if persistent:
            assert new_epochs == {old_epoch}
        else:
            assert len(new_epochs) == 1 and old_epoch not in new_epochs
        new_epoch = new_epochs.pop()
        # The nodes' pub/sub links come back and their positioned subscribers are asked to
        # resubscribe (unsubscribe 2500), with recovery.
        for story in stories:
            await story.wait(
                lambda s: len(s.subscribed) >= 2 and s.subscribed[-1]["epoch"] == new_epoch,
                f"a resubscribe in epoch {new_epoch}",
            )
        for _ in range(LIVE):
            await publisher.publish_one()
        assert len(publisher.acked) == acked_before + AFTER + LIVE
        top = publisher.acked[-1][0]
        for story in stories:
            await story.wait(
                lambda s: bool(s.offsets) and s.offsets[-1] == top,
                f"the publications of epoch {new_epoch} up to offset {top}",
            )
            if persistent:
                _assert_recovered_without_loss(story, publisher, old_epoch)
            else:
                _assert_told_not_recovered(story, publisher, new_epoch)
    finally:
        task.cancel()
        publisher.restarted.set()
        await asyncio.gather(task, return_exceptions=True)


def _assert_recovered_without_loss(story: Story, publisher: Publisher, epoch: str) -> None:
    """Same epoch throughout; every offset once, in order; everything acknowledged arrived."""
    assert len(story.subscribed) >= 2, f"{story.name} never resubscribed: {story.events}"
    assert {sub["epoch"] for sub in story.subscribed} == {epoch}
    assert story.subscribed[-1]["recovered"] is True, story.subscribed
    assert story.subscribed[-1]["wasRecovering"] is True
    top = publisher.acked[-1][0]
    assert story.offsets == list(range(1, top + 1)), story.name
    received = {data["n"] for _, data in story.publications}
    assert {n for _, _, n in publisher.acked} <= received


def _assert_told_not_recovered(story: Story, publisher: Publisher, new_epoch: str) -> None:
    """History was lost: the client is told so, then follows the new epoch without gaps."""
    lost: list[dict[str, Any]] = [sub for sub in story.subscribed if sub["epoch"] == new_epoch]
    assert lost, f"{story.name} never moved to the new epoch: {story.subscribed}"
    assert lost[0]["wasRecovering"] is True and lost[0]["recovered"] is False, lost
    after = story.publications[lost[0]["at"] :]
    offsets = [offset for offset, _ in after]
    assert offsets == list(range(lost[0]["offset"] + 1, publisher.acked[-1][0] + 1))
    before = story.offsets[: story.subscribed[1]["at"]] if len(story.subscribed) > 1 else []
    assert before == list(range(1, len(before) + 1))
