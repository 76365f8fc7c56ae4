"""What the application's own Python code sees and answers: contexts, results, errors.

tidings runs the application's handlers in-process (``on_connect``,
``on_subscribe``, ``on_publish``, RPC...). This module is the small surface
between the two sides:

* the **contexts** a handler receives, one immutable type per event, never
  the internal session;
* the **results** a handler may return (:class:`ConnectResult`,
  :class:`SubscribeResult`) and the exceptions it may raise
  (:class:`ClientError`, :class:`ClientDisconnect`);
* the :class:`ApplicationHooks` interface the session and the HTTP routes
  call. :class:`tidings.handlers.Handlers` implements it (patterns,
  validation, timeouts); :class:`NoHooks` is a node's default.

Hooks exchange JSON as bytes with the core, so nothing here decides how
Python values are encoded; that is the handlers' job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from tidings.auth import SubscriptionOverride

# --------------------------------------------------------------------------- contexts


class Headers(Mapping[str, str]):
    """Read-only HTTP headers with case-insensitive names (``ctx.headers.get("X-Tenant")``)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items = {name.lower(): value for name, value in (items or {}).items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _decoded(value: bytes) -> Any:
    return msgspec.json.decode(value) if value else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Who is asking, shared by every event.

    ``headers`` are the HTTP request's headers merged with the ``headers`` a
    client sent in its connect command (as centrifuge-js and centrifuge-python
    send them); ``transport`` is one of ``websocket``, ``sse``, ``http_stream``,
    ``uni_websocket``, ``uni_sse``, ``uni_http_stream``, ``events``, ``longpoll``.
    """

    client: str
    user: str
    transport: str
    remote_addr: str
    headers: Headers = field(default_factory=Headers)
    cookies: Mapping[str, str] = field(default_factory=dict)
    raw_info: bytes = b""

    @property
    def info(self) -> Any:
        """The connection's ``info`` (from its token or ``on_connect``), decoded JSON."""
        return _decoded(self.raw_info)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectContext(Context):
    """``on_connect``: the user is the token's (or ``""``); ``data`` what the client sent."""

    raw_data: bytes = b""

    @property
    def data(self) -> Any:
        return _decoded(self.raw_data)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshContext(Context):
    """``on_refresh``: the connection is about to expire."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeContext(Context):
    """``on_subscribe`` and ``on_sub_refresh``: ``channel`` and what the client sent."""

    channel: str
    raw_data: bytes = b""

    @property
    def data(self) -> Any:
        return _decoded(self.raw_data)


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishContext(Context):
    """``on_publish``: the publication's data is the handler's second argument; on a map
    channel, ``key`` is the key being written."""

    channel: str
    key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RPCContext(Context):
    method: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageContext(Context):
    """``on_message``: an asynchronous ``send`` from the client (no reply)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DisconnectContext(Context):
    """``on_disconnect``: ``code`` and ``reason`` of the disconnect, when the server knows."""

    code: int = 0
    reason: str = ""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """Authenticate or re-label a connection from ``on_connect`` (or ``on_refresh``).

    ``user`` replaces the token's user; ``info`` becomes the connection's info
    (shown in presence and publications); ``data`` goes to the client in the
    connect reply; ``channels`` are subscribed on the server's initiative;
    ``expire_at`` (Unix seconds) ends the connection then, unless ``on_refresh``
    extends it.
    """

    user: str
    info: Any = None
    data: Any = None
    channels: Sequence[str] = ()
    expire_at: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """Allow a subscription from ``on_subscribe`` (or extend it from ``on_sub_refresh``).

    ``info`` is the subscriber's channel info (``chan_info``); ``data`` goes
    to the client in the subscribe reply (an ``async`` function instead is called
    once the subscription has joined the channel, so a snapshot it reads misses
    nothing published after it; it may overlap what follows live);
    ``expire_at`` ends the subscription
    then, unless ``on_sub_refresh`` extends it; ``override`` switches channel
    options for this subscription, as a subscription token's claim does.
    """

    info: Any = None
    data: Any = None
    expire_at: int | None = None
    override: SubscriptionOverride | None = None
    max_frequency: float | None = None
    """On a conflating channel: at most this many updates per second per key for this
    subscriber (the latest value of each key in between); ``None``: what it asked for."""


class ClientError(Exception):
    """Answer the current command with an error; the connection carries on.

    Applications use codes 400-1999 (the protocol reserves 100-399). A handler
    that raises it refuses what it was asked: a connect, a subscribe (103 when
    no code is given), a publication, an RPC.
    """

    def __init__(self, code: int = 103, message: str = "permission denied") -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class ClientDisconnect(Exception):
    """End the connection with ``code`` and ``reason``.

    4000-4499 make the SDKs reconnect, 4500-4999 do not (docs/protocol.md
    section 5).
    """

    def __init__(self, code: int = 4500, reason: str = "disconnected by the application") -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


# --------------------------------------------------------------------------- the interface


@dataclass(frozen=True, slots=True)
class ConnectAnswer:
    """A connect (or refresh) handler's answer, encoded for the core."""

    user: str
    info: bytes = b""
    data: bytes = b""
    channels: tuple[str, ...] = ()
    expire_at: int | None = None


@dataclass(frozen=True, slots=True)
class SubscribeAnswer:
    """A subscribe (or sub-refresh) handler's answer, encoded for the core.

    ``snapshot``, when set, produces the reply's data once the subscription has
    joined the channel (so nothing published after the snapshot is missed).
    """

    info: bytes = b""
    data: bytes = b""
    expire_at: int | None = None
    override: SubscriptionOverride | None = None
    snapshot: Callable[[], Awaitable[bytes]] | None = None
    max_frequency: float | None = None


class ApplicationHooks(Protocol):
    """What the core asks of the application. Every method may raise
    :class:`tidings.errors.ReplyError` (answer with an error) or
    :class:`tidings.errors.DisconnectError` (end the connection); handler
    failures arrive as error 100, never as an exception of another kind."""

    def handles(self, event: str, name: str = "") -> bool:
        """Is there a handler for ``event`` (``connect``, ``refresh``, ``subscribe``,
        ``sub_refresh``, ``publish``, ``rpc``, ``message``, ``disconnect``) and, for the
        per-channel events and RPC, for the channel or method ``name``?"""
        ...

    @property
    def has_rpc(self) -> bool:
        """Any RPC handler at all (none: every RPC gets 108, as Centrifugo answers)."""
        ...

    @property
    def reads_requests(self) -> bool:
        """Any handler at all, so some context may show a connection's HTTP headers and
        cookies (none: a connection keeps only its peer's address)."""
        ...

    async def connect(self, ctx: ConnectContext) -> ConnectAnswer | None: ...

    async def refresh(self, ctx: RefreshContext) -> ConnectAnswer | None: ...

    async def subscribe(self, ctx: SubscribeContext) -> SubscribeAnswer | None: ...

    async def sub_refresh(self, ctx: SubscribeContext) -> SubscribeAnswer | None: ...

    async def publish(self, ctx: PublishContext, data: bytes) -> bytes | None:
        """The data to publish instead (``None``: as sent)."""
        ...

    async def rpc(self, ctx: RPCContext, params: bytes) -> bytes:
        """The RPC's result as JSON."""
        ...

    async def message(self, ctx: MessageContext, data: bytes) -> None: ...

    async def disconnect(self, ctx: DisconnectContext) -> None: ...

    def check_publication(self, channel: str, data: bytes) -> None:
        """Typed channels: raise ``ReplyError`` 107 naming the first bad field."""
        ...


class NoHooks:
    """A node without an application: every question answered "no handler"."""

    __slots__ = ()

    def handles(self, event: str, name: str = "") -> bool:
        return False

    @property
    def has_rpc(self) -> bool:
        return False

    @property
    def reads_requests(self) -> bool:
        return False

    async def connect(self, ctx: ConnectContext) -> ConnectAnswer | None:
        return None

    async def refresh(self, ctx: RefreshContext) -> ConnectAnswer | None:
        return None

    async def subscribe(self, ctx: SubscribeContext) -> SubscribeAnswer | None:
        return None

    async def sub_refresh(self, ctx: SubscribeContext) -> SubscribeAnswer | None:
        return None

    async def publish(self, ctx: PublishContext, data: bytes) -> bytes | None:
        return None

    async def rpc(self, ctx: RPCContext, params: bytes) -> bytes:
        raise NotImplementedError

    async def message(self, ctx: MessageContext, data: bytes) -> None:
        return None

    async def disconnect(self, ctx: DisconnectContext) -> None:
        return None

    def check_publication(self, channel: str, data: bytes) -> None:
        return None
