"""PyPI ``cent`` (the Centrifugo server API client, unmodified) against tidings' ``/api``.

The server runs in the test's event loop, so the blocking ``cent.Client`` is
called through ``asyncio.to_thread``; ``cent.AsyncClient`` is awaited directly.
Effects on connections are observed through centrifuge-python clients.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cent import (
    BatchRequest,
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Client,
    Disconnect,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.dto import BroadcastResult, HistoryResult, PresenceStatsResult, PublishResult

from tests.compat.conftest import (
    EVENT_TIMEOUT,
    ApiFactory,
    EventLog,
    PyClientFactory,
    py_subscription_events,
)
from tests.conftest import API_KEY, RunningServer, token
from tests.support.polling import eventually


async def connected(
    py_client: PyClientFactory, server: RunningServer, user: str, *channels: str, **options: Any
) -> tuple[Any, EventLog, str]:
    client, log = py_client(server.ws_url, token=token(user, **options))
    await client.connect()
    client_id = (await log.next("connected", "client")).client
    for channel in channels:
        sub = client.new_subscription(channel, events=py_subscription_events(log, channel))
        await sub.subscribe()
        await sub.ready(timeout=EVENT_TIMEOUT)
    return client, log, client_id


async def test_publish_returns_offset_and_epoch(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, log, _ = await connected(py_client, server, "alice", "chat:pub")
    api = cent_api(server)
    first = await api.publish(PublishRequest(channel="chat:pub", data={"n": 1}))
    second = await api.publish(
        PublishRequest(channel="chat:pub", data={"n": 2}, tags={"kind": "test"})
    )
    assert (first.offset, second.offset) == (1, 2)
    assert len(first.epoch) == 8 and second.epoch == first.epoch
    publications = await log.collect("publication", 2, "chat:pub")
    assert [(ctx.pub.data, ctx.pub.offset) for ctx in publications] == [
        ({"n": 1}, 1),
        ({"n": 2}, 2),
    ]
    assert publications[0].pub.info is None
    assert publications[1].pub.tags == {"kind": "test"}

    without_history = await api.publish(PublishRequest(channel="open:x", data={"n": 3}))
    assert (without_history.offset, without_history.epoch) == (0, "")


async def test_sync_client_through_a_thread(server: RunningServer) -> None:
    def publish_and_read() -> tuple[PublishResult, HistoryResult]:
        with Client(f"{server.http_url}/api", API_KEY, timeout=10.0) as api:
            published = api.publish(PublishRequest(channel="chat:sync", data={"text": "hi"}))
            history = api.history(HistoryRequest(channel="chat:sync", limit=10))
            return published, history

    published, history = await asyncio.to_thread(publish_and_read)
    assert published.offset == 1
    assert [p.data for p in history.publications] == [{"text": "hi"}]
    assert (history.offset, history.epoch) == (1, published.epoch)


async def test_broadcast_reports_each_channel(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, log, _ = await connected(py_client, server, "alice", "chat:b1", "open:b2")
    result = await cent_api(server).broadcast(
        BroadcastRequest(channels=["chat:b1", "open:b2", "nowhere:b3"], data={"all": True})
    )
    assert isinstance(result, BroadcastResult) and len(result.responses) == 3
    first, second, third = result.responses
    assert first.error is None and first.result is not None and first.result.offset == 1
    assert second.error is None and second.result is not None and second.result.offset == 0
    assert third.error is not None and (third.error.code, third.error.message) == (
        102,
        "unknown channel",
    )
    assert (await log.next("publication", "chat:b1")).pub.data == {"all": True}
    assert (await log.next("publication", "open:b2")).pub.data == {"all": True}


async def test_subscribe_and_unsubscribe_a_user(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, log, client_id = await connected(py_client, server, "carol")
    api = cent_api(server)
    await api.subscribe(SubscribeRequest(user="carol", channel="chat:srv", info={"seat": 7}))
    subscribed = await log.next("subscribed", "client")
    assert subscribed.channel == "chat:srv" and subscribed.recoverable
    presence = await api.presence(PresenceRequest(channel="chat:srv"))
    assert presence.presence[client_id].chan_info == {"seat": 7}

    await api.publish(PublishRequest(channel="chat:srv", data={"n": 1}))
    publication = await log.next("publication", "client")
    assert (publication.channel, publication.pub.data) == ("chat:srv", {"n": 1})

    await api.unsubscribe(UnsubscribeRequest(user="carol", channel="chat:srv"))
    assert (await log.next("unsubscribed", "client")).channel == "chat:srv"
    await eventually(
        lambda: "chat:srv" not in server.node.clients[client_id].subscriptions,
        what="the server to drop the subscription",
        within=EVENT_TIMEOUT,
    )


async def test_subscribe_with_recover_since_delivers_missed_publications(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    positions = [await server.node.publish("chat:since", {"n": n}) for n in (1, 2, 3)]
    _, log, _ = await connected(py_client, server, "carol")
    since = StreamPosition(offset=1, epoch=positions[0].epoch)
    await cent_api(server).subscribe(
        SubscribeRequest(user="carol", channel="chat:since", recover_since=since)
    )
    await log.next("subscribed", "client")
    await server.node.publish("chat:since", {"n": 4})
    await log.next("publication", "client", where=lambda ctx: ctx.pub.data["n"] == 4)
    assert [e.ctx.pub.data["n"] for e in log.named("publication")] == [2, 3, 4]


async def test_unsubscribe_a_client_side_subscription(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, log, _ = await connected(py_client, server, "carol", "chat:mine")
    await cent_api(server).unsubscribe(UnsubscribeRequest(user="carol", channel="chat:mine"))
    unsubscribed = await log.next("unsubscribed", "chat:mine")
    assert (unsubscribed.code, unsubscribed.reason) == (2000, "server unsubscribe")


async def test_disconnect_one_client_keeps_the_whitelist(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, first_log, _ = await connected(py_client, server, "dave")
    _, second_log, second_id = await connected(py_client, server, "dave")
    api = cent_api(server)
    await api.disconnect(
        DisconnectRequest(
            user="dave", whitelist=[second_id], disconnect=Disconnect(code=4000, reason="go away")
        )
    )
    connecting = await first_log.next("connecting", "client", where=lambda ctx: ctx.code != 0)
    assert (connecting.code, connecting.reason) == (4000, "go away")  # 4000-4499 reconnect
    assert second_id in server.node.clients

    await api.disconnect(DisconnectRequest(user="dave", client=second_id))
    disconnected = await second_log.next("disconnected", "client")
    assert (disconnected.code, disconnected.reason) == (3503, "force disconnect")


async def test_refresh_moves_expiry_or_expires_the_connection(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, log, client_id = await connected(py_client, server, "erin")
    api = cent_api(server)
    session = server.node.clients[client_id]
    expire_at = int(session.expire_at or 0) + 7200
    await api.refresh(RefreshRequest(user="erin", expire_at=expire_at))
    await eventually(
        lambda: session.expire_at == expire_at, what="the new expiry", within=EVENT_TIMEOUT
    )

    await api.refresh(RefreshRequest(user="erin", expired=True))
    connecting = await log.next("connecting", "client", where=lambda ctx: ctx.code != 0)
    assert (connecting.code, connecting.reason) == (3005, "connection expired")


async def test_presence_and_presence_stats(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, _, first_id = await connected(py_client, server, "alice", "chat:room", info={"n": 1})
    _, _, second_id = await connected(py_client, server, "alice", "chat:room")
    _, _, third_id = await connected(py_client, server, "bob", "chat:room")
    api = cent_api(server)
    presence = await api.presence(PresenceRequest(channel="chat:room"))
    assert set(presence.presence) == {first_id, second_id, third_id}
    assert presence.presence[first_id].user == "alice"
    assert presence.presence[first_id].conn_info == {"n": 1}
    stats = await api.presence_stats(PresenceStatsRequest(channel="chat:room"))
    assert isinstance(stats, PresenceStatsResult)
    assert (stats.num_clients, stats.num_users) == (3, 2)


async def test_history_and_history_remove(server: RunningServer, cent_api: ApiFactory) -> None:
    api = cent_api(server)
    for n in range(1, 6):
        await api.publish(PublishRequest(channel="chat:h", data={"n": n}))
    top = await api.history(HistoryRequest(channel="chat:h"))
    assert top.publications == [] and top.offset == 5
    everything = await api.history(HistoryRequest(channel="chat:h", limit=-1))
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]
    latest = await api.history(HistoryRequest(channel="chat:h", limit=2, reverse=True))
    assert [p.data for p in latest.publications] == [{"n": 5}, {"n": 4}]
    since = await api.history(
        HistoryRequest(channel="chat:h", limit=10, since=StreamPosition(offset=3, epoch=top.epoch))
    )
    assert [p.offset for p in since.publications] == [4, 5]

    await api.history_remove(HistoryRemoveRequest(channel="chat:h"))
    removed = await api.history(HistoryRequest(channel="chat:h", limit=-1))
    assert removed.publications == []
    assert (removed.offset, removed.epoch) == (5, top.epoch)


async def test_channels_and_info(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, alice_log, _ = await connected(py_client, server, "alice", "chat:one", "chat:two")
    _, bob_log, _ = await connected(py_client, server, "bob", "chat:one", "open:three")
    api = cent_api(server)
    # One publication per channel first: see the next test for channels without any.
    for channel in ("chat:one", "chat:two", "open:three"):
        await api.publish(PublishRequest(channel=channel, data={"n": 1}))
    for log, channel in (
        (alice_log, "chat:one"),
        (alice_log, "chat:two"),
        (bob_log, "chat:one"),
        (bob_log, "open:three"),
    ):
        await log.next("publication", channel)
    channels = await api.channels(ChannelsRequest())
    counts = {name: info.num_clients for name, info in channels.channels.items()}
    assert counts == {"chat:one": 2, "chat:two": 1, "open:three": 1}
    chat = await api.channels(ChannelsRequest(pattern="chat:*"))
    assert set(chat.channels) == {"chat:one", "chat:two"}

    info = await api.info(InfoRequest())
    (node,) = info.nodes
    assert (node.uid, node.name, node.version) == (
        server.node.id,
        server.node.name,
        server.node.version,
    )
    assert (node.num_clients, node.num_users, node.num_channels, node.num_subs) == (2, 2, 3, 4)


async def test_channels_counts_subscribers_before_any_publication(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    await connected(py_client, server, "alice", "chat:quiet-room", "open:quiet-room")
    channels = await cent_api(server).channels(ChannelsRequest())
    counts = {name: info.num_clients for name, info in channels.channels.items()}
    assert counts == {"chat:quiet-room": 1, "open:quiet-room": 1}


async def test_batch(
    server: RunningServer, py_client: PyClientFactory, cent_api: ApiFactory
) -> None:
    _, log, _ = await connected(py_client, server, "alice", "chat:batch")
    for parallel in (False, True):
        result = await cent_api(server).batch(
            BatchRequest(
                requests=[
                    PublishRequest(channel="chat:batch", data={"parallel": parallel}),
                    BroadcastRequest(channels=["open:a", "open:b"], data={"n": 1}),
                    PresenceStatsRequest(channel="chat:batch"),
                    HistoryRequest(channel="chat:batch", limit=-1),
                ],
                parallel=parallel,
            )
        )
        published, broadcast, stats, history = result.replies
        assert isinstance(published, PublishResult) and published.offset >= 1
        assert isinstance(broadcast, BroadcastResult) and len(broadcast.responses) == 2
        assert isinstance(stats, PresenceStatsResult) and stats.num_clients == 1
        assert isinstance(history, HistoryResult)
        assert history.publications[-1].data == {"parallel": parallel}
        pushed = await log.next("publication", "chat:batch")
        assert pushed.pub.data == {"parallel": parallel}


async def test_wrong_key_is_unauthorized(server: RunningServer, cent_api: ApiFactory) -> None:
    with pytest.raises(CentUnauthorizedError):
        await cent_api(server, key="not-the-key").info(InfoRequest())

    def sync_publish() -> None:
        with Client(f"{server.http_url}/api", "not-the-key", timeout=10.0) as api:
            api.publish(PublishRequest(channel="chat:x", data={}))

    with pytest.raises(CentUnauthorizedError):
        await asyncio.to_thread(sync_publish)


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        pytest.param(PublishRequest(channel="nowhere:x", data={}), 102, id="unknown-namespace"),
        pytest.param(HistoryRequest(channel="open:x", limit=1), 108, id="history-off"),
        pytest.param(PresenceRequest(channel="quiet:x"), 108, id="presence-off"),
        pytest.param(PublishRequest(channel="", data={}), 107, id="empty-channel"),
        pytest.param(
            HistoryRequest(channel="chat:x", limit=1, since=StreamPosition(offset=1, epoch="x")),
            112,
            id="wrong-epoch",
        ),
    ],
)
async def test_api_errors_raise_with_their_code(
    server: RunningServer, cent_api: ApiFactory, request_: Any, code: int
) -> None:
    method = getattr(cent_api(server), request_.api_method)
    with pytest.raises(CentApiResponseError) as error:
        await method(request_)
    assert error.value.code == code
