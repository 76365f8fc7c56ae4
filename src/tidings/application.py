"""``Tidings``: the application object users hold.

It registers the application's handlers and typed channels, owns a
:class:`~tidings.node.Node` (created on first use, with the handlers wired in),
starts and stops it (``async with rt:``, ``FastAPI(lifespan=rt.lifespan)``),
serves it (``tidings serve module:rt``, or mounted with ``rt.asgi()``), and
speaks for the backend: ``await rt.publish(...)`` and the rest of the server
API, typed, working across nodes on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tidings.brokers.maps import MapEntry, MapUpdateResult
from tidings.config import Config, load_config
from tidings.errors import Disconnect, ErrorCode, ReplyError
from tidings.handlers import Handler, Handlers, encode_json
from tidings.hooks import ClientError
from tidings.listener import Listener
from tidings.node import Node, PublishResult
from tidings.protocol.codec import compact_raw
from tidings.protocol.messages import ClientInfo as WireClientInfo
from tidings.protocol.messages import Publication as WirePublication
from tidings.protocol.messages import StreamPosition

if TYPE_CHECKING:
    from tidings.server.asgi import AsgiMount

H = TypeVar("H", bound=Handler)

log = logging.getLogger("tidings.application")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A connection as presence and publications show it; ``conn_info``/``chan_info`` decoded."""

    client: str
    user: str
    conn_info: Any = None
    chan_info: Any = None


@dataclass(frozen=True, slots=True)
class Publication:
    """One message of a channel's history; ``data`` decoded."""

    data: Any
    offset: int = 0
    info: ClientInfo | None = None
    tags: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class History:
    """Publications read from a channel, and the stream's position (``offset``, ``epoch``)."""

    publications: list[Publication]
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class PresenceStats:
    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True)
class MapItem:
    """One key of a map channel (or one change of its stream); ``data`` decoded.

    ``offset`` is the stream offset of the change that last wrote it; a change may
    be a removal (``removed``, no data).
    """

    key: str
    data: Any = None
    offset: int = 0
    removed: bool = False
    tags: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class MapSnapshot:
    """A map channel's entries (a page when ``cursor`` is set) and its position."""

    items: list[MapItem]
    offset: int
    epoch: str
    cursor: str = ""
    """Pass it back for the next page; empty on the last one."""

    def as_dict(self) -> dict[str, Any]:
        """``{key: data}`` of the entries."""
        return {item.key: item.data for item in self.items}


@dataclass(frozen=True, slots=True)
class MapChanges:
    """Changes read from a map channel's stream, and its position."""

    changes: list[MapItem]
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class MapUpdate:
    """What a map write did: the position after it, or why it changed nothing."""

    offset: int
    epoch: str
    suppressed: bool = False
    reason: str = ""
    """``idempotency``, ``version``, ``key_exists``, ``key_not_found`` when suppressed."""


def _decoded(raw: bytes) -> Any:
    return msgspec.json.decode(raw) if raw else None


def _client_info(info: WireClientInfo | None) -> ClientInfo | None:
    if info is None:
        return None
    return ClientInfo(
        info.client, info.user, _decoded(bytes(info.conn_info)), _decoded(bytes(info.chan_info))
    )


def _publication(publication: WirePublication) -> Publication:
    return Publication(
        data=_decoded(bytes(publication.data)),
        offset=publication.offset,
        info=_client_info(publication.info),
        tags=publication.tags,
    )


def _map_item(entry: MapEntry) -> MapItem:
    return MapItem(entry.key, _decoded(entry.data), entry.offset, entry.removed, entry.tags)


def _map_update(result: MapUpdateResult) -> MapUpdate:
    reason = str(result.suppress_reason.value) if result.suppressed else ""
    return MapUpdate(result.position.offset, result.position.epoch, result.suppressed, reason)


def _client_error(exc: ReplyError) -> ClientError:
    return ClientError(exc.error.code, exc.error.message)


def _json(value: Any) -> bytes:
    """JSON for a value from the backend; already-encoded ``bytes`` or Raw are kept."""
    if isinstance(value, msgspec.Raw):
        return compact_raw(bytes(value))
    return encode_json(value)


