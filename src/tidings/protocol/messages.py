"""Commands, results and pushes of the Centrifugo client protocol (JSON, version 2).

Field names and types follow the protocol's proto definitions. Rules that the
SDKs depend on (docs/protocol.md section 1, "JSON value rules"):

* ``data``, ``info``, ``conn_info`` and ``chan_info`` are embedded raw JSON
  values, carried as :class:`msgspec.Raw` so a payload is never re-parsed.
* Zero values are left out (``omit_defaults``), but some keys must always be
  present; those fields have no default, so msgspec always writes them.
* Unknown fields from newer SDKs (``flag``, ``tf``, ``type``...) are ignored.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Raw, Struct

NO_DATA = Raw()
"""An absent raw JSON value: encodes to nothing, so ``omit_defaults`` drops it."""

Uint32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
Uint64 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
"""Offsets: the protocol says uint64; msgspec bounds stop at int64, far beyond any stream."""


# --------------------------------------------------------------------------- requests


class SubscribeRequest(Struct, omit_defaults=True):
    channel: str = ""
    token: str = ""
    recover: bool = False
    epoch: str | None = ""
    """``null`` is accepted: centrifuge-js sends it in a map flow whose first page had none."""
    offset: Uint64 = 0
    data: Raw = NO_DATA
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    flag: int = 0
    type: int = 0
    # Map subscriptions (docs/protocol.md section 14): the flow's phase, its page size and
    # the cursor of the next state page; a tags filter is refused (107).
    phase: int = 0
    limit: Int32 = 0
    cursor: str = ""
    tf: Raw = NO_DATA


class ConnectRequest(Struct, omit_defaults=True):
    token: str = ""
    data: Raw = NO_DATA
    subs: dict[str, SubscribeRequest] = {}
    name: str = ""
    version: str = ""
    headers: dict[str, str] = {}


class ChannelRequest(Struct, omit_defaults=True):
    """Unsubscribe, presence and presence_stats carry a channel and nothing else."""

    channel: str = ""


class PublishRequest(Struct, omit_defaults=True):
    channel: str = ""
    data: Raw = NO_DATA
    # ``type: 1`` writes (or with ``removed``, removes) one key of a map channel
    # (docs/protocol.md section 14).
    type: int = 0
    key: str = ""
    removed: bool = False


class StreamPositionRequest(Struct, omit_defaults=True):
    offset: Uint64 = 0
    epoch: str = ""


class HistoryRequest(Struct, omit_defaults=True):
    channel: str = ""
    limit: int = 0
    since: StreamPositionRequest | None = None
    reverse: bool = False


class SendRequest(Struct, omit_defaults=True):
    data: Raw = NO_DATA


class RPCRequest(Struct, omit_defaults=True):
    method: str = ""
    data: Raw = NO_DATA


class RefreshRequest(Struct, omit_defaults=True):
    token: str = ""


class SubRefreshRequest(Struct, omit_defaults=True):
    channel: str = ""
    token: str = ""


class Command(Struct, omit_defaults=True):
    """One client command. Exactly one method field is set; none means a pong."""

    id: Uint32 = 0
    connect: ConnectRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: ChannelRequest | None = None
    publish: PublishRequest | None = None
    presence: ChannelRequest | None = None
    presence_stats: ChannelRequest | None = None
    history: HistoryRequest | None = None
    ping: dict[str, object] | None = None
    send: SendRequest | None = None
    rpc: RPCRequest | None = None
    refresh: RefreshRequest | None = None
    sub_refresh: SubRefreshRequest | None = None


METHODS: tuple[str, ...] = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)
"""Method fields of :class:`Command`, in declaration order."""

CHANNEL_METHODS = frozenset(
    {"subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "sub_refresh"}
)
"""Methods whose request must name a channel (a missing one is a protocol violation)."""


# --------------------------------------------------------------------------- shared types


class ClientInfo(Struct, omit_defaults=True):
    """Who a client is, as shown in presence, join/leave and client publications."""

    user: str
    client: str
    conn_info: Raw = NO_DATA
    chan_info: Raw = NO_DATA


class Publication(Struct, omit_defaults=True):
    """One message in a channel. ``offset`` is 0 (left out) on channels without history.

    ``key`` names what the publication is the latest value of (a ticker's symbol):
    conflation keeps one publication per key. ``delta`` is only ever set on the copy
    sent to a subscriber that negotiated delta compression: ``data`` is then a fossil
    delta against that subscriber's previous publication, as a JSON string.
    """

    data: Raw
    info: ClientInfo | None = None
    offset: Uint64 = 0
    tags: dict[str, str] | None = None
    delta: bool = False
    key: str = ""


class MapPublication(Struct, omit_defaults=True):
    """One state entry, stream change or live change of a map channel (docs/protocol.md
    section 14); :mod:`tidings.protocol.maps` holds the rest of the map shapes.

    ``data`` is left out for a removal and for a presence entry (which has only
    ``info``); ``offset`` is left out in ephemeral maps, which have no stream.
    ``delta`` is only ever set on the copy sent to a subscriber that negotiated
    delta compression: ``data`` is then a fossil delta against the previous value
    of the same key.
    """

    key: str
    data: Raw = NO_DATA
    offset: int = 0
    removed: bool = False
    tags: dict[str, str] | None = None
    info: ClientInfo | None = None
    delta: bool = False


class StreamPosition(Struct, frozen=True):
    """The top of a channel's stream: its last offset in the named epoch."""

    offset: int
    epoch: str


# --------------------------------------------------------------------------- results


class ErrorResult(Struct, omit_defaults=True):
    code: int
    message: str
    temporary: bool = False


class SubscribeResult(Struct, omit_defaults=True):
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    publications: list[Publication] = []
    recovered: bool = False
    offset: int = 0
    positioned: bool = False
    data: Raw = NO_DATA
    was_recovering: bool = False
    delta: bool = False


class ConnectResult(Struct, omit_defaults=True):
    client: str
    version: str = ""
    expires: bool = False
    ttl: int = 0
    data: Raw = NO_DATA
    subs: dict[str, SubscribeResult] | None = None
    ping: int = 0
    pong: bool = False
    session: str = ""
    node: str = ""


class EmptyResult(Struct):
    pass


class PresenceResult(Struct):
    presence: dict[str, ClientInfo]


class PresenceStatsResult(Struct):
    num_clients: int
    num_users: int


class HistoryResult(Struct):
    publications: list[Publication]
    epoch: str
    offset: int


class RPCResult(Struct, omit_defaults=True):
    data: Raw = NO_DATA


class RefreshResult(Struct, omit_defaults=True):
    client: str = ""
    version: str = ""
    expires: bool = False
    ttl: int = 0


class SubRefreshResult(Struct, omit_defaults=True):
    expires: bool = False
    ttl: int = 0


# --------------------------------------------------------------------------- pushes


class JoinLeave(Struct):
    info: ClientInfo


class UnsubscribePush(Struct):
    code: int
    reason: str


class DisconnectPush(Struct):
    code: int
    reason: str


class MessagePush(Struct):
    data: Raw


class SubscribePush(Struct, omit_defaults=True):
    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    positioned: bool = False
    data: Raw = NO_DATA


class RefreshPush(Struct, omit_defaults=True):
    expires: bool = False
    ttl: int = 0
