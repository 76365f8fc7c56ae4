"""Typed settings: defaults, then a TOML file, then ``TIDINGS_*`` variables, then CLI flags.

Every top-level option is declared once in :data:`OPTIONS` with its type,
default and help text; the CLI (``tidings serve --help``), the environment
variables and ``docs/configuration.md`` all derive from that table. Channel
options live in the ``[channels]`` table (see :class:`ChannelOptions`).

A wrong value raises :class:`ConfigError` naming the key and what was expected;
the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from tidings.channels import (
    CONFLATE_BY,
    DELTA_TYPES,
    DURATION_OPTIONS,
    NAMESPACE_NAME,
    ChannelOptions,
)
from tidings.errors import ConfigError
from tidings.maps_config import check_namespace, map_table_seconds

ENV_PREFIX = "TIDINGS_"
DEMO_NAMESPACE = "demo"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object, key: str) -> float:
    """Seconds from ``"300s"``, ``"250ms"``, ``"5m"``, ``"1h"``, ``"2d"`` or a number."""
    if isinstance(value, bool):
        raise ConfigError(f'{key}: expected a duration like "30s", got {value!r}')
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: expected a duration >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ConfigError(f'{key}: expected a duration like "30s", "250ms" or "5m", got {value!r}')


def format_duration(seconds: float) -> str:
    """The way durations are written back: ``25s``, ``5m``, ``30d``, ``2ms``, ``1.5s``."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Option:
    """One top-level setting: its type drives parsing from TOML, env and CLI.

    ``unit`` names what an integer counts ("bytes", "per second"), shown next to
    its default in ``serve --help`` and docs/configuration.md.
    """

    name: str
    kind: str  # "str", "int", "bool", "duration", "list"
    default: Any
    help: str
    unit: str = ""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as a user would write it: one format per kind, with units."""
        value = self.default
        if self.kind == "duration":
            return format_duration(parse_duration(value, self.name))
        if self.kind == "list":
            return ", ".join(value) if value else "none"
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "int":
            return f"{value} {self.unit}" if self.unit else str(value)
        return str(value) if value else "none"

    @property
    def metavar(self) -> str:
        """What the flag takes, in ``serve --help``."""
        if self.kind == "duration":
            return "DURATION"
        if self.kind == "list":
            return "A,B,..."
        if self.kind == "int":
            return "BYTES" if self.unit == "bytes" else "N"
        return "TEXT"


OPTIONS: tuple[Option, ...] = (
    Option("host", "str", "127.0.0.1", "Address to listen on."),
    Option("port", "int", 8000, "TCP port to listen on (0 picks a free one)."),
    Option("broker", "str", "memory", 'Engine: "memory" (one process) or a redis:// URL.'),
    Option(
        "broker_prefix",
        "str",
        "tidings",
        "Prefix of the Redis broker's keys and pub/sub channels: every node of one deployment "
        "uses the same one; deployments sharing a Redis use different ones.",
    ),
    Option(
        "map_broker",
        "str",
        "",
        'Engine of map channels: "memory" or a redis:// URL; empty: the broker\'s (the same '
        "Redis, with the same broker_prefix).",
    ),
    Option(
        "workers", "int", 1, "Worker processes sharing the port (needs a shared broker when > 1)."
    ),
    Option("log_level", "str", "info", "Logging level: debug, info, warning or error."),
    Option(
        "log_format",
        "str",
        "text",
        'Log lines as "text" (one readable line per event) or "json" (one JSON object per '
        "line: time, level, logger, message and fields such as client, user, channel, code).",
    ),
    Option(
        "metrics",
        "bool",
        False,
        "Count Prometheus metrics and serve them at GET /metrics (with --workers, every "
        "worker's, summed).",
    ),
    Option(
        "metrics_token",
        "str",
        "",
        "When set, GET /metrics needs it in an Authorization: Bearer header. Empty: anyone who "
        "reaches the port may read the metrics.",
    ),
    Option(
        "readiness_timeout",
        "duration",
        1.0,
        "How long GET /ready waits for the broker to answer before it says 503 (not ready).",
    ),
    Option(
        "opentelemetry",
        "bool",
        False,
        "OpenTelemetry spans of server API and application handler calls (needs the "
        "opentelemetry-api package; spans go to the process's tracer provider).",
    ),
    Option(
        "token_hmac_secret",
        "str",
        "",
        "Shared secret for HS256/HS384/HS512 connection and subscription tokens.",
    ),
    Option(
        "token_algorithms",
        "list",
        ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"],
        "Token algorithms accepted (a token's own header never widens this list); each needs "
        "its key: the HMAC secret, an RSA/ECDSA public key, or the JWKS.",
    ),
    Option(
        "token_rsa_public_key",
        "str",
        "",
        "PEM public key (text or file path) for RS256/384/512 and PS256/384/512 tokens.",
    ),
    Option(
        "token_ecdsa_public_key",
        "str",
        "",
        "PEM public key (text or path) for ES256/384/512 tokens.",
    ),
    Option("token_jwks_url", "str", "", "URL of a JSON Web Key Set; tokens pick a key by `kid`."),
    Option(
        "token_jwks_refresh_interval", "duration", 300.0, "How often the JWKS is fetched again."
    ),
    Option("token_audience", "str", "", "Required `aud` claim of tokens, when set."),
    Option("token_issuer", "str", "", "Required `iss` claim of tokens, when set."),
    Option(
        "api_key", "str", "", "Key for the server HTTP API (X-API-Key or Authorization: apikey)."
    ),
    Option(
        "api_insecure",
        "bool",
        False,
        "Serve the HTTP API without a key (only behind a trusted network).",
    ),
    Option(
        "allowed_origins",
        "list",
        [],
        'Origins allowed to connect from browsers, comma-separated; "*" allows all. '
        "Empty: only same-host pages and clients that send no Origin.",
    ),
    Option(
        "allow_anonymous_connect_without_token",
        "bool",
        False,
        "Accept connections that bring no token, as anonymous users.",
    ),
    Option(
        "demo",
        "str",
        "auto",
        'Demo mode: "auto" (on while no token secret is configured), "on" or "off". While on, '
        'anonymous clients may connect and use the "demo" namespace only, and / says so.',
    ),
    Option("ping_interval", "duration", 25.0, "Server ping period; 0 disables pings."),
    Option("pong_timeout", "duration", 8.0, "Time for a client's pong before disconnect 3012."),
    Option(
        "stale_close_delay",
        "duration",
        10.0,
        "Time a new connection has to send connect (else 3502).",
    ),
    Option(
        "expired_close_delay", "duration", 25.0, "Grace after a connection's expiry before 3005."
    ),
    Option(
        "max_message_size",
        "int",
        65536,
        "Largest incoming message or request body.",
        unit="bytes",
    ),
    Option("channel_max_length", "int", 255, "Longest channel name.", unit="bytes"),
    Option(
        "client_channel_limit", "int", 128, "Most channels one connection may subscribe to (106)."
    ),
    Option(
        "history_max_publication_limit", "int", 300, "Cap on publications a history call returns."
    ),
    Option(
        "recovery_max_publication_limit",
        "int",
        300,
        "Most publications a recovery returns; beyond it the client is told recovered: false.",
    ),
    Option(
        "history_meta_ttl",
        "duration",
        "30d",
        "How long a channel's offset and epoch outlive its last publication.",
    ),
    Option(
        "presence_ttl", "duration", 60.0, "Presence entries expire unless refreshed within this."
    ),
    Option(
        "presence_refresh_interval", "duration", 25.0, "How often a node refreshes its presence."
    ),
    Option("shutdown_timeout", "duration", 10.0, "Longest graceful shutdown before exit."),
    Option(
        "write_buffer_limit",
        "int",
        1 << 20,
        "Bytes a connection may have queued unsent; beyond it (or after slow_timeout) "
        "it is closed with 3008.",
        unit="bytes",
    ),
    Option(
        "slow_timeout",
        "duration",
        10.0,
        "How long a connection may stay over half its write buffer limit.",
    ),
    Option(
        "coalesce_delay",
        "duration",
        0.002,
        "Under sustained traffic (flushes back to back), gather publications this long into one "
        "write per connection; when idle they still go out in the same loop turn. 0: never wait.",
    ),
    Option(
        "broker_unsubscribe_delay",
        "duration",
        5.0,
        "How long a node stays subscribed to a channel in the broker after its last local "
        "subscriber leaves, so clients that come and go (long polls, reconnects) cost no broker "
        "round trips each time. 0: unsubscribe at once.",
    ),
    Option(
        "websocket_compression",
        "bool",
        False,
        "Offer permessage-deflate (RFC 7692). Broadcasts are compressed once per batch, "
        "without context takeover; decompressed input is held to max_message_size.",
    ),
    Option(
        "websocket_compression_min_size",
        "int",
        256,
        "Messages shorter than this are sent uncompressed even on a compressing connection.",
        unit="bytes",
    ),
    Option(
        "websocket_max_fragments",
        "int",
        1024,
        "Most frames one incoming WebSocket message may be split into (beyond: close 1009).",
    ),
    Option(
        "client_command_rate_limit",
        "int",
        1000,
        "Commands per second one connection may send (token bucket; 0: no limit). Over it: "
        "error 111, then disconnect 3013 if the client keeps going.",
        unit="per second",
    ),
    Option(
        "client_command_burst",
        "int",
        1000,
        "Bucket size of the command rate limit: how many commands may arrive at once.",
    ),
    Option(
        "client_user_connection_limit",
        "int",
        0,
        "Most concurrent connections per user on this node (0: no limit); over it: 3504.",
    ),
    Option(
        "client_ip_connection_limit",
        "int",
        0,
        "Most concurrent connections per client IP (0: no limit; behind a proxy every client "
        "shares the proxy's IP). Over it: HTTP 503.",
    ),
    Option(
        "client_connection_rate_limit",
        "int",
        0,
        "New connections accepted per second by this node (0: no limit). Over it: HTTP 503.",
        unit="per second",
    ),
    Option(
        "http_header_timeout",
        "duration",
        10.0,
        "Time a client has to send a complete request head (slow-header attacks).",
    ),
    Option(
        "cors_allowed_origins",
        "list",
        [],
        "Origins that get CORS headers on /events, /longpoll and the emulation endpoints; "
        '"*" allows all (never with credentials). Empty: the allowed_origins list.',
    ),
    Option(
        "cors_allow_credentials",
        "bool",
        False,
        "Let cross-origin pages send cookies to those endpoints (needs explicit origins).",
    ),
    Option(
        "subscribe_to_user_personal_channel",
        "bool",
        False,
        "Subscribe every authenticated connection, on the server's initiative, to its user's "
        "personal channel #USER (in personal_channel_namespace), as Centrifugo does.",
    ),
    Option(
        "personal_channel_namespace",
        "str",
        "",
        "Namespace of the users' personal channels (NAMESPACE:#USER); empty: #USER.",
    ),
    Option(
        "handler_timeout",
        "duration",
        5.0,
        "Longest an application handler (on_connect, on_subscribe, an RPC...) may run; past it "
        "the command is answered with error 100 and the connection stays open.",
    ),
    Option(
        "longpoll_timeout",
        "duration",
        25.0,
        "How long GET /longpoll holds a request that has nothing to return yet.",
    ),
    Option(
        "sse_heartbeat_interval",
        "duration",
        15.0,
        "Period of the comment lines that keep idle SSE streams alive through proxies (0: none).",
    ),
    Option("node_name", "str", "", "Name of this node in the API's info (none: the host name)."),
    Option(
        "admin",
        "bool",
        False,
        "Serve the admin page at /admin (needs admin_password or admin_token).",
    ),
    Option(
        "admin_password",
        "str",
        "",
        "Password of the admin page's login form (at least 12 characters).",
    ),
    Option(
        "admin_token",
        "str",
        "",
        "A token of the admin page's own (at least 32 characters): accepted by its login form, "
        "and by /admin/api in an Authorization: Bearer header, for scripts. Never the API key.",
    ),
)

OPTION_BY_NAME = {option.name: option for option in OPTIONS}


class ChannelsConfig(ChannelOptions, forbid_unknown_fields=True, kw_only=True):
    """The ``[channels]`` table: options for channels without a namespace, plus namespaces."""

    namespaces: dict[str, ChannelOptions] = {}


def demo_namespace_options() -> ChannelOptions:
    """The demo's chat namespace: open to anonymous clients, with history and presence."""
    return ChannelOptions(
        presence=True,
        join_leave=True,
        force_push_join_leave=True,
        history_size=100,
        history_ttl=3600.0,
        force_recovery=True,
        allow_subscribe_for_client=True,
        allow_subscribe_for_anonymous=True,
        allow_publish_for_subscriber=True,
        allow_publish_for_anonymous=True,
        allow_history_for_subscriber=True,
        allow_history_for_anonymous=True,
        allow_presence_for_subscriber=True,
        allow_presence_for_anonymous=True,
    )