def _require_async(function: Any, what: str) -> None:
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"{what} hook {function.__qualname__} must be `async def`")


# --------------------------------------------------------------------------- the application


class Tidings:
    """A tidings application: configuration, handlers, and the node that runs them.

    ``Tidings()`` uses the defaults (and ``TIDINGS_*`` variables);
    ``Tidings("tidings.toml")`` reads a file; ``Tidings(config, **overrides)``
    takes a :class:`Config` or a path plus option overrides: the same layers as
    ``tidings serve``.
    """

    def __init__(self, config: str | Path | Config | None = None, **overrides: Any) -> None:
        if isinstance(config, Config):
            self.config = config.with_overrides(overrides) if overrides else config
        else:
            self.config = load_config(config, overrides=overrides)
        if self.config.demo == "auto":
            # An application decides who connects (tokens, on_connect): the built-in demo's
            # anonymous namespace stays closed unless asked for with demo = "on".
            self.config = self.config.with_overrides({"demo": "off"})
        self.handlers = Handlers(lambda: self.config.handler_timeout)
        self.static_routes: list[tuple[str, Path]] = []
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        self._node: Node | None = None
        self._started = False

    # ------------------------------------------------------------------ handlers

    def on_connect(self, function: H) -> H:
        """``async def connect(ctx) -> ConnectResult | None``: every connection, after its
        token (if any) is verified; may authenticate, re-label or refuse it."""
        self.handlers.add("connect", function)
        return function

    def on_refresh(self, function: H) -> H:
        """``async def refresh(ctx) -> ConnectResult | None``: a connection whose
        ``expire_at`` came from ``on_connect`` is expiring; a later ``expire_at`` extends it."""
        self.handlers.add("refresh", function)
        return function

    def on_subscribe(self, pattern: str) -> Callable[[H], H]:
        """``async def join(ctx) -> SubscribeResult | None`` for channels matching the glob
        ``pattern``: it replaces the namespace's ``allow_subscribe_*`` rules."""

        def register(function: H) -> H:
            self.handlers.add("subscribe", function, pattern)
            return function

        return register

    def on_sub_refresh(self, pattern: str) -> Callable[[H], H]:
        """``async def still_allowed(ctx) -> SubscribeResult | None``: a subscription whose
        ``expire_at`` came from ``on_subscribe`` is expiring."""

        def register(function: H) -> H:
            self.handlers.add("sub_refresh", function, pattern)
            return function

        return register

    def on_publish(self, pattern: str) -> Callable[[H], H]:
        """``async def post(ctx, data: Model) -> Model | dict | None``: client publications
        into matching channels, validated against the annotation; the return value
        replaces the data (``None``: as sent). It replaces ``allow_publish_*``."""

        def register(function: H) -> H:
            self.handlers.add("publish", function, pattern)
            return function

        return register

    def rpc(self, method: str) -> Callable[[H], H]:
        """``async def quote(ctx, params: Model) -> Any``: the RPC ``method``; params validated
        against the annotation, the result encoded as JSON."""

        def register(function: H) -> H:
            self.handlers.add("rpc", function, method)
            return function

        return register

    def on_message(self, function: H) -> H:
        """``async def message(ctx, data) -> None``: a client's asynchronous ``send``."""
        self.handlers.add("message", function)
        return function

    def on_disconnect(self, function: H) -> H:
        """``async def gone(ctx) -> None``: a connected client went away (any reason)."""
        self.handlers.add("disconnect", function)
        return function

    def channel(self, pattern: str, *, schema: Any) -> None:
        """A typed channel: every publication into channels matching ``pattern``, from any
        source (clients, the HTTP API, ``rt.publish``), must fit ``schema``."""
        self.handlers.add_channel(pattern, schema)

    def namespace(self, name: str, **options: Any) -> None:
        """Configure the namespace ``name`` in code, with the options its TOML table would
        have (``rt.namespace("chat", history_size=100, history_ttl="300s", presence=True)``).
        Only before the node exists."""
        if self._node is not None:
            raise RuntimeError("namespaces are set before the node starts")
        self.config = self.config.with_namespace(name, options)

    def on_startup(self, function: H) -> H:
        """``async def start() -> None``: runs once the node has started (open clients,
        start background tasks); ``tidings serve`` and every worker run it too."""
        _require_async(function, "on_startup")
        self._startup.append(function)
        return function

    def on_shutdown(self, function: H) -> H:
        """``async def stop() -> None``: runs before the node stops (stop background tasks)."""
        _require_async(function, "on_shutdown")
        self._shutdown.append(function)
        return function

    def static(self, prefix: str, directory: str | Path) -> None:
        """Serve the files under ``directory`` at the URL ``prefix`` on the standalone server
        (``rt.static("/", Path(__file__).parent / "static")``: the application's pages).
        Mounted in an ASGI framework, serve them with the framework's own static files."""
        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"static files: {str(path)!r} is not a directory")
        self.static_routes.append((prefix, path))

    # ------------------------------------------------------------------ the node

    @property
    def node(self) -> Node:
        """The node this application runs on (created on first use)."""
        if self._node is None:
            self._node = Node(self.config)
            self._node.hooks = self.handlers
            self.handlers.observers.append(self._node.metrics.handler_duration)
            self.handlers.tracing = self._node.tracing
        return self._node

    def use_config(self, config: Config) -> None:
        """Serve with ``config`` instead (the CLI's flags on top of the application's own).

        Only before the node exists: a running node keeps its configuration.
        """
        if self._node is not None:
            raise RuntimeError("the node already runs with its configuration")
        self.config = config

    async def start(self) -> None:
        """Start the node (its broker connection, timers), then the ``on_startup`` hooks.
        ``async with rt:`` and ``tidings serve`` do it."""
        if not self._started:
            self._started = True
            await self.node.start()
            for hook in self._startup:
                await hook()

    async def stop(self) -> None:
        """Run the ``on_shutdown`` hooks, then disconnect every client (3001) and stop."""
        if self._started:
            self._started = False
            try:
                for hook in self._shutdown:
                    await hook()
            finally:
                await self.node.shutdown()

    async def stop_within(self, timeout: float) -> None:
        """:meth:`stop`, bounded by ``timeout`` seconds; a failing hook is logged."""
        try:
            await asyncio.wait_for(self.stop(), timeout)
        except TimeoutError:
            log.warning("the application's shutdown ran past %s s", timeout)
        except Exception:
            log.exception("the application's shutdown failed")

    async def __aenter__(self) -> Tidings:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def asgi(self) -> AsgiMount:
        """An ASGI 3 application serving this node's endpoints where it is mounted:
        ``app.mount("/rt", rt.asgi())`` in FastAPI or Starlette, with
        ``FastAPI(lifespan=rt.lifespan)``; or on its own (``uvicorn module:app``
        with ``app = rt.asgi()``), where it answers the lifespan itself.

        Each call makes a new mount; every mount and a standalone listener of the
        same process share the node, so ``await rt.publish(...)`` reaches them all.
        """
        from tidings.server.asgi import AsgiMount

        return AsgiMount(self.node, start=self.start, stop=self.stop)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """For ASGI frameworks: ``FastAPI(lifespan=rt.lifespan)``."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # ------------------------------------------------------------------ server API

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        skip_history: bool = False,
        tags: Mapping[str, str] | None = None,
        idempotency_key: str = "",
        key: str = "",
        delta: bool | None = None,
    ) -> PublishResult:
        """Publish to every subscriber of ``channel`` on every node.

        ``data`` is anything JSON-encodable (dicts, Structs, dataclasses, pydantic
        models). Channel permissions do not apply; a typed channel's schema does:
        an invalid payload raises :class:`ClientError` 107. ``key`` names what the
        publication is the latest value of (conflating channels keep the latest per
        key for slow subscribers); ``delta`` sends it as a fossil delta to subscribers
        that negotiated one (``None``: the namespace's ``delta_publish``).
        """
        try:
            return await self.node.publish(
                channel,
                msgspec.Raw(_json(data)),
                skip_history=skip_history,
                tags=dict(tags) if tags else None,
                idempotency_key=idempotency_key,
                key=key,
                delta=delta,
            )
        except ReplyError as exc:
            raise _client_error(exc) from None

    async def broadcast(
        self,
        channels: Iterable[str],
        data: Any,
        *,
        skip_history: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> list[PublishResult | ClientError]:
        """The same data to several channels: one result (or error) per channel, in order."""
        encoded = msgspec.Raw(_json(data))
        results: list[PublishResult | ClientError] = []
        for channel in channels:
            try:
                results.append(
                    await self.publish(channel, encoded, skip_history=skip_history, tags=tags)
                )
            except ClientError as exc:
                results.append(exc)
        return results

    async def subscribe(
        self,
        user: str,
        channel: str,
        *,
        client: str = "",
        session: str = "",
        info: Any = None,
        data: Any = None,
        since: tuple[int, str] | None = None,
    ) -> None:
        """Subscribe ``user``'s connections (or one ``client``) to ``channel``, on every node."""
        try:
            await self.node.subscribe_user(
                user,
                channel,
                client=client,
                session=session,
                info=b"" if info is None else _json(info),
                data=b"" if data is None else _json(data),
                since=StreamPosition(*since) if since is not None else None,
            )
        except ReplyError as exc:
            raise _client_error(exc) from None

    async def unsubscribe(
        self, user: str, channel: str, *, client: str = "", session: str = ""
    ) -> None:
        """End ``user``'s subscriptions to ``channel`` (they get unsubscribe push 2000)."""
        await self.node.unsubscribe_user(user, channel, client=client, session=session)

    async def disconnect(
        self,
        user: str,
        *,
        code: int = 3503,
        reason: str = "force disconnect",
        client: str = "",
        session: str = "",
        whitelist: Iterable[str] = (),
    ) -> None:
        """Close ``user``'s connections (or one client or session) on every node."""
        if not 3000 <= code <= 4999:
            raise ValueError(f"disconnect code {code} is outside 3000-4999")
        await self.node.disconnect_user(
            user, Disconnect(code, reason), client=client, session=session, whitelist=whitelist
        )

    async def refresh(
        self,
        user: str,
        *,
        expire_at: int | None = None,
        expired: bool = False,
        info: Any = None,
        client: str = "",
        session: str = "",
    ) -> None:
        """Move the expiry of ``user``'s connections, or end them now (``expired``)."""
        await self.node.refresh_user(
            user,
            client=client,
            session=session,
            expire_at=expire_at,
            expired=expired,
            info=b"" if info is None else _json(info),
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in ``channel`` (on every node), by client id."""
        try:
            self._options_with(channel, "presence")
            entries = await self.node.presence_of(channel)
        except ReplyError as exc:
            raise _client_error(exc) from None
        return {client: info for client, entry in entries.items() if (info := _client_info(entry))}

    async def presence_stats(self, channel: str) -> PresenceStats:
        try:
            self._options_with(channel, "presence")
            clients, users = await self.node.presence_stats(channel)
        except ReplyError as exc:
            raise _client_error(exc) from None
        return PresenceStats(clients, users)

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: tuple[int, str] | None = None,
        reverse: bool = False,
    ) -> History:
        """Publications of ``channel``'s history, and its position. ``limit`` 0 reads the
        position only; -1 (or anything over ``history_max_publication_limit``) reads at
        most that limit (300 by default)."""
        try:
            options = self.node.rules.options(channel)
            publications, top = await self.node.read_history(
                channel,
                options,
                limit=limit,
                since=StreamPosition(*since) if since is not None else None,
                reverse=reverse,
            )
        except ReplyError as exc:
            raise _client_error(exc) from None
        return History([_publication(p) for p in publications], top.offset, top.epoch)

    async def history_remove(self, channel: str) -> None:
        try:
            self._options_with(channel, "history")
            await self.node.remove_history(channel)
        except ReplyError as exc:
            raise _client_error(exc) from None

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Channels with subscribers on any node (glob ``pattern``), with subscriber counts."""
        return await self.node.channels(pattern)

    async def info(self) -> list[dict[str, Any]]:
        """Every live node: id, name, version, clients, users, channels, uptime."""
        return self.node.known_nodes()

    @contextlib.asynccontextmanager
    async def listen(self, channel: str, *, maxsize: int = 10_000) -> AsyncIterator[Listener]:
        """Receive ``channel``'s publications in your own code, from every node::

            async with rt.listen("orders:queue") as orders:
                async for order in orders:          # .data, .offset, .user, .key
                    ...

        At most ``maxsize`` publications wait unread; past that the listener stops with
        ``ListenerOverflow`` instead of holding more.
        """
        try:
            self.node.rules.options(channel)
        except ReplyError as exc:
            raise _client_error(exc) from None
        listener = Listener(self.node, channel, maxsize)
        await listener.open()
        try:
            yield listener
        finally:
            listener.close()

    # ------------------------------------------------------------------ map channels

    async def map_publish(
        self,
        channel: str,
        key: str,
        data: Any,
        *,
        tags: Mapping[str, str] | None = None,
        idempotency_key: str = "",
        key_mode: str = "",
        version: int = 0,
        delta: bool | None = None,
    ) -> MapUpdate:
        """Write ``key`` of a map channel (a namespace with ``subscription_type = "map"``),
        on every node; subscribers get the change at once. ``key_mode`` ``"if_new"`` or
        ``"if_exists"`` makes the write conditional; ``version`` (per key) drops a write
        that is not newer than the stored one; ``delta`` sends it as a fossil delta against
        the key's previous value to subscribers that negotiated one (``None``: the
        namespace's ``delta_publish``)."""
        try:
            result = await self.node.map_publish(
                channel,
                key,
                msgspec.Raw(_json(data)),
                tags=dict(tags) if tags else None,
                idempotency_key=idempotency_key,
                key_mode=key_mode,
                version=version,
                delta=delta,
            )
        except ReplyError as exc:
            raise _client_error(exc) from None
        return _map_update(result)

    async def map_remove(self, channel: str, key: str, *, idempotency_key: str = "") -> MapUpdate:
        """Remove ``key`` of a map channel (a missing key is a suppressed no-op)."""
        try:
            result = await self.node.map_remove(channel, key, idempotency_key=idempotency_key)
        except ReplyError as exc:
            raise _client_error(exc) from None
        return _map_update(result)

    async def map_state(
        self, channel: str, *, limit: int = -1, cursor: str = "", key: str = ""
    ) -> MapSnapshot:
        """A map channel's entries (all of them by default, or a page of ``limit`` after
        ``cursor``, or the one ``key``) and its position."""
        try:
            state = await self.node.map_state(channel, limit=limit, cursor=cursor, key=key)
        except ReplyError as exc:
            raise _client_error(exc) from None
        items = [_map_item(entry) for entry in state.entries]
        return MapSnapshot(items, state.position.offset, state.position.epoch, state.cursor)

    async def map_stream(
        self,
        channel: str,
        *,
        limit: int = -1,
        since: tuple[int, str] | None = None,
        reverse: bool = False,
    ) -> MapChanges:
        """A map channel's changes after ``since=(offset, epoch)`` (112 when the stream no
        longer holds them all)."""
        try:
            stream = await self.node.map_stream(
                channel,
                limit=limit,
                since=StreamPosition(*since) if since is not None else None,
                reverse=reverse,
            )
        except ReplyError as exc:
            raise _client_error(exc) from None
        changes = [_map_item(entry) for entry in stream.changes]
        return MapChanges(changes, stream.position.offset, stream.position.epoch)

    async def map_stats(self, channel: str) -> int:
        """How many keys a map channel holds."""
        try:
            return await self.node.map_stats(channel)
        except ReplyError as exc:
            raise _client_error(exc) from None

    async def map_clear(self, channel: str) -> None:
        """Drop a map channel's state and stream: a new epoch, subscribers reload."""
        try:
            await self.node.map_clear(channel)
        except ReplyError as exc:
            raise _client_error(exc) from None

    def _options_with(self, channel: str, feature: str) -> None:
        options = self.node.rules.options(channel)
        enabled = options.presence if feature == "presence" else options.history_enabled
        if not enabled:
            raise ReplyError(ErrorCode.NOT_AVAILABLE)
