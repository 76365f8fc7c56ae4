"""Error and disconnect code catalogs, and the exceptions that carry them.

Codes are the Centrifugo client protocol's (the SDKs react to their exact
values), so they are data here, never strings scattered across modules:

* Error codes (100-199) travel in a reply's ``error`` object; the connection
  stays open. Applications may use 400-1999.
* Unsubscribe codes travel in an ``unsubscribe`` push. Below 2500 the
  subscription is finished; 2500 and above make the client resubscribe.
* Disconnect codes end a connection. 3000-3499 make the SDKs reconnect,
  3500-3999 are terminal. Applications may use 4000-4999.

Messages are fixed texts: nothing from an exception or a library ever reaches
a client.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply: the connection carries on."""

    code: int
    message: str
    temporary: bool = False


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why a connection ends. 3000-3499 and 4000-4499 make the SDKs reconnect."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Why the server ended one subscription (sent as an ``unsubscribe`` push)."""

    code: int
    reason: str


class ErrorCode:
    """Reply errors (docs/protocol.md section 5)."""

    INTERNAL = Error(100, "internal server error", temporary=True)
    UNAUTHORIZED = Error(101, "unauthorized")
    UNKNOWN_CHANNEL = Error(102, "unknown channel")
    PERMISSION_DENIED = Error(103, "permission denied")
    METHOD_NOT_FOUND = Error(104, "method not found")
    ALREADY_SUBSCRIBED = Error(105, "already subscribed")
    LIMIT_EXCEEDED = Error(106, "limit exceeded")
    BAD_REQUEST = Error(107, "bad request")
    NOT_AVAILABLE = Error(108, "not available")
    TOKEN_EXPIRED = Error(109, "token expired")
    EXPIRED = Error(110, "expired")
    TOO_MANY_REQUESTS = Error(111, "too many requests", temporary=True)
    UNRECOVERABLE_POSITION = Error(112, "unrecoverable position")
    CONCURRENT_PAGINATION = Error(113, "concurrent pagination", temporary=True)
    """A map subscribe request while another of the same flow is in progress
    (docs/protocol.md section 14)."""


class ApiErrorCode:
    """Server HTTP API errors: same numbers, a few different texts."""

    INTERNAL = Error(100, "internal server error")
    UNAUTHORIZED = Error(101, "unauthorized")
    UNKNOWN_CHANNEL = Error(102, "unknown channel")
    NOT_FOUND = Error(104, "not found")
    BAD_REQUEST = Error(107, "bad request")
    NOT_AVAILABLE = Error(108, "not available")
    UNRECOVERABLE_POSITION = Error(112, "unrecoverable position")


class HttpErrorCode:
    """Errors of the plain-HTTP endpoints (``/events``, ``/longpoll``, emulation, upgrades)
    that have no protocol counterpart; the others reuse :class:`ErrorCode`."""

    METHOD_NOT_ALLOWED = Error(107, "method not allowed")
    NOT_FOUND = Error(104, "not found")
    ORIGIN_NOT_ALLOWED = Error(103, "origin not allowed")
    EXPECTED_UPGRADE = Error(107, "expected a WebSocket upgrade")


class UnsubscribeCode:
    """Unsubscribe push codes (docs/protocol.md section 5)."""

    SERVER = Unsubscribe(2000, "server unsubscribe")
    INSUFFICIENT_STATE = Unsubscribe(2500, "insufficient state")
    EXPIRED = Unsubscribe(2501, "subscription expired")
    STATE_INVALIDATED = Unsubscribe(2502, "state invalidated")


