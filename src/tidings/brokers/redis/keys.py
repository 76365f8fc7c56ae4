"""The Redis key layout: ``<prefix>:{<channel>}:<part>``, one hash slot per channel."""

from __future__ import annotations

from tidings.errors import ConfigError


class Keys:
    """Key names for one prefix.

    The channel is the hash tag (``%`` and ``}`` in it escaped as ``%25`` and
    ``%7D``), so all of a channel's keys and its sharded pub/sub channel live in
    one cluster slot and one script can touch them all.
    """

    __slots__ = ("control", "prefix")

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"redis prefix: expected a non-empty name without braces, got {prefix!r}"
            )
        self.prefix = prefix
        self.control = f"{prefix}:control"

    def channel(self, channel: str) -> str:
        """The common start of a channel's keys; the hash tag is the whole channel."""
        if "%" in channel or "}" in channel:
            channel = channel.replace("%", "%25").replace("}", "%7D")
        return f"{self.prefix}:{{{channel}}}"

    def pubsub(self, channel: str) -> str:
        return self.channel(channel) + ":pub"

    def presence(self, channel: str) -> list[str]:
        """The three keys of a channel's presence, in the order the presence scripts take."""
        base = self.channel(channel)
        return [base + ":presence", base + ":presence_users", base + ":presence_expiry"]
