"""Channel names, namespaces, per-namespace options and permission checks.

Names and semantics follow Centrifugo so its configuration carries over:
``namespace:name`` (boundary ``:``), private channels start with ``$`` and
need a subscription token, user-limited channels end in ``#user1,user2``.
Everything here is pure: no I/O, no clock.

Every channel a client, a token or the server API names goes through
:meth:`ChannelRules.options` first, which parses strictly (error 107, bad
request): the name is 1 to ``channel_max_length`` bytes of UTF-8 (docs/protocol.md
section 1: 255 by default), holds no control character (C0, DEL, C1) and no
lone surrogate, and a namespace boundary has a non-empty namespace before it
and a non-empty name after it. A well-formed name in a namespace that is not
configured is error 102 (unknown channel): nothing is open by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from msgspec import Struct

from tidings.brokers.base import HistoryOptions
from tidings.errors import ErrorCode, ReplyError
from tidings.maps_config import MapOptions

NAMESPACE_BOUNDARY = ":"
USER_BOUNDARY = "#"
USER_SEPARATOR = ","
PRIVATE_PREFIX = "$"
NAMESPACE_NAME = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")

_FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""C0 controls (NUL, TAB, CR, LF...), DEL, C1 controls and lone surrogates.

None belongs in a name; they forge log lines and confuse terminals and other
tools that print channel names, and a lone surrogate cannot be encoded.
"""


class ChannelOptions(Struct, forbid_unknown_fields=True, kw_only=True):
    """Options of one namespace (or of channels without a namespace).

    Every option is off by default: a channel does only what its configuration
    allows. Option names are Centrifugo's where the concept is the same.
    """

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = 0
    history_ttl: float = 0.0
    history_meta_ttl: float = 0.0
    force_recovery: bool = False
    allow_recovery: bool = False
    force_positioning: bool = False
    allow_positioning: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_anonymous: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_client: bool = False
    allow_history_for_anonymous: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    allowed_delta_types: list[str] = []
    """Delta encodings a subscriber may negotiate (``["fossil"]``); empty: none
    (docs/protocol.md, "Delta compression")."""
    delta_publish: bool = False
    """Every publication asks for delta encoding, as the server API's ``delta`` flag does."""
    conflate_by: str = ""
    """``"key"``: a subscriber that cannot keep up, or asks for a rate, gets the latest
    publication of each key instead of every one (docs/protocol.md, "Latest-value
    conflation"); ``"none"``: never; ``""``: the subscription type's default (off for
    streams; map channels conflate unless ``"none"``)."""
    max_frequency: float = 0.0
    """Default rate, in updates per second per key, of a subscriber to a conflating
    channel; 0: as fast as it reads."""
    # Map subscriptions (docs/protocol.md section 14), with Centrifugo's names.
    subscription_type: str = "stream"
    """``stream``, ``map``, ``map_clients`` or ``map_users``: the one kind of subscription
    the namespace accepts (a subscribe of another ``type`` gets 103)."""
    map: MapOptions | None = None
    """The ``map`` table of a map namespace (required for the map types)."""
    map_clients_presence_channel_prefix: str = ""
    """Keep one entry per subscribed client in the map channel ``<prefix><channel>``."""
    map_users_presence_channel_prefix: str = ""
    """Keep one entry per subscribed user in the map channel ``<prefix><channel>``."""

    @property
    def conflates(self) -> bool:
        """Publications here may be conflated by key (``conflate_by = "key"``, or a map
        namespace unless ``conflate_by = "none"``)."""
        return self.conflate_by == "key" or (self.is_map and self.conflate_by != "none")

    @property
    def is_map(self) -> bool:
        """A namespace of map subscriptions (``map``, ``map_clients`` or ``map_users``)."""
        return self.subscription_type != "stream"

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0

    def history_options(self, default_meta_ttl: float) -> HistoryOptions | None:
        if not self.history_enabled:
            return None
        return HistoryOptions(
            size=self.history_size,
            ttl=self.history_ttl,
            meta_ttl=self.history_meta_ttl or default_meta_ttl,
        )


DURATION_OPTIONS = frozenset({"history_ttl", "history_meta_ttl"})
"""Channel options given as durations ("300s", "5m", or seconds)."""

DELTA_TYPES = frozenset({"fossil"})
"""What ``allowed_delta_types`` may name: the encodings tidings implements."""

CONFLATE_BY = ("", "key", "none")
"""What ``conflate_by`` may be."""


@dataclass(frozen=True, slots=True)
class ChannelName:
    """A parsed channel name."""

    name: str
    namespace: str
    private: bool
    allowed_users: frozenset[str] | None


