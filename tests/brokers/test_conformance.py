"""The broker contract (tidings.brokers.base), checked against every engine."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from tests.support.polling import eventually
from tests.support.redis import Cluster, RedisServer, free_port, sentinel
from tidings.brokers.base import Broker, HistoryOptions, HistoryReader, PresenceStore
from tidings.brokers.redis import RedisBroker, RedisPresence
from tidings.errors import BrokerUnavailable
from tidings.protocol.messages import ClientInfo, Publication, StreamPosition

from .conftest import Engine, Recorder, RedisEngine

KEEP = HistoryOptions(size=100, ttl=300.0)


def pub(n: int | str) -> Publication:
    return Publication(data=msgspec.Raw(msgspec.json.encode({"n": n})))


def data(publications: list[Publication]) -> list[bytes]:
    return [bytes(p.data) for p in publications]


async def publish_many(
    broker: Broker, channel: str, count: int, history: HistoryOptions = KEEP
) -> list[StreamPosition | None]:
    return [await broker.publish(channel, pub(i), history=history) for i in range(1, count + 1)]


# --------------------------------------------------------------------------- streams


async def test_engine_implements_the_protocols(engine: Engine) -> None:
    broker, _ = await engine.node()
    assert isinstance(broker, Broker)
    assert isinstance(broker, HistoryReader)
    assert isinstance(await engine.presence(), PresenceStore)


async def test_offsets_are_contiguous_from_one_in_one_epoch(engine: Engine) -> None:
    broker, _ = await engine.node()
    positions = await publish_many(broker, "chat", 5)
    assert [p.offset for p in positions if p] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions if p}) == 1
    epoch = positions[0].epoch if positions[0] else ""
    assert len(epoch) == 8 and epoch.isalpha()
    _, top = await broker.history("chat")
    assert top == StreamPosition(5, epoch)
    other = await broker.publish("other", pub(1), history=KEEP)
    assert other is not None and other.offset == 1


async def test_history_of_unknown_channel_creates_a_stable_position(engine: Engine) -> None:
    broker, _ = await engine.node()
    publications, first = await broker.history("never", limit=-1)
    assert publications == [] and first.offset == 0 and first.epoch
    _, again = await broker.history("never")
    assert again == first
    position = await broker.publish("never", pub(1), history=KEEP)
    assert position == StreamPosition(1, first.epoch)


async def test_history_selection(engine: Engine) -> None:
    broker, _ = await engine.node()
    await publish_many(broker, "chat", 5)

    async def offsets(**kwargs: object) -> list[int]:
        publications, top = await broker.history("chat", **kwargs)
        assert top.offset == 5
        return [p.offset for p in publications]

    epoch = (await broker.history("chat"))[1].epoch
    assert await offsets() == []
    assert await offsets(limit=-1) == [1, 2, 3, 4, 5]
    assert await offsets(limit=2) == [1, 2]
    assert await offsets(limit=2, reverse=True) == [5, 4]
    assert await offsets(limit=-1, reverse=True) == [5, 4, 3, 2, 1]
    assert await offsets(since=StreamPosition(2, epoch)) == [3, 4, 5]
    assert await offsets(since=StreamPosition(2, epoch), limit=2) == [3, 4]
    assert await offsets(since=StreamPosition(5, epoch)) == []
    assert await offsets(since=StreamPosition(0, epoch), limit=-1) == [1, 2, 3, 4, 5]
    assert await offsets(since=StreamPosition(4, epoch), reverse=True) == [3, 2, 1]
    assert await offsets(since=StreamPosition(4, epoch), reverse=True, limit=2) == [3, 2]
    assert await offsets(since=StreamPosition(1, epoch), reverse=True) == []
    publications, _ = await broker.history("chat", limit=-1)
    assert data(publications) == [b'{"n":%d}' % i for i in range(1, 6)]


async def test_history_is_trimmed_to_size(engine: Engine) -> None:
    broker, _ = await engine.node()
    await publish_many(broker, "chat", 7, HistoryOptions(size=3, ttl=300.0))
    publications, top = await broker.history("chat", limit=-1)
    assert [p.offset for p in publications] == [5, 6, 7]
    assert top.offset == 7


async def test_history_items_expire_after_ttl_but_the_top_stays(engine: Engine) -> None:
    broker, _ = await engine.node()
    positions = await publish_many(broker, "chat", 3, HistoryOptions(size=10, ttl=0.3))

    async def empty() -> bool:
        return (await broker.history("chat", limit=-1))[0] == []

    await eventually(empty, "history items to expire")
    _, top = await broker.history("chat")
    assert top == positions[-1]
    after = await broker.publish("chat", pub(4), history=HistoryOptions(size=10, ttl=300.0))
    assert after == StreamPosition(4, top.epoch)
    assert [p.offset for p in (await broker.history("chat", limit=-1))[0]] == [4]


async def test_meta_expiry_starts_a_new_epoch(engine: Engine) -> None:
    broker, _ = await engine.node()
    short = HistoryOptions(size=10, ttl=300.0, meta_ttl=0.3)
    first = await broker.publish("chat", pub(1), history=short)
    assert first is not None

    async def epoch_changed() -> bool:
        return (await broker.history("chat"))[1].epoch != first.epoch

    await eventually(epoch_changed, "the stream metadata to expire")
    publications, fresh = await broker.history("chat", limit=-1)
    assert publications == [] and fresh.offset == 0
    again = await broker.publish("chat", pub(2), history=KEEP)
    assert again == StreamPosition(1, fresh.epoch)


async def test_history_read_sets_meta_ttl_only_when_the_stream_has_none(engine: Engine) -> None:
    broker, _ = await engine.node()
    _, created = await broker.history("chat", meta_ttl=0.3)

    async def epoch_changed() -> bool:
        return (await broker.history("chat"))[1].epoch != created.epoch

    await eventually(epoch_changed, "a stream created by a history read to expire")


async def test_remove_history_keeps_the_top_position(engine: Engine) -> None:
    broker, _ = await engine.node()
    positions = await publish_many(broker, "chat", 3)
    await broker.remove_history("chat")
    await broker.remove_history("never-published")
    publications, top = await broker.history("chat", limit=-1)
    assert publications == [] and top == positions[-1]
    after = await broker.publish("chat", pub(4), history=KEEP)
    assert after is not None and after.offset == 4 and after.epoch == top.epoch
    assert [p.offset for p in (await broker.history("chat", limit=-1))[0]] == [4]


async def test_idempotency_key_returns_the_first_result_and_delivers_nothing(
    engine: Engine,
) -> None:
    broker, recorder = await engine.node()
    await broker.subscribe("chat")
    first = await broker.publish("chat", pub(1), history=KEEP, idempotency_key="k1")
    repeat = await broker.publish("chat", pub(1), history=KEEP, idempotency_key="k1")
    assert first == repeat == StreamPosition(1, first.epoch if first else "")
    other_channel = await broker.publish("elsewhere", pub(1), history=KEEP, idempotency_key="k1")
    assert other_channel is not None and other_channel.offset == 1
    assert await broker.publish("chat", pub(2), history=KEEP, idempotency_key="k2") == (
        StreamPosition(2, first.epoch if first else "")
    )
    assert await broker.publish("chat", pub(3), idempotency_key="k3") is None
    assert await broker.publish("chat", pub(3), idempotency_key="k3") is None
    await broker.publish("chat", pub("end"), history=KEEP)
    await recorder.wait(lambda: len(recorder.publications["chat"]) >= 4, "the final publication")
    assert recorder.offsets("chat") == [1, 2, 0, 3]
    assert [p.offset for p in (await broker.history("chat", limit=-1))[0]] == [1, 2, 3]


async def test_publish_without_history_stores_nothing(engine: Engine) -> None:
    broker, recorder = await engine.node()
    await broker.subscribe("chat")
    assert await broker.publish("chat", pub(1)) is None
    await recorder.wait(lambda: bool(recorder.publications["chat"]), "the publication")
    [(delivered, position)] = recorder.publications["chat"]
    assert delivered.offset == 0 and position is None
    assert bytes(delivered.data) == b'{"n":1}'
    publications, top = await broker.history("chat", limit=-1)
    assert publications == [] and top.offset == 0


async def test_publication_fields_survive_transport_and_history(engine: Engine) -> None:
    broker, recorder = await engine.node()
    await broker.subscribe("chat")
    info = ClientInfo(
        user="u1", client="c1", conn_info=msgspec.Raw(b'{"a":1}'), chan_info=msgspec.Raw(b"[1,2]")
    )
    sent = Publication(data=msgspec.Raw(b'{"text": "hi \\u00e9\\n"}'), info=info, tags={"t": "v"})
    position = await broker.publish("chat", sent, history=KEEP)
    await recorder.wait(lambda: bool(recorder.publications["chat"]), "the publication")
    [(delivered, delivered_position)] = recorder.publications["chat"]
    [stored], _ = await broker.history("chat", limit=-1)
    for got in (delivered, stored):
        assert bytes(got.data) == b'{"text": "hi \\u00e9\\n"}'
        assert got.info is not None and got.info.user == "u1" and got.info.client == "c1"
        assert bytes(got.info.conn_info) == b'{"a":1}' and bytes(got.info.chan_info) == b"[1,2]"
        assert got.tags == {"t": "v"} and got.offset == 1
    assert delivered_position == position


async def test_key_survives_and_the_delta_wish_reaches_every_node(engine: Engine) -> None:
    """A publication's ``key`` is part of it; ``delta=True`` travels with the delivery
    (to every node), is never stored, and is off unless asked, with or without history."""
    (a, seen_a) = await engine.node("a")
    nodes = [(a, seen_a)]
    if engine.multi_node:
        nodes.append(await engine.node("b"))
    for broker, _ in nodes:
        await broker.subscribe("chat")
    keyed = Publication(data=msgspec.Raw(b'{"bid":1}'), key="ACME")
    await a.publish("chat", keyed, history=KEEP, delta=True)
    await a.publish("chat", pub(2), history=KEEP)
    await a.publish("chat", pub(3), delta=True)  # no history: offset 0
    for _, seen in nodes:
        chat = seen.publications["chat"]
        await seen.wait(lambda chat=chat: len(chat) >= 3, "three publications")
        assert [p.key for p, _ in chat] == ["ACME", "", ""]
        assert seen.deltas == {("chat", 1), ("chat", 0)}
    [stored, _], _ = await a.history("chat", limit=-1)
    assert stored.key == "ACME" and stored.delta is False


async def test_channel_names_are_kept_apart(engine: Engine) -> None:
    """Braces and escapes in names must not merge streams (nor split a cluster slot)."""
    broker, _ = await engine.node()
    names = ["a}b", "a%7Db", "}x", "{y}", "%", "ü:ch/1", "a b"]
    for count, name in enumerate(names, start=1):
        await publish_many(broker, name, count)
    for count, name in enumerate(names, start=1):
        assert (await broker.history(name))[1].offset == count


# --------------------------------------------------------------------------- delivery


async def test_concurrent_publishers_on_two_nodes_deliver_contiguous_offsets(
    engine: Engine,
) -> None:
    if not engine.multi_node:
        pytest.skip(f"{engine.kind} is a single-node engine")
    (a, seen_a), (b, seen_b) = await engine.node("a"), await engine.node("b")
    await a.subscribe("chat")
    await b.subscribe("chat")
    count = 60

    async def burst(broker: Broker, tag: str) -> None:
        for i in range(count):
            await broker.publish("chat", pub(f"{tag}{i}"), history=KEEP)

    await asyncio.gather(
        *(
            burst(node, f"{node_tag}{k}")
            for k in range(3)
            for node, node_tag in ((a, "a"), (b, "b"))
        )
    )
    total = 6 * count
    for seen in (seen_a, seen_b):
        chat = seen.publications["chat"]
        await seen.wait(lambda chat=chat: len(chat) >= total, "every publication")
        assert seen.offsets("chat") == list(range(1, total + 1))
        epochs = {position.epoch for _, position in seen.publications["chat"] if position}
        assert len(epochs) == 1
        assert [p.offset for _, p in seen.publications["chat"] if p] == list(range(1, total + 1))


async def test_only_subscribed_nodes_hear_a_channel(engine: Engine) -> None:
    if not engine.multi_node:
        pytest.skip(f"{engine.kind} is a single-node engine")
    (a, seen_a), (b, seen_b) = await engine.node("a"), await engine.node("b")
    barrier = engine.sibling("chat")
    await a.subscribe("chat")
    await b.subscribe(barrier)
    await a.publish("chat", pub(1), history=KEEP)
    await a.publish(barrier, pub("barrier"), history=KEEP)
    await seen_b.wait(lambda: bool(seen_b.publications[barrier]), "the barrier on node b")
    await seen_a.wait(lambda: bool(seen_a.publications["chat"]), "the publication on node a")
    assert "chat" not in seen_b.publications
    assert barrier not in seen_a.publications


async def test_interest_is_reference_counted(engine: Engine) -> None:
    broker, seen = await engine.node()
    barrier = engine.sibling("chat")
    await broker.subscribe(barrier)
    await broker.subscribe("chat")
    await broker.subscribe("chat")
    await broker.unsubscribe("chat")
    await broker.publish("chat", pub(1), history=KEEP)
    await seen.wait(
        lambda: len(seen.publications["chat"]) == 1, "delivery while one interest is left"
    )
    await broker.unsubscribe("chat")
    await broker.unsubscribe("chat")  # one too many: ignored
    await broker.publish("chat", pub(2), history=KEEP)
    await broker.publish(barrier, pub("barrier"), history=KEEP)
    await seen.wait(lambda: bool(seen.publications[barrier]), "the barrier")
    assert seen.offsets("chat") == [1]
    await broker.subscribe("chat")
    await broker.publish("chat", pub(3), history=KEEP)
    await seen.wait(lambda: len(seen.publications["chat"]) == 2, "delivery after resubscribing")
    assert seen.offsets("chat") == [1, 3]


async def test_join_leave_and_control_reach_every_node(engine: Engine) -> None:
    nodes = [await engine.node("a")]
    if engine.multi_node:
        nodes.append(await engine.node("b"))
    for broker, _ in nodes:
        await broker.subscribe("chat")
    sender = nodes[0][0]
    info = ClientInfo(user="u1", client="c1", conn_info=msgspec.Raw(b'{"x":1}'))
    await sender.publish_join("chat", info)
    await sender.publish_leave("chat", info)
    await sender.publish_control(b"\x00control\xff")
    for _, seen in nodes:
        done = seen.controls, seen.leaves["chat"]
        await seen.wait(lambda done=done: all(done), "join, leave and control")
        assert seen.joins["chat"] == [info] and seen.leaves["chat"] == [info]
        assert seen.controls == [b"\x00control\xff"]


# --------------------------------------------------------------------------- presence


async def test_presence_add_remove_and_stats(engine: Engine) -> None:
    store = await engine.presence()
    assert await store.presence("room") == {}
    assert await store.presence_stats("room") == (0, 0)
    alice1 = ClientInfo(user="alice", client="c1", conn_info=msgspec.Raw(b'{"n":1}'))
    alice2 = ClientInfo(user="alice", client="c2")
    bob = ClientInfo(user="bob", client="c3")
    await store.add_presence("room", "c1", alice1, 60.0)
    await store.add_presence("room", "c2", alice2, 60.0)
    await store.add_presence("room", "c3", bob, 60.0)
    await store.add_presence("room", "c3", bob, 60.0)  # a refresh, not a new entry
    await store.add_presence("other", "c9", bob, 60.0)
    assert await store.presence("room") == {"c1": alice1, "c2": alice2, "c3": bob}
    assert await store.presence_stats("room") == (3, 2)
    await store.remove_presence("room", "c3")
    await store.remove_presence("room", "missing")
    assert await store.presence_stats("room") == (2, 1)
    await store.remove_presence("room", "c1")
    await store.remove_presence("room", "c2")
    assert await store.presence("room") == {}
    assert await store.presence_stats("other") == (1, 1)


async def test_presence_batch_refresh(engine: Engine) -> None:
    store = await engine.presence()
    entries = [
        (f"room{n % 3}", f"c{n}", ClientInfo(user=f"u{n % 5}", client=f"c{n}")) for n in range(30)
    ]
    await store.add_presence_many(entries, 60.0)
    await store.add_presence_many(entries[:3], 0.3)  # a refresh with a shorter ttl
    assert await store.presence_stats("room1") == (10, 5)

    async def refreshed_short_gone() -> bool:
        return len(await store.presence("room0")) == 9

    await eventually(refreshed_short_gone, "the re-added short entry to expire", within=1.5)
    await store.add_presence_many([], 60.0)


async def test_presence_entries_expire(engine: Engine) -> None:
    store = await engine.presence()
    await store.add_presence("room", "short", ClientInfo(user="a", client="short"), 0.3)
    await store.add_presence("room", "long", ClientInfo(user="b", client="long"), 60.0)

    async def short_gone() -> bool:
        return set(await store.presence("room")) == {"long"}

    await eventually(short_gone, "the unrefreshed entry to expire", within=1.5)
    assert await store.presence_stats("room") == (1, 1)


# --------------------------------------------------------------------------- data loss


async def test_lost_data_means_a_new_epoch(engine: Engine) -> None:
    if engine.kind == "memory":
        pytest.skip("memory has no store to flush: a restart is a new MemoryBroker")
    broker, _ = await engine.node()
    before = await broker.publish("chat", pub(1), history=KEEP)
    await engine.lose_data()
    after = await broker.publish("chat", pub(2), history=KEEP)
    assert before is not None and after is not None
    assert after.offset == 1 and after.epoch != before.epoch
    publications, top = await broker.history("chat", limit=-1)
    assert [p.offset for p in publications] == [1] and top == after


async def test_resubscribes_after_the_pubsub_connection_is_killed(
    redis_engine: RedisEngine,
) -> None:
    engine = redis_engine
    broker, seen = await engine.node("victim")
    await broker.subscribe("chat")
    await broker.publish("chat", pub(1), history=KEEP)
    await seen.wait(lambda: len(seen.publications["chat"]) == 1, "the first publication")
    assert await engine.kill_pubsub("victim") >= 1
    await seen.wait(lambda: bool(seen.resubscribed), "handle_resubscribed")
    assert seen.resubscribed == [["chat"]]
    await broker.publish("chat", pub(2), history=KEEP)
    await seen.wait(lambda: len(seen.publications["chat"]) == 2, "delivery after the reconnect")

    async def control_heard() -> bool:  # the control channel may sit on another server
        await broker.publish_control(b"after")
        return bool(seen.controls)

    await eventually(control_heard, "control messages after the reconnect")
    assert seen.offsets("chat") == [1, 2]


# --------------------------------------------------------------------------- unavailability


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_unreachable_redis_raises_broker_unavailable_in_time(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"
    broker = RedisBroker(url, prefix="tidings-unreachable", timeout=0.5)
    presence = RedisPresence(url, prefix="tidings-unreachable", timeout=0.5)
    calls = [
        lambda: broker.publish("chat", pub(1), history=KEEP),
        lambda: broker.publish("chat", pub(1)),
        lambda: broker.history("chat", limit=-1),
        lambda: broker.publish_control(b"x"),
        lambda: broker.start(),
        lambda: presence.presence_stats("room"),
    ]
    try:
        for call in calls:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await call()
            assert time.monotonic() - started < 1.5
    finally:
        await broker.close()
        await presence.close()


async def test_a_frozen_server_raises_broker_unavailable_in_time(
    private_redis: RedisServer,
) -> None:
    broker = RedisBroker(private_redis.url, prefix="tidings-frozen", timeout=0.5)
    try:
        await broker.start()
        assert await broker.publish("chat", pub(1), history=KEEP) is not None
        private_redis.pause()
        try:
            for call in (
                lambda: broker.publish("chat", pub(2), history=KEEP),
                lambda: broker.subscribe("fresh"),
                lambda: broker.history("chat"),
            ):
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable):
                    await call()
                assert 0.4 < time.monotonic() - started < 1.5
        finally:
            private_redis.resume()
        position = await broker.publish("chat", pub(3), history=KEEP)
        # The timed-out publish sat in the frozen server's socket buffer and may have run:
        # BrokerUnavailable after a timeout means "outcome unknown" (retry with an idempotency key).
        assert position is not None and position.offset in (2, 3)
    finally:
        await broker.close()


async def test_one_round_trip_per_publication(private_redis: RedisServer) -> None:
    """Each publish is one EVALSHA and nothing else: MONITOR shows every command a
    client sends, and marks the ones a script runs as ``lua``."""
    admin = Redis.from_url(private_redis.url)
    marker = Redis.from_url(private_redis.url)
    broker = RedisBroker(private_redis.url, prefix="tidings-roundtrips")
    sent: list[str] = []
    try:
        await broker.publish("warm-up", pub(0), history=KEEP)  # loads the script, opens the pool
        await marker.ping()  # its connection handshake happens before MONITOR starts
        async with admin.monitor() as monitor:

            async def collect() -> None:
                while True:
                    entry = await monitor.next_command()
                    if "monitor-done" in entry["command"]:
                        return
                    if entry["client_type"] != "lua":
                        sent.append(entry["command"].split()[0].upper())

            collector = asyncio.create_task(collect())
            for i in range(50):
                await broker.publish(f"chat{i % 5}", pub(i), history=KEEP, idempotency_key=f"k{i}")
            await marker.echo("monitor-done")
            await asyncio.wait_for(collector, 5.0)
        assert sent == ["EVALSHA"] * 50
    finally:
        await broker.close()
        await admin.flushall()
        await admin.aclose()
        await marker.aclose()


@pytest.mark.parametrize("server", ["private_redis", "redis_cluster"])
async def test_every_script_runs_again_after_the_server_forgets_it(
    server: str, request: pytest.FixtureRequest
) -> None:
    """A server that lost its script cache (a restart, ``SCRIPT FLUSH``) answers
    NOSCRIPT to EVALSHA: each script, and the pipelined presence refresh, sends
    its source again and the call succeeds."""
    started: RedisServer | Cluster = request.getfixturevalue(server)
    ports = started.ports if isinstance(started, Cluster) else [started.port]
    admins = [Redis.from_url(f"redis://127.0.0.1:{port}/0") for port in ports]
    broker = RedisBroker(started.url, prefix="tidings-noscript")
    presence = RedisPresence(started.url, prefix="tidings-noscript")
    seen = Recorder()
    broker.set_event_handler(seen)
    alice = ClientInfo(user="alice", client="c1")
    try:
        await broker.start()
        await broker.subscribe("chat")
        await broker.publish("chat", pub(1), history=KEEP)
        await presence.add_presence("room", "c1", alice, 60.0)
        for admin in admins:
            await admin.script_flush()
        position = await broker.publish("chat", pub(2), history=KEEP)
        publications, top = await broker.history("chat", limit=-1)
        await broker.publish_join("chat", alice)
        await presence.add_presence_many([("room", "c2", alice), ("hall", "c3", alice)], 60.0)
        await presence.add_presence("room", "c4", alice, 60.0)
        assert position is not None and top == position
        assert [p.offset for p in publications] == [1, 2]
        await seen.wait(lambda: seen.offsets("chat") == [1, 2], "both publications")
        await seen.wait(lambda: seen.joins["chat"] == [alice], "the join")
        assert set(await presence.presence("room")) == {"c1", "c2", "c4"}
        assert await presence.presence_stats("hall") == (1, 1)
        await presence.remove_presence("room", "c1")
        assert await presence.presence_stats("room") == (2, 1)
    finally:
        await broker.close()
        await presence.close()
        for admin in admins:
            await admin.flushall()
            await admin.aclose()


# --------------------------------------------------------------------------- topologies


async def test_sentinel_url_finds_the_master(private_redis: RedisServer) -> None:
    with sentinel(private_redis, "tidings-master") as port:
        url = f"redis+sentinel://127.0.0.1:{port}/tidings-master"
        broker = RedisBroker(url, prefix="tidings-sentinel")
        presence = RedisPresence(url, prefix="tidings-sentinel")
        seen = Recorder()
        broker.set_event_handler(seen)
        try:
            await broker.start()
            await broker.subscribe("chat")
            assert await broker.publish("chat", pub(1), history=KEEP) is not None
            await seen.wait(lambda: seen.offsets("chat") == [1], "delivery through sentinel")
            await presence.add_presence("room", "c1", ClientInfo(user="u", client="c1"), 60.0)
            assert await presence.presence_stats("room") == (1, 1)
        finally:
            await broker.close()
            await presence.close()
            async with Redis.from_url(private_redis.url) as admin:
                await admin.flushall()


async def test_cluster_follows_a_slot_that_moves(redis_cluster: Cluster) -> None:
    """Redis drops sharded subscriptions of a slot that moves; the broker follows it."""

    prefix = "tidings-moving"
    broker = RedisBroker(redis_cluster.url, prefix=prefix, name="mover")
    seen = Recorder()
    broker.set_event_handler(seen)
    admin = RedisCluster.from_url(f"redis://127.0.0.1:{redis_cluster.ports[0]}")
    try:
        await broker.start()
        await broker.subscribe("roaming")
        await admin.initialize()
        slot = key_slot(f"{prefix}:{{roaming}}:pub".encode())
        source = admin.get_node_from_key(f"{prefix}:{{roaming}}:pub")
        target = next(n for n in admin.get_primaries() if n.name != source.name)
        ids = {n.name: await admin.cluster_myid(n) for n in admin.get_primaries()}
        for node in admin.get_primaries():  # the slot is empty: reassign it directly
            await admin.execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", ids[target.name], target_nodes=node
            )
        await seen.wait(lambda: ["roaming"] in seen.resubscribed, "the channel to follow its slot")
        position = await broker.publish("roaming", pub(1), history=KEEP)
        assert position is not None
        await seen.wait(lambda: seen.offsets("roaming") == [1], "delivery from the new owner")
        await broker.history("roaming", limit=-1)
    finally:
        await broker.close()
        await admin.flushall(target_nodes=RedisCluster.PRIMARIES)
        await admin.aclose()
