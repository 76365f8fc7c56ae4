"""Node-to-node control messages: a tagged union of typed structs.

The broker carries them to every node (``Broker.publish_control``). Each kind
is its own struct, tagged by ``op`` on the wire, so a handler receives exactly
the fields its kind has. The field names and the ``op`` values are the wire
format between nodes of one deployment: nodes of two consecutive versions must
understand each other during a rolling upgrade, so rename nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Raw, Struct

from tidings.protocol.messages import NO_DATA


class _Control(Struct, tag_field="op", omit_defaults=True):
    """Base of every control message."""


class ClientSelector(_Control):
    """Which connections an action applies to: every one of ``user``, narrowed by
    ``client`` (a client id) or ``session`` (an emulation/unidirectional session id)."""

    user: str = ""
    client: str = ""
    session: str = ""


class DisconnectClients(ClientSelector, tag="disconnect"):
    """Server API ``disconnect``: close the selected connections with ``code``/``reason``."""

    whitelist: list[str] = []
    code: int = 0
    reason: str = ""


class UnsubscribeClients(ClientSelector, tag="unsubscribe"):
    """Server API ``unsubscribe``: end the selected connections' subscription to ``channel``."""

    channel: str = ""


class SubscribeClients(ClientSelector, tag="subscribe"):
    """Server API ``subscribe``: subscribe the selected connections on the server's initiative.

    ``since_offset`` -1 means no recovery; otherwise recover from that position.
    """

    channel: str = ""
    info: Raw = NO_DATA
    data: Raw = NO_DATA
    since_offset: int = -1
    since_epoch: str = ""


class RefreshClients(ClientSelector, tag="refresh"):
    """Server API ``refresh``: move the selected connections' expiry, or end them now."""

    expire_at: int = 0
    expired: bool = False
    info: Raw = NO_DATA


class NodeAnnouncement(_Control, tag="node"):
    """A node's periodic description of itself (API ``info``)."""

    node: dict[str, Any] = {}


class NodeDeparture(_Control, tag="node_gone"):
    """A node shuts down: stop counting it now rather than when it goes silent."""

    sender: str = ""


class ChannelsSurvey(_Control, tag="channels"):
    """Server API ``channels``: every other node answers with its local counts."""

    survey: str = ""
    sender: str = ""
    channel: str = ""
    """A glob pattern; empty for every channel."""


class ChannelsReply(_Control, tag="channels_reply"):
    survey: str = ""
    sender: str = ""
    counts: dict[str, int] = {}


class EmulationCommands(_Control, tag="emulation"):
    """Commands posted to ``/emulation`` on a node other than the session's owner.

    ``commands`` holds JSON commands as text; ``protobuf`` the length-prefixed
    Protobuf commands of a Protobuf session (base64 in this JSON message).
    """

    target: str = ""
    session: str = ""
    commands: str = ""
    sender: str = ""
    protobuf: bytes = b""


ClientAction = DisconnectClients | UnsubscribeClients | SubscribeClients | RefreshClients
ControlMessage = (
    ClientAction
    | NodeAnnouncement
    | NodeDeparture
    | ChannelsSurvey
    | ChannelsReply
    | EmulationCommands
)

_decoder = msgspec.json.Decoder(ControlMessage)
_encoder = msgspec.json.Encoder()


def encode_control(message: ControlMessage) -> bytes:
    return _encoder.encode(message)


def decode_control(data: bytes) -> ControlMessage:
    """Raises ``msgspec.DecodeError``/``ValidationError`` for what no node sent."""
    return _decoder.decode(data)
