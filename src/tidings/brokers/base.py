"""The contracts between a Node and the engines that carry its traffic.

Three interfaces, so a deployment can mix implementations and one conformance
suite (``tests/brokers``) runs against each of them:

* :class:`Broker` carries publications, join/leave events and node control
  messages between nodes, and owns each channel's stream (offset, epoch and
  history). History lives with the broker, not beside it, because assigning an
  offset, storing the publication and fanning it out must be one atomic step:
  otherwise two nodes could hand out the same offset, or a subscriber could see
  offset 8 before 7.
* :class:`HistoryReader` reads and trims those streams. Only the broker that
  owns them can implement it, so every :class:`Broker` is a
  :class:`HistoryReader` too (the protocol extends it); code that only reads
  history asks for the narrower type.
* :class:`PresenceStore` keeps who is in a channel. It shares nothing atomic
  with the streams, so it is a separate object and may live elsewhere.

A broker never delivers to clients. It calls its :class:`BrokerEventHandler`
(the Node) and the Node hands publications to its local hub.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tidings.protocol.messages import ClientInfo, Publication, StreamPosition

IDEMPOTENCY_WINDOW = 300.0
"""Seconds a broker remembers an idempotency key by default, as in Centrifugo."""


def new_epoch() -> str:
    """Eight random letters naming one incarnation of a stream (Centrifugo's form)."""
    return "".join(random.choices(string.ascii_letters, k=8))


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How a channel keeps its stream.

    ``size`` items at most, each kept ``ttl`` seconds. The stream's top position
    (offset and epoch) outlives its items for ``meta_ttl`` seconds after the
    last publication; when the metadata is gone the next publication starts a
    new epoch at offset 1, and clients that try to recover from the old epoch
    are told ``recovered: false``.
    """

    size: int
    ttl: float
    meta_ttl: float = 30 * 24 * 3600.0


class BrokerEventHandler(Protocol):
    """What a broker calls when traffic arrives. Implemented by the Node.

    Calls for one channel arrive in the order the broker assigned offsets.
    Handlers must not block: they run on the event loop.
    """

    def handle_publication(
        self,
        channel: str,
        publication: Publication,
        position: StreamPosition | None,
        *,
        delta: bool = False,
    ) -> None:
        """A publication for a channel this node subscribed to.

        ``position`` is the stream position after it (``None`` when the
        channel keeps no history, in which case ``publication.offset`` is 0).
        ``delta``: its publisher asked for delta encoding (``publish(delta=True)``).
        """

    def handle_join(self, channel: str, info: ClientInfo) -> None: ...

    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...

    def handle_control(self, message: bytes) -> None:
        """A node-to-node control message (every node receives every one, its own too)."""

    def handle_resubscribed(self, channels: Sequence[str]) -> None:
        """The pub/sub link was re-established: ``channels`` may have missed publications.

        A broker whose link can drop calls it once it holds its subscriptions
        again, with the channels this node still wants (never an empty list).
        Publications in the gap are in the streams, not redelivered: the Node
        asks the subscribers that track positions to recover. A broker that
        cannot lose its link (memory) never calls it.
        """


@runtime_checkable
class HistoryReader(Protocol):
    """Reads of the per-channel stream a :class:`Broker` maintains.

    ``history`` returns the publications selected, oldest first unless
    ``reverse``, and always the current top position (a channel never published
    to has offset 0 and a fresh epoch, which this call creates):

    * ``limit`` 0 and no ``since``: no publications, only the position.
      ``limit`` 0 with ``since``: every publication after ``since``.
    * ``limit`` -1: every publication kept. ``limit`` N > 0: at most N.
    * ``since``: publications with offset > ``since.offset`` (with
      ``reverse``: offset < ``since.offset``, newest first). The caller
      compares ``since.epoch`` with the returned epoch.
    * without ``since``, ``reverse`` starts from the newest.

    ``remove_history`` drops the items but keeps the top position and epoch.
    """

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
        meta_ttl: float | None = None,
    ) -> tuple[list[Publication], StreamPosition]: ...

    async def remove_history(self, channel: str) -> None: ...


@runtime_checkable
class Broker(HistoryReader, Protocol):
    """Pub/sub between nodes plus the per-channel streams, which it also reads.

    A broker is the :class:`HistoryReader` of the streams it writes: the offset
    ``publish`` returns and the top position ``history`` returns come from the
    same place, so a subscriber that reads history then listens sees no gap.

    Contract:

    * ``publish`` with ``history`` set assigns offset = previous top + 1 (the
      first is 1), appends the publication to the stream, trims it to
      ``history.size`` items, and hands it to every node subscribed to the
      channel, all as one atomic step. Subscribers see offsets in increasing
      order. The call returns the new top position.
    * ``publish`` without ``history`` delivers with offset 0 and stores
      nothing; it returns ``None``.
    * An ``idempotency_key`` seen for the same channel within the broker's
      window (:data:`IDEMPOTENCY_WINDOW` unless configured) makes ``publish``
      return the first call's result and deliver nothing.
    * ``subscribe``/``unsubscribe`` state this node's interest in a channel
      (reference-counted); the Node calls them on its first local subscriber and
      after its last. Publications, joins and leaves reach a node only for
      channels it is interested in; control messages reach every node.
    * ``publish`` never keeps or changes the caller's ``Publication`` object.
    * ``publish(delta=True)`` reaches every node's handler with ``delta=True``:
      the publisher asks subscribers that negotiated delta compression to get
      it as a delta against the previous publication. Nothing is stored of it.
    * When a stream's history is lost (restart without persistence, flush,
      metadata expiry) its epoch changes. Offsets mean nothing across epochs.
    * A call that cannot reach the engine in time raises
      :class:`tidings.errors.BrokerUnavailable`.
    """

    def set_event_handler(self, handler: BrokerEventHandler) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(
        self,
        channel: str,
        publication: Publication,
        *,
        history: HistoryOptions | None = None,
        idempotency_key: str = "",
        delta: bool = False,
    ) -> StreamPosition | None: ...

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_control(self, message: bytes) -> None: ...

    async def ping(self) -> None:
        """Return when the engine answers and carries traffic; raise ``BrokerUnavailable``
        otherwise. Readiness (``GET /ready``) asks it, under its own deadline.

        A networked broker makes one round trip and checks that its pub/sub
        links are connected and hold the control channel (a node whose link is
        down hears no publications). The memory broker always answers.
        """
        ...


@runtime_checkable
class PresenceStore(Protocol):
    """Who is subscribed to a channel, across all nodes.

    Entries are keyed by client id. The Node re-adds its entries every
    ``presence_refresh_interval`` seconds; an entry not refreshed within ``ttl``
    disappears, so a node that dies leaves no ghosts behind for longer than that.
    """

    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None: ...

    async def add_presence_many(
        self, entries: Sequence[tuple[str, str, ClientInfo]], ttl: float
    ) -> None:
        """``add_presence`` for many ``(channel, client id, info)`` entries at once.

        The Node's periodic refresh uses it; a networked store does it in one
        round trip instead of one per entry.
        """
        ...

    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """``(number of clients, number of distinct users)``."""
        ...

    async def close(self) -> None: ...
