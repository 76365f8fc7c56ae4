"""``TestClient``: test an application's handlers in-process, with no socket.

Like Starlette's ``TestClient`` or Phoenix's ``ChannelTest``, it drives the real
thing: a :class:`~tidings.session.Session` on the application's node, so
handlers, typed channels, permissions and limits behave exactly as for a
WebSocket client. Only the socket is replaced: commands go in as protocol
frames and replies and pushes come back as documents, decoded for you::

    async with TestClient(rt, headers={"cookie": "sid=abc"}) as client:
        sub = await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        pub = await sub.next(timeout=1)          # .data, .offset, .info
        answer = await client.rpc("quote", {"symbol": "ACME"})

Refusals raise :class:`~tidings.ClientError` with the protocol's code; a
disconnect raises :class:`~tidings.ClientDisconnect` from the call that
caused it (or from the next one).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from tidings.application import ClientInfo, History, PresenceStats, Publication, Tidings
from tidings.errors import Disconnect
from tidings.hooks import ClientDisconnect, ClientError
from tidings.protocol.wire import WireFormat
from tidings.session import RequestInfo, Session
from tidings.session.transport import parse_cookies

__all__ = ["TestClient", "TestMap", "TestSubscription"]


class _DocumentsWire(WireFormat):
    """Documents joined by ``\\n``: a WebSocket text frame's payload, without the header."""

    __slots__ = ()

    def frame(self, documents: Sequence[bytes]) -> bytes:
        return b"\n".join(documents)


_WIRE = _DocumentsWire("test", envelope=True)


class _InProcessTransport:
    """The session's side of the fake connection: it decodes what it is given at once."""

    name = "websocket"
    wire: WireFormat = _WIRE
    unidirectional = False
    emulation = False

    def __init__(self, client: TestClient) -> None:
        self._client = client
        self.closed_with: Disconnect | None = None

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    def write(self, data: bytes) -> None:
        if self.closed_with is None:
            for line in data.split(b"\n"):
                self._client._receive(msgspec.json.decode(line))

    def close(self, disconnect: Disconnect) -> None:
        if self.closed_with is None:
            self.closed_with = disconnect
            self._client._closed(disconnect)

    def write_buffer_size(self) -> int:
        return 0


def _client_info(info: dict[str, Any] | None) -> ClientInfo | None:
    if not info:
        return None
    client, user = info.get("client", ""), info.get("user", "")
    return ClientInfo(client, user, info.get("conn_info"), info.get("chan_info"))


def _publication(pub: dict[str, Any]) -> Publication:
    return Publication(
        data=pub.get("data"),
        offset=pub.get("offset", 0),
        info=_client_info(pub.get("info")),
        tags=pub.get("tags"),
    )


