"""The editor example's server through ``TestClient``, with pycrdt documents as the pages.

pycrdt speaks the same Yjs update format as the browser's ``yjs``, so these
tests play the page's part (publish updates, call ``sync``) without a browser:
a newcomer's single message, convergence after offline edits, refusals, and
the two stores (in memory, and Redis shared by several application objects as
by several processes).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pycrdt import Doc, Text

from examples.editor.app import Editor
from examples.editor.documents import MERGE_AFTER, RedisDocuments
from tests.support.redis import REDIS_URL, delete_keys, redis_unreachable, unique_prefix
from tidings import ClientError
from tidings.testing import TestClient

pytestmark = pytest.mark.timeout(30)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def entry(name: str, user: str) -> dict[str, str]:
    return {"name": name, "colour": "#00798c", "user": user}


class Page:
    """What the browser page does, with pycrdt: a Y.Doc whose edits are published."""

    def __init__(self, client: TestClient, document: str = "notes") -> None:
        self.client = client
        self.document = document
        self.doc = Doc()
        self.text = self.doc.get("text", type=Text)
        self.outbox: list[bytes] = []
        self.doc.observe(lambda event: self.outbox.append(event.update))
        self.sync_replies: list[dict[str, Any]] = []

    async def send(self) -> None:
        """Publish what was edited since the last call, one update per edit."""
        updates, self.outbox = self.outbox, []
        for update in updates:
            await self.client.publish(f"doc:{self.document}", {"update": b64(update)})

    async def sync(self) -> None:
        """The page's catch-up: what it lacks in, what the server lacks out."""
        reply = await self.client.rpc(
            "sync", {"doc": self.document, "state_vector": b64(self.doc.get_state())}
        )
        self.sync_replies.append(reply)
        self.outbox.clear()
        self.apply(reply["update"])
        self.outbox.clear()  # the server's own updates need not go back
        missing = self.doc.get_update(base64.b64decode(reply["state_vector"]))
        if len(missing) > 2:
            await self.client.publish(f"doc:{self.document}", {"update": b64(missing)})

    def apply(self, update: str) -> None:
        self.doc.apply_update(base64.b64decode(update))

    def type(self, at: int, text: str) -> None:
        for offset, char in enumerate(text):  # one update per keystroke, as typed
            self.text.insert(at + offset, char)

    def __str__(self) -> str:
        return str(self.text)


# --------------------------------------------------------------------------- the stores


@pytest.fixture(params=["memory", "redis"])
async def make_editor(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Editor]]:
    """Editors on one broker: on Redis each call makes another, sharing the documents as
    processes do; in memory (one process) every call gives the same one."""
    overrides: dict[str, Any] = {"port": 0}
    if request.param == "redis":
        reason = redis_unreachable(REDIS_URL)
        if reason:
            pytest.skip(reason)
        overrides.update(broker=REDIS_URL, broker_prefix=unique_prefix("teditor"))
    made: list[Editor] = []

    def make() -> Editor:
        if request.param == "redis" or not made:
            made.append(Editor(**overrides))
        return made[-1]

    yield make
    for editor in made:
        await editor.rt.stop()
        await editor.close()
    if request.param == "redis":
        await delete_keys(REDIS_URL, overrides["broker_prefix"])


async def test_a_newcomer_gets_the_document_in_one_merged_update(
    make_editor: Callable[[], Editor],
) -> None:
    editor = make_editor()
    async with editor.rt, TestClient(editor.rt, data=entry("Ada", "browser-0001")) as ada:
        page = Page(ada)
        await page.sync()
        page.type(0, "Hello, world! " * 10)
        sent = list(page.outbox)
        await page.send()
        assert len(sent) == 140 > MERGE_AFTER

        async with TestClient(editor.rt, data=entry("Bob", "browser-0002")) as bob:
            newcomer = Page(bob)
            await newcomer.sync()
            assert str(newcomer) == "Hello, world! " * 10
            (reply,) = newcomer.sync_replies
            merged = base64.b64decode(reply["update"])
            # One message holding the document, far smaller than the keystrokes that made it.
            assert len(merged) < sum(map(len, sent)) / 10
            # The newcomer had nothing the server lacked: it published nothing.
            assert newcomer.outbox == []


async def test_edits_reach_the_other_page_live(make_editor: Callable[[], Editor]) -> None:
    editor = make_editor()
    async with (
        editor.rt,
        TestClient(editor.rt, data=entry("Ada", "browser-0001")) as ada,
        TestClient(editor.rt, data=entry("Bob", "browser-0002")) as bob,
    ):
        bobs = await bob.subscribe("doc:notes")
        ada_page, bob_page = Page(ada), Page(bob)
        await bob_page.sync()
        ada_page.type(0, "hi")
        await ada_page.send()
        for _ in range(2):
            bob_page.apply((await bobs.next()).data["update"])
        assert str(bob_page) == "hi"


async def test_pages_editing_apart_converge_when_they_sync(
    make_editor: Callable[[], Editor],
) -> None:
    """Both edit while apart (nothing published); one sync each and they agree, with
    both edits kept. On Redis the two pages are on two application objects."""
    first, second = make_editor(), make_editor()
    async with (
        first.rt,
        second.rt,
        TestClient(first.rt, data=entry("Ada", "browser-0001")) as ada,
        TestClient(second.rt, data=entry("Bob", "browser-0002")) as bob,
    ):
        ada_page, bob_page = Page(ada), Page(bob)
        ada_page.type(0, "shared start\n")
        await ada_page.send()
        await bob_page.sync()
        assert str(bob_page) == "shared start\n"

        ada_page.type(0, "Ada was here. ")  # offline: not sent
        bob_page.type(len(str(bob_page)), "Bob too.")
        ada_page.outbox.clear()
        bob_page.outbox.clear()

        await ada_page.sync()  # Ada comes back first: her edits go up
        await bob_page.sync()  # Bob gets hers, and sends his
        await ada_page.sync()  # Ada gets his
        assert str(ada_page) == str(bob_page) == "Ada was here. shared start\nBob too."