@dataclass(slots=True)
class Config:
    """All settings of one node. Build it with :func:`load_config` or directly in tests."""

    host: str = "127.0.0.1"
    port: int = 8000
    broker: str = "memory"
    broker_prefix: str = "tidings"
    map_broker: str = ""
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"
    metrics: bool = False
    metrics_token: str = ""
    readiness_timeout: float = 1.0
    opentelemetry: bool = False
    token_hmac_secret: str = ""
    token_algorithms: list[str] = field(
        default_factory=lambda: [
            "HS256",
            "HS384",
            "HS512",
            "RS256",
            "RS384",
            "RS512",
            "ES256",
            "ES384",
            "ES512",
        ]
    )
    token_rsa_public_key: str = ""
    token_ecdsa_public_key: str = ""
    token_jwks_url: str = ""
    token_jwks_refresh_interval: float = 300.0
    token_audience: str = ""
    token_issuer: str = ""
    api_key: str = ""
    api_insecure: bool = False
    allowed_origins: list[str] = field(default_factory=list)
    allow_anonymous_connect_without_token: bool = False
    demo: str = "auto"
    ping_interval: float = 25.0
    pong_timeout: float = 8.0
    stale_close_delay: float = 10.0
    expired_close_delay: float = 25.0
    max_message_size: int = 65536
    channel_max_length: int = 255
    client_channel_limit: int = 128
    history_max_publication_limit: int = 300
    recovery_max_publication_limit: int = 300
    history_meta_ttl: float = 30 * 86400.0
    presence_ttl: float = 60.0
    presence_refresh_interval: float = 25.0
    shutdown_timeout: float = 10.0
    write_buffer_limit: int = 1 << 20
    slow_timeout: float = 10.0
    coalesce_delay: float = 0.002
    broker_unsubscribe_delay: float = 5.0
    websocket_compression: bool = False
    websocket_compression_min_size: int = 256
    websocket_max_fragments: int = 1024
    client_command_rate_limit: int = 1000
    client_command_burst: int = 1000
    client_user_connection_limit: int = 0
    client_ip_connection_limit: int = 0
    client_connection_rate_limit: int = 0
    http_header_timeout: float = 10.0
    cors_allowed_origins: list[str] = field(default_factory=list)
    cors_allow_credentials: bool = False
    subscribe_to_user_personal_channel: bool = False
    personal_channel_namespace: str = ""
    handler_timeout: float = 5.0
    longpoll_timeout: float = 25.0
    sse_heartbeat_interval: float = 15.0
    node_name: str = ""
    admin: bool = False
    admin_password: str = ""
    admin_token: str = ""
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)

    def with_namespace(self, name: str, options: Mapping[str, Any]) -> Config:
        """A copy with the namespace ``name`` set to ``options`` (as its TOML table would
        say them: durations like ``"300s"`` allowed), validated."""
        table = _channel_options_from_toml(
            dict(options), f"channels.namespaces.{name}", ChannelOptions
        )
        namespaces = {**self.channels.namespaces, name: table}
        channels = msgspec.structs.replace(self.channels, namespaces=namespaces)
        config = dataclasses.replace(self, channels=channels)
        config.validate()
        return config

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with some options replaced (``None`` values are ignored), validated."""
        config = dataclasses.replace(self, **_converted_overrides(overrides))
        config.validate()
        return config

    @property
    def demo_enabled(self) -> bool:
        """The demo opens anonymous access, so "auto" turns it on only without a secret."""
        if self.demo == "on":
            return True
        if self.demo == "off":
            return False
        return not (
            self.token_hmac_secret
            or self.token_rsa_public_key
            or self.token_ecdsa_public_key
            or self.token_jwks_url
        )

    @property
    def map_broker_url(self) -> str:
        """Where map channels live: ``map_broker``, else the broker's engine."""
        return self.map_broker or self.broker

    @property
    def allow_anonymous(self) -> bool:
        return self.allow_anonymous_connect_without_token or self.demo_enabled

    def namespaces(self) -> dict[str, ChannelOptions]:
        """Configured namespaces, plus the demo namespace while the demo is on."""
        namespaces = dict(self.channels.namespaces)
        if self.demo_enabled and DEMO_NAMESPACE not in namespaces:
            namespaces[DEMO_NAMESPACE] = demo_namespace_options()
        return namespaces

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected 0-65535, got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"workers: expected 1 or more, got {self.workers}")
        if self.demo not in ("auto", "on", "off"):
            raise ConfigError(f'demo: expected "auto", "on" or "off", got {self.demo!r}')
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log_level: expected debug, info, warning or error, got {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f'log_format: expected "text" or "json", got {self.log_format!r}')
        self._validate_admin()
        if self.readiness_timeout <= 0:
            raise ConfigError(
                f"readiness_timeout: expected a duration above 0, got {self.readiness_timeout}"
            )
        if self.opentelemetry and not _importable("opentelemetry.trace"):
            raise ConfigError(
                "opentelemetry: needs the opentelemetry-api package "
                "(pip install 'tidings[tracing]'), and an SDK to send the spans somewhere"
            )
        for name in ("max_message_size", "channel_max_length", "client_channel_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a number >= 1, got {getattr(self, name)}")
        from tidings.auth import SUPPORTED_ALGORITHMS, load_public_key

        known = SUPPORTED_ALGORITHMS
        for name in ("token_rsa_public_key", "token_ecdsa_public_key"):
            if getattr(self, name):
                try:
                    load_public_key(getattr(self, name))
                except (OSError, ValueError, TypeError) as exc:
                    raise ConfigError(
                        f"{name}: expected a PEM public key or the path of one "
                        f"({exc.__class__.__name__})"
                    ) from None
        if self.token_jwks_url and not self.token_jwks_url.startswith(("https://", "http://")):
            raise ConfigError(
                f"token_jwks_url: expected an http(s) URL, got {self.token_jwks_url!r}"
            )
        for algorithm in self.token_algorithms:
            if algorithm not in known:
                raise ConfigError(
                    f"token_algorithms: expected some of {sorted(known)}, got {algorithm!r}"
                )
        if not (self.broker == "memory" or self.broker.startswith(("redis", "rediss"))):
            raise ConfigError(f'broker: expected "memory" or a redis:// URL, got {self.broker!r}')
        if self.map_broker and not (
            self.map_broker == "memory" or self.map_broker.startswith(("redis", "rediss"))
        ):
            raise ConfigError(
                f'map_broker: expected "memory" or a redis:// URL, got {self.map_broker!r}'
            )
        if not self.broker_prefix or "{" in self.broker_prefix or "}" in self.broker_prefix:
            raise ConfigError(
                "broker_prefix: expected a non-empty name without braces, "
                f"got {self.broker_prefix!r}"
            )
        if self.cors_allow_credentials and "*" in (
            self.cors_allowed_origins or self.allowed_origins
        ):
            raise ConfigError(
                'cors_allow_credentials: cannot be combined with "*" in the CORS origins; '
                "list the origins that may send credentials"
            )
        if self.workers > 1 and self.broker == "memory":
            raise ConfigError(
                "workers: more than one worker needs a shared broker (--broker redis://...); "
                "the memory broker lives inside one process"
            )
        if self.workers > 1 and self.map_broker_url == "memory":
            raise ConfigError(
                "workers: more than one worker needs a shared map engine "
                "(map_broker = redis://..., or leave it empty to use the broker's Redis)"
            )
        for name in self.channels.namespaces:
            if not NAMESPACE_NAME.match(name):
                raise ConfigError(
                    f"channels.namespaces.{name}: expected a name of letters, digits, "
                    "'-', '_' or '.', at least 2 characters"
                )
        _validate_channel_options("channels", self.channels)
        for name, options in self.channels.namespaces.items():
            _validate_channel_options(f"channels.namespaces.{name}", options)
        namespaces = self.channels.namespaces
        check_namespace("channels", self.channels, namespaces)
        for name, options in namespaces.items():
            check_namespace(f"channels.namespaces.{name}", options, namespaces)

    def _validate_admin(self) -> None:
        if self.admin_password and len(self.admin_password) < ADMIN_PASSWORD_MIN:
            raise ConfigError(
                f"admin_password: expected at least {ADMIN_PASSWORD_MIN} characters, "
                f"got {len(self.admin_password)}"
            )
        if self.admin_token and len(self.admin_token) < ADMIN_TOKEN_MIN:
            raise ConfigError(
                f"admin_token: expected at least {ADMIN_TOKEN_MIN} characters, "
                f"got {len(self.admin_token)} (openssl rand -hex 32 makes one)"
            )
        secrets = {self.admin_password, self.admin_token} - {""}
        if self.api_key and self.api_key in secrets:
            raise ConfigError(
                "admin_password/admin_token: must differ from api_key (the admin page has "
                "its own secret, so the API key never reaches a browser)"
            )
        if self.admin and not secrets:
            raise ConfigError(
                "admin: the admin page needs admin_password or admin_token "
                "(TIDINGS_ADMIN_PASSWORD / TIDINGS_ADMIN_TOKEN)"
            )


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (its parents excepted)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