class TestSubscription:
    """A subscription of a :class:`TestClient`: publications and join/leave, in order."""

    __test__ = False  # not a pytest test class

    def __init__(self, client: TestClient, channel: str, result: dict[str, Any]) -> None:
        self.client = client
        self.channel = channel
        self.result = result
        """The subscribe reply (``recoverable``, ``epoch``, ``offset``, ``publications``...)."""
        self.publications: asyncio.Queue[Publication] = asyncio.Queue()
        self.joins: asyncio.Queue[ClientInfo] = asyncio.Queue()
        self.leaves: asyncio.Queue[ClientInfo] = asyncio.Queue()
        self.unsubscribed: tuple[int, str] | None = None

    @property
    def offset(self) -> int:
        return int(self.result.get("offset", 0))

    @property
    def epoch(self) -> str:
        return str(self.result.get("epoch", ""))

    async def next(self, timeout: float = 1.0) -> Publication:
        """The next publication; ``TimeoutError`` when none comes within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self.publications.get()

    async def unsubscribe(self) -> None:
        await self.client._call("unsubscribe", {"channel": self.channel})
        self.client._subscriptions.pop(self.channel, None)

    async def publish(self, data: Any) -> None:
        await self.client.publish(self.channel, data)


class TestMap(TestSubscription):
    """A map subscription of a :class:`TestClient`: ``state`` is ``{key: data}`` as the
    server holds it, kept up to date by every change (``next()`` returns each change)."""

    def __init__(self, client: TestClient, channel: str, result: dict[str, Any]) -> None:
        super().__init__(client, channel, result)
        self.state: dict[str, Any] = {}

    def _page(self, reply: dict[str, Any]) -> None:
        """One reply of the subscribe flow: a state page, a stream page, or the live one."""
        for entry in reply.get("state", ()):
            self._apply(entry)
        phase = reply.get("phase", 0)
        if phase != 2:
            for entry in reply.get("publications", ()):
                self._apply(entry)
        if phase == 0:
            self.result = reply

    def _apply(self, entry: dict[str, Any]) -> None:
        key = entry.get("key", "")
        if entry.get("removed"):
            self.state.pop(key, None)
        else:
            self.state[key] = entry.get("data")


class TestClient:
    """An in-process client of a :class:`Tidings` application (see the module docstring).

    ``headers`` and ``cookies`` are what the HTTP request that opened the
    connection would carry (a ``cookie`` header is parsed too); ``token`` and
    ``data`` go into the connect command.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: Tidings,
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | None = None,
        token: str = "",
        data: Any = None,
        remote_addr: str = "127.0.0.1",
        timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self._headers = {name.lower(): value for name, value in (headers or {}).items()}
        self._cookies = dict(parse_cookies(self._headers.get("cookie", "")))
        self._cookies.update(cookies or {})
        self._token = token
        self._data = data
        self._remote = remote_addr
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._subscribing: dict[int, TestSubscription] = {}
        self._subscriptions: dict[str, TestSubscription] = {}
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        """Asynchronous ``message`` pushes sent to this client (``node``'s send)."""
        self.disconnected: Disconnect | None = None
        self.connect_result: dict[str, Any] = {}
        self._session: Session | None = None
        self._started_app = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> TestClient:
        if not self.app._started:
            await self.app.start()
            self._started_app = True
        self._session = Session(
            self.app.node,
            _InProcessTransport(self),
            RequestInfo(self._remote, self._headers, self._cookies),
        )
        params: dict[str, Any] = {}
        if self._token:
            params["token"] = self._token
        if self._data is not None:
            params["data"] = self._data
        self.connect_result = await self._call("connect", params)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None and not self._session.closed:
            self._session.close(Disconnect(3000, "connection closed"))
        if self._started_app:
            await self.app.stop()

    @property
    def client_id(self) -> str:
        return str(self.connect_result.get("client", ""))

    @property
    def user(self) -> str:
        return self._session.user if self._session is not None else ""

    # ------------------------------------------------------------------ commands

    async def subscribe(
        self,
        channel: str,
        *,
        token: str = "",
        data: Any = None,
        recover: bool = False,
        since: tuple[int, str] | None = None,
        join_leave: bool = False,
    ) -> TestSubscription:
        """Subscribe; with ``since=(offset, epoch)`` recover what was missed from there."""
        params: dict[str, Any] = {"channel": channel}
        if token:
            params["token"] = token
        if data is not None:
            params["data"] = data
        if join_leave:
            params["join_leave"] = True
        if since is not None or recover:
            offset, epoch = since or (0, "")
            params.update(recover=True, recoverable=True, offset=offset, epoch=epoch)
        subscription = TestSubscription(self, channel, {})
        self._subscriptions[channel] = subscription
        try:
            await self._call("subscribe", params, subscription)
        except BaseException:
            self._subscriptions.pop(channel, None)
            raise
        return subscription

    async def publish(self, channel: str, data: Any) -> None:
        await self._call("publish", {"channel": channel, "data": data})

    async def subscribe_map(self, channel: str, *, token: str = "", data: Any = None) -> TestMap:
        """Subscribe to a map channel as centrifuge-js's ``newMapSubscription`` does: the
        state page by page, then the stream, then live; ``.state`` follows every change."""
        subscription = TestMap(self, channel, {})
        self._subscriptions[channel] = subscription
        params: dict[str, Any] = {"channel": channel, "type": 1, "phase": 2}
        if token:
            params["token"] = token
        if data is not None:
            params["data"] = data
        try:
            while True:
                result = await self._call("subscribe", params, subscription)
                phase = result.get("phase", 0)
                if phase == 0:
                    return subscription
                params = {
                    "channel": channel,
                    "type": 1,
                    "offset": result.get("offset", 0),
                    "epoch": result.get("epoch", ""),
                }
                if token:
                    params["token"] = token
                if phase == 2 and result.get("cursor"):
                    params.update(phase=2, cursor=result["cursor"])
                else:
                    params["phase"] = 1
        except BaseException:
            self._subscriptions.pop(channel, None)
            raise

    async def map_publish(self, channel: str, key: str, data: Any) -> None:
        """A client write of ``key`` (``publish`` with ``type: 1``), where the namespace or
        ``on_publish`` allows it."""
        await self._call("publish", {"channel": channel, "type": 1, "key": key, "data": data})

    async def map_remove(self, channel: str, key: str) -> None:
        await self._call("publish", {"channel": channel, "type": 1, "key": key, "removed": True})

    async def rpc(self, method: str, params: Any = None) -> Any:
        """Call an RPC; returns its result decoded (``None`` when it has none)."""
        result = await self._call("rpc", {"method": method, "data": params})
        return result.get("data")

    async def send(self, data: Any) -> None:
        """An asynchronous message to the application's ``on_message`` (no reply)."""
        session = self._live_session()
        session.handle_frame(msgspec.json.encode({"send": {"data": data}}))
        await session.idle()
        self._raise_if_disconnected()

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        result = await self._call("presence", {"channel": channel})
        presence = result.get("presence", {})
        return {client: info for client, entry in presence.items() if (info := _client_info(entry))}

    async def presence_stats(self, channel: str) -> PresenceStats:
        result = await self._call("presence_stats", {"channel": channel})
        return PresenceStats(result.get("num_clients", 0), result.get("num_users", 0))

    async def history(
        self, channel: str, *, limit: int = 0, since: tuple[int, str] | None = None
    ) -> History:
        params: dict[str, Any] = {"channel": channel, "limit": limit}
        if since is not None:
            params["since"] = {"offset": since[0], "epoch": since[1]}
        result = await self._call("history", params)
        return History(
            [_publication(pub) for pub in result.get("publications", ())],
            result.get("offset", 0),
            result.get("epoch", ""),
        )

    # ------------------------------------------------------------------ plumbing

    def _live_session(self) -> Session:
        self._raise_if_disconnected()
        if self._session is None:
            raise RuntimeError("use the client inside `async with TestClient(...)`")
        return self._session

    def _raise_if_disconnected(self) -> None:
        if self.disconnected is not None:
            raise ClientDisconnect(self.disconnected.code, self.disconnected.reason)

    async def _call(
        self,
        method: str,
        params: dict[str, Any],
        subscription: TestSubscription | None = None,
    ) -> dict[str, Any]:
        session = self._live_session()
        command_id = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = reply
        if subscription is not None:
            self._subscribing[command_id] = subscription
        session.handle_frame(msgspec.json.encode({"id": command_id, method: params}))
        try:
            async with asyncio.timeout(self.timeout):
                answer = await reply
        finally:
            self._waiting.pop(command_id, None)
            self._subscribing.pop(command_id, None)
        error = answer.get("error")
        if error is not None:
            raise ClientError(error.get("code", 0), error.get("message", ""))
        result: dict[str, Any] = answer.get(method) or {}
        return result

    def _receive(self, document: dict[str, Any]) -> None:
        """A document the session wrote: a reply (by id), a push, or a ping."""
        command_id = document.get("id")
        if command_id:
            subscribing = self._subscribing.get(command_id)
            if isinstance(subscribing, TestMap):
                reply = document.get("subscribe")
                if reply is not None:  # applied now: live changes follow this reply at once
                    subscribing._page(reply)
            elif subscribing is not None and "subscribe" in document:
                # Recovered publications come before anything live, which follows at once.
                subscribing.result = document["subscribe"]
                for pub in subscribing.result.get("publications", ()):
                    subscribing.publications.put_nowait(_publication(pub))
            waiter = self._waiting.get(command_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(document)
            return
        push = document.get("push")
        if push is None:  # a server ping: answer it
            if self._session is not None:
                asyncio.get_running_loop().call_soon(self._pong)
            return
        channel = push.get("channel", "")
        subscription = self._subscriptions.get(channel)
        if "pub" in push and subscription is not None:
            if isinstance(subscription, TestMap):
                if not subscription.result:  # before the LIVE reply: the SDK drops these
                    return
                subscription._apply(push["pub"])
            subscription.publications.put_nowait(_publication(push["pub"]))
        elif "join" in push and subscription is not None:
            joined = _client_info(push["join"]["info"])
            if joined is not None:
                subscription.joins.put_nowait(joined)
        elif "leave" in push and subscription is not None:
            left = _client_info(push["leave"]["info"])
            if left is not None:
                subscription.leaves.put_nowait(left)
        elif "unsubscribe" in push and subscription is not None:
            detail = push["unsubscribe"]
            subscription.unsubscribed = (detail.get("code", 0), detail.get("reason", ""))
            self._subscriptions.pop(channel, None)
        elif "message" in push:
            self.messages.put_nowait(push["message"].get("data"))

    def _pong(self) -> None:
        if self._session is not None and not self._session.closed:
            self._session.handle_frame(b"{}")

    def _closed(self, disconnect: Disconnect) -> None:
        self.disconnected = disconnect
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ClientDisconnect(disconnect.code, disconnect.reason))
