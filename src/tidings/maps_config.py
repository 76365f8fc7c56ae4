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

from typing import Literal

import msgspec
from msgspec import Struct

from tidings.brokers.maps import MapMode, MapRetention
from tidings.errors import ConfigError

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
