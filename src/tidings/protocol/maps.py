"""Wire shapes of map subscriptions: keyed publications and the phased subscribe reply.

docs/protocol.md section 14. A map channel's state entries, its stream changes
and its live pushes are all ``Publication`` objects that carry a ``key``
(and ``removed: true`` for a removal, which has no ``data``). A map subscribe
is answered in one of three phases; the reply always carries ``type: 1`` and
its ``phase`` (left out when 0, LIVE, as zero values are):

* ``STATE`` (2): a page of ``state`` with the next page's ``cursor`` and the
  top frozen at the first page (``offset``/``epoch``);
* ``STREAM`` (1): ``publications`` after the client's offset, and ``offset`` =
  the last one's, from which the client asks again;
* ``LIVE`` (0): the subscription is on; ``state`` holds the last state page,
  ``publications`` the catch-up, ``offset`` the top live pushes continue from.

Sans I/O like the rest of the package: structs and one encode-once helper.
"""

from __future__ import annotations

from msgspec import Raw, Struct

from tidings.protocol.codec import PreparedPush, encode
from tidings.protocol.messages import NO_DATA
from tidings.protocol.messages import MapPublication as MapPublication  # one of the map shapes

LIVE = 0
STREAM = 1
STATE = 2
PHASES = frozenset({LIVE, STREAM, STATE})

MAP = 1
MAP_CLIENTS = 2
MAP_USERS = 3
SHARED_POLL = 4
"""The subscribe ``type`` values: map, map clients presence, map users presence, shared poll."""


class MapSubscribeResult(Struct, omit_defaults=True):
    """The reply to a map subscribe request in any phase.

    ``type`` has no default, so it is always written: 1 (``MAP``) for every map
    type, as Centrifugo answers (the SDK ignores it).
    """

    type: int
    phase: int = LIVE
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    cursor: str = ""
    state: list[MapPublication] = []
    publications: list[MapPublication] = []
    was_recovering: bool = False
    recovered: bool = False
    delta: bool = False
    data: Raw = NO_DATA


def prepare_map_publication(
    channel: str, publication: MapPublication, epoch: str, base: bytes | None = None
) -> PreparedPush:
    """Encode a map change's push once for every subscriber (``{"channel":..,"pub":{..}}``).

    The push's ``offset``/``epoch`` let the hub keep the channel's order as for a
    stream; ``body`` (the :class:`MapPublication`, with its ``key``) lets a wire
    format or a conflation buffer read it without decoding JSON. ``base``: the
    key's value before this write, which the engine hands over when the write asked
    for delta encoding; delta subscribers then get a fossil delta against it (per
    key: a removal, or a key written anew, has none and goes whole).
    """
    encoded = b'"channel":%s,"pub":%s' % (encode(channel), encode(publication))
    push = PreparedPush(
        channel,
        "pub",
        publication,
        encoded,
        publication.offset,
        epoch,
        delta=base is not None,
        per_key=True,
    )
    if base is not None:
        push.base = Raw(base)
    return push
