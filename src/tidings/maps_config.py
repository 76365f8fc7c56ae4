"""The ``map`` options of a namespace whose ``subscription_type`` is a map type.

Names, defaults and rules are Centrifugo's (its ``channel.namespaces[].map``
table), so a configuration carries over::

    [channels.namespaces.prices]
    subscription_type = "map"
    [channels.namespaces.prices.map]
    mode = "recoverable"
    key_ttl = "60s"
    stream_size = 1000

Pure: no I/O, no clock. The configuration loader turns the duration options
(:data:`MAP_DURATION_OPTIONS`) into seconds, converts the table with
``msgspec.convert`` and calls :meth:`MapOptions.checked`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

import msgspec
from msgspec import Struct

from tidings.brokers.maps import MapMode, MapRetention
from tidings.errors import ConfigError

if TYPE_CHECKING:
    from tidings.channels import ChannelOptions

SUBSCRIPTION_TYPES: dict[str, int] = {"stream": 0, "map": 1, "map_clients": 2, "map_users": 3}
"""Namespace ``subscription_type`` -> the ``type`` a client's subscribe request carries.

A namespace accepts one type; a subscribe with another is refused (103).
"""

MAP_DURATION_OPTIONS = frozenset(
    {"key_ttl", "stream_ttl", "meta_ttl", "subscribe_catch_up_timeout"}
)
"""Map options given as durations ("60s", "250ms", or seconds)."""

ClientKey = Literal["", "client_id", "user_id"]


class MapOptions(Struct, forbid_unknown_fields=True, kw_only=True):
    """A map namespace's ``map`` table. Numbers at 0 mean "the default" where one exists."""

    mode: str = ""
    """``ephemeral``, ``recoverable`` or ``persistent`` (required)."""
    key_ttl: float = 0.0
    """Seconds a key lives after its last write; required unless persistent, where it is 0."""
    stream_size: int = 0
    """Changes kept for catching up (stream modes; default 100)."""
    stream_ttl: float = 0.0
    """Seconds the stream outlives the last write (stream modes; default 60)."""
    meta_ttl: float = 0.0
    """Seconds the position outlives the last access (recoverable: 10 x stream_ttl, >= key_ttl;
    persistent: never)."""
    default_page_size: int = 100
    min_page_size: int = 100
    max_page_size: int = 1000
    """A client's page size (``limit``, or the default when it sends none) is clamped to these."""
    live_transition_max_publication_limit: int = 0
    """Most changes a subscribe catches up with when going live (0: ``max_page_size``);
    further behind is unrecoverable (112) and the client reloads the state."""
    subscribe_catch_up_timeout: float = 5.0
    """Seconds a whole subscribe flow may take before disconnect 3008 (negative: no limit)."""
    client_key: ClientKey = ""
    """Key client writes by the writer's client ID or user ID instead of the key they send."""
    remove_client_on_unsubscribe: bool = False
    """Remove the key named by the client's ID when it leaves the channel (cursors)."""
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_remove_for_client: bool = False
    allow_remove_for_subscriber: bool = False
    allow_remove_for_anonymous: bool = False

    @property
    def retention(self) -> MapRetention:
        """What the map engine takes on every call, defaults applied (after :meth:`checked`)."""
        return MapRetention.of(
            self.mode,
            key_ttl=self.key_ttl,
            stream_size=self.stream_size,
            stream_ttl=self.stream_ttl,
            meta_ttl=self.meta_ttl,
        )

    @property
    def has_stream(self) -> bool:
        return MapMode(self.mode).has_stream

    @property
    def live_limit(self) -> int:
        return self.live_transition_max_publication_limit or self.max_page_size

    @property
    def catch_up_timeout(self) -> float | None:
        """Seconds a subscribe flow may take, ``None`` for no limit."""
        return self.subscribe_catch_up_timeout if self.subscribe_catch_up_timeout >= 0 else None

    def page_size(self, requested: int) -> int:
        """The page size for a client's ``limit`` (0 or absent: the default)."""
        if requested <= 0:
            return self.default_page_size
        return max(self.min_page_size, min(requested, self.max_page_size))

    def may_publish(self, user: str, *, subscribed: bool) -> bool:
        """May this client write a key (``publish`` with ``type: 1``)?"""
        return _allowed(
            user,
            subscribed,
            self.allow_publish_for_client,
            self.allow_publish_for_subscriber,
            self.allow_publish_for_anonymous,
        )

    def may_remove(self, user: str, *, subscribed: bool) -> bool:
        """May this client remove a key (``publish`` with ``type: 1, removed: true``)?"""
        return _allowed(
            user,
            subscribed,
            self.allow_remove_for_client,
            self.allow_remove_for_subscriber,
            self.allow_remove_for_anonymous,
        )

    def checked(self, key: str, subscription_type: str = "map") -> MapOptions:
        """These options if they are valid for ``subscription_type``; else a
        :class:`ConfigError` naming ``key.<option>`` and the rule."""
        if not self.mode:
            choices = ", ".join(m.value for m in MapMode)
            raise ConfigError(
                f"{key}.mode: required for a {subscription_type} namespace ({choices})"
            )
        try:
            retention = self.retention
        except ValueError as exc:
            raise ConfigError(f"{key}.{exc}") from None
        if (
            subscription_type in ("map_clients", "map_users")
            and retention.mode is MapMode.PERSISTENT
        ):
            raise ConfigError(
                f"{key}.mode: a {subscription_type} namespace needs keys that expire "
                "(ephemeral or recoverable)"
            )
        if not 1 <= self.min_page_size <= self.default_page_size <= self.max_page_size:
            raise ConfigError(
                f"{key}: page sizes need 1 <= min_page_size <= default_page_size <= "
                f"max_page_size (got {self.min_page_size}, {self.default_page_size}, "
                f"{self.max_page_size})"
            )
        if self.live_transition_max_publication_limit < 0:
            raise ConfigError(
                f"{key}.live_transition_max_publication_limit: must be >= 0, "
                f"got {self.live_transition_max_publication_limit}"
            )
        return self