ADMIN_PASSWORD_MIN = 12
ADMIN_TOKEN_MIN = 32


def announce(config: Config, port: int, *, workers: int = 1) -> None:
    """The start-up lines: what is open to whom, and where the server listens."""
    log = logging.getLogger("tidings")
    if config.demo_enabled:
        log.warning(
            "DEMO MODE: no token secret is configured, so anonymous clients may connect and "
            'use the "demo" namespace. Set TIDINGS_TOKEN_HMAC_SECRET (or demo = "off") '
            "before exposing this server."
        )
    if not config.api_key and not config.api_insecure:
        log.warning("the server API is closed: set TIDINGS_API_KEY to use /api")
    from tidings.version import __version__

    log.info(
        "tidings %s listening on http://%s:%d%s (broker: %s)",
        __version__,
        config.host,
        port,
        f" with {workers} workers" if workers > 1 else "",
        config.broker.split("@")[-1],
    )
    if config.admin:
        log.info("admin page on http://%s:%d/admin", config.host, port)
    if config.metrics:
        log.info(
            "Prometheus metrics on http://%s:%d/metrics%s",
            config.host,
            port,
            "" if config.metrics_token else " (no metrics_token: open to whoever reaches the port)",
        )


def _validate_channel_options(key: str, options: ChannelOptions) -> None:
    if options.history_size < 0:
        raise ConfigError(f"{key}.history_size: expected a number >= 0, got {options.history_size}")
    if (options.history_size > 0) != (options.history_ttl > 0):
        raise ConfigError(
            f"{key}: history needs both history_size and history_ttl above 0 "
            f"(got history_size={options.history_size}, history_ttl={options.history_ttl})"
        )
    if options.force_recovery and not options.history_enabled:
        raise ConfigError(f"{key}.force_recovery: needs history_size and history_ttl")
    unknown = sorted(set(options.allowed_delta_types) - DELTA_TYPES)
    if unknown:
        raise ConfigError(
            f"{key}.allowed_delta_types: unknown delta type {unknown[0]!r} "
            f"(known: {', '.join(sorted(DELTA_TYPES))})"
        )
    if options.conflate_by not in CONFLATE_BY:
        raise ConfigError(
            f'{key}.conflate_by: expected "key", "none" or "" (the default), '
            f"got {options.conflate_by!r}"
        )
    if options.max_frequency < 0:
        raise ConfigError(
            f"{key}.max_frequency: expected updates per second >= 0, got {options.max_frequency}"
        )
    if options.max_frequency and not options.conflates:
        raise ConfigError(f'{key}.max_frequency: needs conflate_by = "key"')