def parse_channel(name: str) -> ChannelName:
    """Split a channel name into namespace, privacy and user limit (no checks)."""
    private = name.startswith(PRIVATE_PREFIX)
    bare = name[1:] if private else name
    namespace = ""
    if NAMESPACE_BOUNDARY in bare:
        namespace = bare.split(NAMESPACE_BOUNDARY, 1)[0]
    allowed_users = None
    if USER_BOUNDARY in name:
        users = name.rsplit(USER_BOUNDARY, 1)[1]
        allowed_users = frozenset(u for u in users.split(USER_SEPARATOR) if u)
    return ChannelName(name, namespace, private, allowed_users)


def check_channel_name(channel: str, max_length: int) -> None:
    """Raise :class:`ReplyError` 107 unless ``channel`` is a well-formed name.

    Well-formed: 1 to ``max_length`` bytes of UTF-8, no control character or
    lone surrogate, not the bare private prefix ``$``, and when it holds the
    namespace boundary ``:``, a non-empty namespace before it and a non-empty
    name after it (``:x``, ``$:x`` and ``chat:`` are refused).
    """
    if not channel or _FORBIDDEN_CHARACTERS.search(channel) is not None:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    if len(channel) > max_length or len(channel.encode()) > max_length:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    bare = channel[1:] if channel.startswith(PRIVATE_PREFIX) else channel
    if not bare:
        raise ReplyError(ErrorCode.BAD_REQUEST)
    namespace, boundary, name = bare.partition(NAMESPACE_BOUNDARY)
    if boundary and (not namespace or not name):
        raise ReplyError(ErrorCode.BAD_REQUEST)


class ChannelRules:
    """Resolves a channel to its options and answers permission questions.

    Each check raises :class:`ReplyError` with the protocol's code: 107 for a
    malformed name, 102 for an unknown namespace, 108 when a feature is off,
    103 when the client may not.
    """

    def __init__(
        self,
        top_level: ChannelOptions,
        namespaces: dict[str, ChannelOptions],
        *,
        max_channel_length: int = 255,
    ) -> None:
        self.top_level = top_level
        self.namespaces = namespaces
        self.max_channel_length = max_channel_length

    def options(self, channel: str) -> ChannelOptions:
        """A channel's options, after strict parsing.

        107 (bad request) for a malformed name (see :func:`check_channel_name`);
        102 (unknown channel) for a namespace that is not configured.
        """
        check_channel_name(channel, self.max_channel_length)
        bare = channel[1:] if channel.startswith(PRIVATE_PREFIX) else channel
        namespace, boundary, _ = bare.partition(NAMESPACE_BOUNDARY)
        if not boundary:
            return self.top_level
        options = self.namespaces.get(namespace)
        if options is None:
            raise ReplyError(ErrorCode.UNKNOWN_CHANNEL)
        return options

    def check_subscribe(self, channel: str, user: str, *, has_token: bool) -> ChannelOptions:
        """Subscribe without a subscription token (a valid token decides alone, elsewhere)."""
        options = self.options(channel)
        parsed = parse_channel(channel)
        if has_token:
            return options
        if parsed.private:
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        if parsed.allowed_users is not None and options.allow_user_limited_channels:
            if user and user in parsed.allowed_users:
                return options
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        if options.allow_subscribe_for_client and (user or options.allow_subscribe_for_anonymous):
            return options
        raise ReplyError(ErrorCode.PERMISSION_DENIED)

    def check_publish(self, channel: str, user: str, *, subscribed: bool) -> ChannelOptions:
        options = self.options(channel)
        allowed = (
            options.allow_publish_for_client and (user or options.allow_publish_for_anonymous)
        ) or (
            options.allow_publish_for_subscriber
            and subscribed
            and (user or options.allow_publish_for_anonymous)
        )
        if not allowed:
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        return options

    def check_history(self, channel: str, user: str, *, subscribed: bool) -> ChannelOptions:
        options = self.options(channel)
        if not options.history_enabled:
            raise ReplyError(ErrorCode.NOT_AVAILABLE)
        if not self.may_read_history(options, user, subscribed=subscribed):
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        return options

    def check_presence(self, channel: str, user: str, *, subscribed: bool) -> ChannelOptions:
        options = self.options(channel)
        if not options.presence:
            raise ReplyError(ErrorCode.NOT_AVAILABLE)
        if not self.may_read_presence(options, user, subscribed=subscribed):
            raise ReplyError(ErrorCode.PERMISSION_DENIED)
        return options

    @staticmethod
    def may_read_history(options: ChannelOptions, user: str, *, subscribed: bool) -> bool:
        return bool(
            (options.allow_history_for_client and (user or options.allow_history_for_anonymous))
            or (
                options.allow_history_for_subscriber
                and subscribed
                and (user or options.allow_history_for_anonymous)
            )
        )

    @staticmethod
    def may_read_presence(options: ChannelOptions, user: str, *, subscribed: bool) -> bool:
        return bool(
            (options.allow_presence_for_client and (user or options.allow_presence_for_anonymous))
            or (
                options.allow_presence_for_subscriber
                and subscribed
                and (user or options.allow_presence_for_anonymous)
            )
        )