def _allowed(
    user: str, subscribed: bool, for_client: bool, for_subscriber: bool, anonymous: bool
) -> bool:
    if not user and not anonymous:
        return False
    return for_client or (for_subscriber and subscribed)


def map_options_from_table(
    table: dict[str, object], key: str, subscription_type: str = "map"
) -> MapOptions:
    """Convert and check a ``map`` table whose durations are already in seconds."""
    try:
        options = msgspec.convert(table, MapOptions)
    except msgspec.ValidationError as exc:
        # "Expected `int`, got `str` - at `$.stream_size`" -> "key.stream_size: expected int, ..."
        text, _, where = str(exc).partition(" - at `$")
        where = where.rstrip("`")
        text = text.replace("`", "")
        raise ConfigError(f"{key}{where}: {text[0].lower()}{text[1:]}") from None
    return options.checked(key, subscription_type)


# --------------------------------------------------------------------------- namespaces

STREAM_ONLY_OPTIONS = (
    "history_size",
    "history_ttl",
    "history_meta_ttl",
    "force_recovery",
    "allow_recovery",
    "force_positioning",
    "allow_positioning",
    "allow_publish_for_client",
    "allow_publish_for_subscriber",
    "allow_publish_for_anonymous",
    "allow_history_for_client",
    "allow_history_for_subscriber",
    "allow_history_for_anonymous",
)
"""Options of stream channels that a map namespace has its own ``map`` counterparts of
(recovery follows ``map.mode``, writes ``map.allow_publish_for_*``): set there, they
would silently do nothing, so the configuration is refused instead."""


def map_table_seconds(table: object, key: str, parse: Callable[[object, str], float]) -> object:
    """The ``map`` table with its durations in seconds (``parse`` is the configuration's
    duration parser); a negative ``subscribe_catch_up_timeout`` (no limit) is kept."""
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table, got {table!r}")
    prepared = dict(table)
    for name in MAP_DURATION_OPTIONS:
        if name not in prepared:
            continue
        value = prepared[name]
        if (
            name == "subscribe_catch_up_timeout"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and value < 0
        ):
            prepared[name] = float(value)
        else:
            prepared[name] = parse(value, f"{key}.{name}")
    return prepared


def check_namespace(
    key: str, options: ChannelOptions, namespaces: Mapping[str, ChannelOptions]
) -> None:
    """Raise :class:`ConfigError` unless a namespace's map settings hold together.

    ``subscription_type`` must be known; a map type needs its ``map`` table and
    none of the stream-only options; a map presence prefix names a configured namespace of the right
    type (``clients:`` -> ``[channels.namespaces.clients]`` of ``map_clients``).
    """
    kind = options.subscription_type
    if kind not in SUBSCRIPTION_TYPES:
        known = ", ".join(SUBSCRIPTION_TYPES)
        hint = " (shared poll is not supported)" if kind == "shared_poll" else ""
        raise ConfigError(f"{key}.subscription_type: expected one of {known}, got {kind!r}{hint}")
    if kind == "stream":
        if options.map is not None:
            raise ConfigError(
                f'{key}.map: only for a map namespace (subscription_type = "map", '
                '"map_clients" or "map_users")'
            )
    else:
        if options.map is None:
            raise ConfigError(f'{key}.map: required for a {kind} namespace (mode = "...")')
        options.map.checked(f"{key}.map", kind)
        for name in STREAM_ONLY_OPTIONS:
            if getattr(options, name):
                raise ConfigError(
                    f"{key}.{name}: a stream option, not used by a {kind} namespace "
                    "(see its map table)"
                )
    for option, wanted in (
        ("map_clients_presence_channel_prefix", "map_clients"),
        ("map_users_presence_channel_prefix", "map_users"),
    ):
        prefix = getattr(options, option)
        if not prefix:
            continue
        namespace, boundary, _ = prefix.removeprefix("$").partition(":")
        target = namespaces.get(namespace) if boundary and namespace else None
        if target is None or target.subscription_type != wanted:
            raise ConfigError(
                f"{key}.{option}: expected a prefix naming a {wanted} namespace, such as "
                f'"{wanted.removeprefix("map_")}:" with [channels.namespaces.'
                f'{wanted.removeprefix("map_")}] subscription_type = "{wanted}"; got {prefix!r}'
            )