# --------------------------------------------------------------------------- parsing


def _convert(option: Option, value: object, key: str, *, from_text: bool) -> Any:
    kind = option.kind
    if kind == "duration":
        return parse_duration(value, key)
    if from_text and isinstance(value, str):
        if kind == "bool":
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        if kind == "int":
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if kind == "list":
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
    expected = {"str": str, "int": int, "bool": bool, "list": list}[kind]
    if kind == "int" and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {_KIND_TEXT[kind]}, got {value!r}")
    if kind == "list" and not all(isinstance(item, str) for item in value):  # type: ignore[attr-defined]
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return value


_KIND_TEXT = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "list": "a list of strings",
}


def _channel_options_from_toml(table: object, key: str, cls: type[ChannelOptions]) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table, got {table!r}")
    prepared = dict(table)
    for name in DURATION_OPTIONS:
        if name in prepared:
            prepared[name] = parse_duration(prepared[name], f"{key}.{name}")
    if "map" in prepared:
        prepared["map"] = map_table_seconds(prepared["map"], f"{key}.map", parse_duration)
    if "namespaces" in prepared and cls is ChannelsConfig:
        namespaces = prepared["namespaces"]
        if not isinstance(namespaces, dict):
            raise ConfigError(f"{key}.namespaces: expected a table of namespaces")
        prepared["namespaces"] = {
            name: msgspec.structs.asdict(
                _channel_options_from_toml(ns, f"{key}.namespaces.{name}", ChannelOptions)
            )
            for name, ns in namespaces.items()
        }
    try:
        return msgspec.convert(prepared, cls)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe_validation_error(key, exc)) from None


