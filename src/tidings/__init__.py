"""tidings: a real-time messaging server for Python, speaking the Centrifugo client protocol.

The application API (docs/python.md)::

    from tidings import Tidings, ConnectResult, SubscribeResult, ClientError

    rt = Tidings("tidings.toml")

    @rt.on_connect
    async def connect(ctx): ...
"""

from tidings.application import (
    ClientInfo,
    History,
    MapChanges,
    MapItem,
    MapSnapshot,
    MapUpdate,
    PresenceStats,
    Publication,
    Tidings,
)
from tidings.config import Config, load_config
from tidings.hooks import (
    ClientDisconnect,
    ClientError,
    ConnectContext,
    ConnectResult,
    Context,
    DisconnectContext,
    MessageContext,
    PublishContext,
    RefreshContext,
    RPCContext,
    SubscribeContext,
    SubscribeResult,
)
from tidings.node import Node, PublishResult
from tidings.version import __version__

__all__ = [
    "ClientDisconnect",
    "ClientError",
    "ClientInfo",
    "Config",
    "ConnectContext",
    "ConnectResult",
    "Context",
    "DisconnectContext",
    "History",
    "MapChanges",
    "MapItem",
    "MapSnapshot",
    "MapUpdate",
    "MessageContext",
    "Node",
    "PresenceStats",
    "Publication",
    "PublishContext",
    "PublishResult",
    "RPCContext",
    "RefreshContext",
    "SubscribeContext",
    "SubscribeResult",
    "Tidings",
    "__version__",
    "load_config",
]
