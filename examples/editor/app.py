"""Collaborative editor: shared documents with Yjs in the browser and pycrdt here.

Run it from the repository root with ``make editor`` (it builds the page's
bundle from npm first), or ``npm ci && npm run build`` then
``tidings serve examples.editor.app:rt``, and open http://127.0.0.1:8000 in
two windows. On Redis, across processes, the documents live in Redis:
``tidings serve examples.editor.app:rt --broker redis://127.0.0.1:6379``.

What tidings does here (docs/python.md):

* ``doc:NAME`` carries the document's Yjs updates, base64 in JSON, from every
  page to every other page. It is a **typed channel** (``DocUpdate``), and
  ``on_publish`` checks that each update decodes, then adds it to the
  server's copy of the document (documents.py) *before* it is published, so
  the server's copy always holds everything anyone has received.
* The ``sync`` RPC is how a page catches up: it sends its Yjs state vector and
  gets back, in one message, exactly what it lacks: the whole document for a
  newcomer (one merged update, not the history of keystrokes), only the edits
  it missed for a page that was offline, and the server's state vector, from
  which the page works out what the server lacks (its own offline edits) and
  publishes it. A page calls it each time its subscription is (re)established,
  after it has joined the channel, so nothing published in between is lost.
* ``cursors:NAME`` carries Yjs awareness (names, colours, cursors and
  selections) on a channel with presence and join/leave and no history: who has
  the document open is presence; a page that leaves takes its cursor with it.
* ``on_connect`` turns the name and colour chosen on entry into the
  connection's ``info``, which presence and join/leave carry.

There are no accounts and no permissions: anyone may open or edit any document.
A real application checks both in ``on_connect`` and ``on_subscribe``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from pycrdt import get_state, get_update

from examples.editor.documents import (
    DocumentStore,
    MemoryDocuments,
    RedisDocuments,
    check_update,
    first_line,
)
from tidings import (
    ClientError,
    ConnectContext,
    ConnectResult,
    PublishContext,
    RPCContext,
    SubscribeContext,
    Tidings,
)

HERE = Path(__file__).parent
BUNDLE = HERE / "static" / "dist" / "editor.js"

log = logging.getLogger("examples.editor")

DOCUMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
"""A document's name: what follows ``doc:`` and ``cursors:``."""

Base64 = Annotated[str, Meta(min_length=4, max_length=48_000, pattern=r"^[A-Za-z0-9+/]+=*$")]
"""Binary Yjs data in JSON. 48,000 characters keep a message under the server's
64 KiB ``max_message_size``; a larger paste is refused (and the page says so)."""


class DocUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """``doc:NAME``: one Yjs update (``Y.encodeStateAsUpdate``/``'update'`` event)."""

    update: Base64


class Cursors(msgspec.Struct, forbid_unknown_fields=True):
    """``cursors:NAME``: a Yjs awareness update from the Yjs client ``client_id``."""

    client_id: Annotated[int, Meta(ge=0)]
    update: Base64


class Sync(msgspec.Struct, forbid_unknown_fields=True):
    """The ``sync`` RPC: the document, and the page's Yjs state vector."""

    doc: str
    state_vector: Annotated[str, Meta(max_length=48_000)]


class Synced(msgspec.Struct):
    update: str
    """What the page lacks, as one Yjs update."""
    state_vector: str
    """The server's state vector: the page publishes what the server lacks."""


class Document(msgspec.Struct):
    name: str
    title: str


class Entry(msgspec.Struct):
    """The connect command's ``data``: who is editing."""

    name: Annotated[str, Meta(min_length=1, max_length=32)]
    colour: Annotated[str, Meta(pattern=r"^#[0-9a-fA-F]{6}$")]
    user: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


def document_of(channel_or_name: str) -> str:
    """The document a ``doc:``/``cursors:`` channel (or a bare name) is about, or 400."""
    name = channel_or_name.rpartition(":")[2]
    if not DOCUMENT.fullmatch(name):
        raise ClientError(400, "a document name is 1-32 lowercase letters, digits or dashes")
    return name


def decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ClientError(400, "not base64") from None


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Editor:
    """The application (``rt``) and the documents it keeps.

    The store is chosen on first use, not at import: ``tidings serve ... --broker
    redis://...`` sets the broker after this module is imported.
    """

    def __init__(self, **overrides: Any) -> None:
        if not BUNDLE.is_file():
            log.warning("%s is missing: run `npm ci && npm run build` (or make editor)", BUNDLE)
        self.rt = rt = Tidings(HERE / "tidings.toml", **overrides)
        self._documents: DocumentStore | None = None
        rt.static("/", HERE / "static")
        rt.channel("doc:*", schema=DocUpdate)
        rt.channel("cursors:*", schema=Cursors)
        rt.on_connect(self.enter)
        rt.on_subscribe("doc:*")(self.open_document)
        rt.on_subscribe("cursors:*")(self.open_document)
        rt.on_publish("doc:*")(self.edit)
        rt.rpc("sync")(self.sync)
        rt.rpc("documents")(self.recent_documents)

    @property
    def documents(self) -> DocumentStore:
        if self._documents is None:
            broker = self.rt.config.broker
            if broker == "memory":
                self._documents = MemoryDocuments()
            elif broker.startswith(("redis://", "rediss://", "unix://")):
                self._documents = RedisDocuments(broker, self.rt.config.broker_prefix)
            else:
                raise RuntimeError(f"the editor keeps documents in redis:// only, not {broker}")
        return self._documents

    async def close(self) -> None:
        if self._documents is not None:
            await self._documents.close()
            self._documents = None

    # ------------------------------------------------------------------ handlers

    async def enter(self, ctx: ConnectContext) -> ConnectResult:
        try:
            entry = msgspec.convert(ctx.data, Entry)
        except msgspec.ValidationError:
            raise ClientError(400, "choose a name of 1-32 characters and a colour") from None
        name = " ".join(entry.name.split())
        if not name:
            raise ClientError(400, "choose a name of 1-32 characters and a colour")
        info = {"name": name, "colour": entry.colour.lower()}
        return ConnectResult(entry.user, info=info, data=info)

    async def open_document(self, ctx: SubscribeContext) -> None:
        document_of(ctx.channel)

    async def edit(self, ctx: PublishContext, data: DocUpdate) -> None:
        """Keep the update (before anyone receives it), then publish it as sent."""
        update = decode(data.update)
        try:
            check_update(update)
        except ValueError:
            raise ClientError(400, "not a Yjs update") from None
        await self.documents.apply(document_of(ctx.channel), update)

    async def sync(self, ctx: RPCContext, params: Sync) -> Synced:
        """What the page lacks, and the server's state vector (Yjs sync steps 1 and 2)."""
        state = await self.documents.state(document_of(params.doc))
        try:
            missing = get_update(state, decode(params.state_vector))
        except ValueError:
            raise ClientError(400, "not a Yjs state vector") from None
        return Synced(encode(missing), encode(get_state(state)))

    async def recent_documents(self, ctx: RPCContext, params: Any) -> list[Document]:
        names = await self.documents.recent(20)
        return [Document(name, first_line(await self.documents.state(name))) for name in names]


editor = Editor()
rt = editor.rt