def _describe_validation_error(key: str, exc: msgspec.ValidationError) -> str:
    """Turn ``Expected `int`, got `str` - at `$.x` `` into ``key.x: expected int, got str``."""
    text = str(exc)
    where = ""
    if " - at `$" in text:
        text, where = text.split(" - at `$", 1)
        where = where.rstrip("`").lstrip(".")
    match = re.match(r"Object contains unknown field `(.+)`", text)
    if match:
        return f"{key}{'.' + where if where else ''}.{match.group(1)}: unknown option"
    text = text.replace("`", "")
    return f"{key}{'.' + where if where else ''}: {text[0].lower() + text[1:]}"


def _converted_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Option values given in code or as CLI flags (``None``: not given), converted."""
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        option = OPTION_BY_NAME.get(name)
        if option is None:
            raise ConfigError(f"{name}: unknown option")
        values[name] = _convert(option, value, option.flag, from_text=isinstance(value, str))
    return values


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a :class:`Config` from the four layers, validate it, and return it."""
    values: dict[str, Any] = {}
    channels = ChannelsConfig()
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config: file {str(path)!r} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"config: cannot read {str(path)!r}: {exc.__class__.__name__}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {str(path)!r} is not valid TOML: {exc}") from None
        for key, value in document.items():
            if key == "channels":
                channels = _channel_options_from_toml(value, "channels", ChannelsConfig)
                continue
            option = OPTION_BY_NAME.get(key)
            if option is None:
                raise ConfigError(f"{key}: unknown option")
            values[key] = _convert(option, value, key, from_text=False)
    environment = os.environ if env is None else env
    for option in OPTIONS:
        if option.env in environment:
            values[option.name] = _convert(
                option, environment[option.env], option.env, from_text=True
            )
    values.update(_converted_overrides(overrides or {}))
    config = Config(**values, channels=channels)
    config.validate()
    return config