async def test_documents_lists_what_was_edited_last(make_editor: Callable[[], Editor]) -> None:
    editor = make_editor()
    async with editor.rt, TestClient(editor.rt, data=entry("Ada", "browser-0001")) as ada:
        for name, text in (("groceries", "\n  Milk, eggs\nbread"), ("plans", "World domination")):
            page = Page(ada, name)
            page.type(0, text)
            await page.send()
        assert await ada.rpc("documents") == [
            {"name": "plans", "title": "World domination"},
            {"name": "groceries", "title": "Milk, eggs"},
        ]


async def test_documents_are_kept_in_redis_across_restarts() -> None:
    reason = redis_unreachable(REDIS_URL)
    if reason:
        pytest.skip(reason)
    prefix = unique_prefix("teditor")
    try:
        for attempt in range(2):
            editor = Editor(port=0, broker=REDIS_URL, broker_prefix=prefix)
            async with editor.rt, TestClient(editor.rt, data=entry("Ada", "browser-0001")) as ada:
                page = Page(ada)
                await page.sync()
                if attempt == 0:
                    page.type(0, "still here after a restart")
                    await page.send()
                else:
                    assert str(page) == "still here after a restart"
            await editor.close()
    finally:
        await delete_keys(REDIS_URL, prefix)


async def test_merging_in_redis_loses_no_update_written_meanwhile() -> None:
    """Another process appends while one merges: the merge replaces only what it read."""
    reason = redis_unreachable(REDIS_URL)
    if reason:
        pytest.skip(reason)
    prefix = unique_prefix("teditor")
    one, other = RedisDocuments(REDIS_URL, prefix), RedisDocuments(REDIS_URL, prefix)
    try:
        doc = Doc()
        text = doc.get("text", type=Text)
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        for char in "x" * (MERGE_AFTER + 5):
            text += char
        key, _ = one._keys("race")
        await one.redis.rpush(key, *updates)

        state = await one.state("race")  # reads all, merges, and replaces them
        assert await one.redis.llen(key) == 1
        text += "y"  # written by another process after the first one read
        await other.apply("race", updates[-1])
        stale = await other.redis.lrange(key, 0, -1)
        # A merge based on an older read (the generation moved on) changes nothing.
        await one._merge(keys=one._keys("race"), args=[1, state, b""])
        assert await one.redis.lrange(key, 0, -1) == stale

        whole = Doc()
        whole.apply_update(await other.state("race"))
        assert str(whole.get("text", type=Text)) == "x" * (MERGE_AFTER + 5) + "y"
    finally:
        await one.close()
        await other.close()
        await delete_keys(REDIS_URL, prefix)


# --------------------------------------------------------------------------- refusals


@pytest.fixture
async def editor() -> AsyncIterator[Editor]:
    app = Editor(port=0)
    async with app.rt:
        yield app
    await app.close()


@pytest.mark.parametrize(
    "data",
    [None, entry("", "browser-0001"), entry("   ", "browser-0001"), entry("Ada", "x"),
     {"name": "Ada", "colour": "red", "user": "browser-0001"}],
)  # fmt: skip
async def test_an_entry_needs_a_name_and_a_colour(editor: Editor, data: object) -> None:
    with pytest.raises(ClientError) as refused:
        async with TestClient(editor.rt, data=data):
            pass
    assert refused.value.code == 400


async def test_presence_carries_name_and_colour(editor: Editor) -> None:
    async with TestClient(editor.rt, data=entry(" Ada  L ", "browser-0001")) as ada:
        await ada.subscribe("cursors:notes")
        (info,) = (await ada.presence("cursors:notes")).values()
        assert info.conn_info == {"name": "Ada L", "colour": "#00798c"}


@pytest.mark.parametrize(
    ("channel", "data", "code", "says"),
    [
        ("doc:notes", {"update": b64(b"\x01\x02\x03\x04")}, 400, "not a Yjs update"),
        ("doc:notes", {"update": "not base64!"}, 107, "$.update"),
        ("doc:notes", {"update": "A" * 48_004}, 107, "length <= 48000"),
        ("doc:notes", {"text": "hello"}, 107, "unknown field `text`"),
        ("doc:Notes", {"update": b64(Doc().get_update())}, 400, "document name"),
        ("cursors:notes", {"update": b64(b"xxxx")}, 107, "client_id"),
    ],
)
async def test_bad_updates_are_refused(
    editor: Editor, channel: str, data: dict[str, Any], code: int, says: str
) -> None:
    async with TestClient(editor.rt, data=entry("Ada", "browser-0001")) as ada:
        if channel.startswith("cursors:"):
            await ada.subscribe(channel)  # only its subscribers publish there
        with pytest.raises(ClientError) as refused:
            await ada.publish(channel, data)
        assert refused.value.code == code
        assert says in refused.value.message
        assert await editor.documents.recent(10) == []


async def test_sync_refuses_a_bad_state_vector(editor: Editor) -> None:
    async with TestClient(editor.rt, data=entry("Ada", "browser-0001")) as ada:
        with pytest.raises(ClientError) as refused:
            await ada.rpc("sync", {"doc": "notes", "state_vector": b64(b"\xff\xff")})
        assert (refused.value.code, refused.value.message) == (400, "not a Yjs state vector")