class DisconnectCode:
    """Disconnect codes (docs/protocol.md section 5). 3000 is internal: a plain close."""

    CONNECTION_CLOSED = Disconnect(3000, "connection closed")
    SHUTDOWN = Disconnect(3001, "shutdown")
    SERVER_ERROR = Disconnect(3004, "internal server error")
    EXPIRED = Disconnect(3005, "connection expired")
    SUBSCRIPTION_EXPIRED = Disconnect(3006, "subscription expired")
    SLOW = Disconnect(3008, "slow")
    WRITE_ERROR = Disconnect(3009, "write error")
    INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
    FORCE_RECONNECT = Disconnect(3011, "force reconnect")
    NO_PONG = Disconnect(3012, "no pong")
    TOO_MANY_REQUESTS = Disconnect(3013, "too many requests")
    STATE_INVALIDATED = Disconnect(3014, "state invalidated")
    INVALID_TOKEN = Disconnect(3500, "invalid token")
    BAD_REQUEST = Disconnect(3501, "bad request")
    STALE = Disconnect(3502, "stale")
    FORCE_DISCONNECT = Disconnect(3503, "force disconnect")
    CONNECTION_LIMIT = Disconnect(3504, "connection limit")
    CHANNEL_LIMIT = Disconnect(3505, "channel limit")
    INAPPROPRIATE_PROTOCOL = Disconnect(3506, "inappropriate protocol")
    PERMISSION_DENIED = Disconnect(3507, "permission denied")
    NOT_AVAILABLE = Disconnect(3508, "not available")
    TOO_MANY_ERRORS = Disconnect(3509, "too many errors")
    # Transport-level (RFC 6455 section 7.4.1): the SDKs reconnect after these, except 1009.
    PROTOCOL_ERROR = Disconnect(1002, "protocol error")
    INVALID_UTF8 = Disconnect(1007, "invalid utf-8")
    MESSAGE_TOO_BIG = Disconnect(1009, "message too big")
    INTERNAL_ERROR = Disconnect(1011, "internal error")


TOKEN_REFUSALS: dict[str, tuple[Error | Disconnect, Error | Disconnect]] = {
    "connect": (ErrorCode.TOKEN_EXPIRED, DisconnectCode.INVALID_TOKEN),
    "subscribe": (ErrorCode.TOKEN_EXPIRED, ErrorCode.PERMISSION_DENIED),
    "refresh": (DisconnectCode.EXPIRED, DisconnectCode.INVALID_TOKEN),
    "sub_refresh": (ErrorCode.EXPIRED, DisconnectCode.INVALID_TOKEN),
    "http": (ErrorCode.TOKEN_EXPIRED, ErrorCode.UNAUTHORIZED),
}
"""How a refused token is answered, by where it was used: ``(expired, otherwise)``.

The one mapping every transport uses (docs/protocol.md section 6). An expired
connection token gets an error the SDKs answer by fetching a new one; any other
bad connection token ends the connection for good (3500).
"""


def token_refusal(use: str, *, expired: bool) -> Error | Disconnect:
    """The answer to a refused token used for ``use`` (a key of :data:`TOKEN_REFUSALS`)."""
    when_expired, otherwise = TOKEN_REFUSALS[use]
    return when_expired if expired else otherwise


class TidingsError(Exception):
    """Base of every exception tidings raises on purpose."""


class ReplyError(TidingsError):
    """Answer the current command with an error reply; the connection carries on.

    ``logged`` says the raiser already logged the refusal with its reason, so the
    dispatcher does not log it a second time.
    """

    def __init__(self, error: Error, *, logged: bool = False) -> None:
        super().__init__(f"{error.code} {error.message}")
        self.error = error
        self.logged = logged


class DisconnectError(TidingsError):
    """End the connection with a disconnect code."""

    def __init__(self, disconnect: Disconnect) -> None:
        super().__init__(f"{disconnect.code} {disconnect.reason}")
        self.disconnect = disconnect


class ProtocolViolation(DisconnectError):
    """The client broke the protocol: disconnect 3501 (terminal)."""

    def __init__(self, why: str) -> None:
        super().__init__(DisconnectCode.BAD_REQUEST)
        self.why = why

    def __str__(self) -> str:
        return f"bad request: {self.why}"


class ConfigError(TidingsError):
    """A configuration value is wrong. The message names the key and what was expected."""


class BrokerUnavailable(TidingsError):
    """The broker could not be reached in time; callers answer error 100 (temporary)."""
