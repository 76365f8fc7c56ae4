"""The arena example in headless Chromium: real pages, the real game loop, real sockets.

Each page joins with a name, steers with the keyboard and draws what the server
publishes; ``window.game`` exposes what it drew (the latest snapshot, its
player id, the ticks in order). The server's truth is the latest snapshot in
``game:arena``'s history. Waits poll conditions with deadlines. With
``TIDINGS_EXAMPLE_SCREENSHOTS=docs`` the first test writes the screenshots of
docs/examples.md.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from examples.game.app import STATE, create_app
from examples.game.arena import LEAVE_AFTER, WIDTH, Snapshot
from tests.conftest import StartApp
from tests.support.polling import eventually
from tests.support.processes import NodeProcess, spawn_tidings
from tests.support.redis import delete_keys, unique_prefix
from tidings import Tidings

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

PAGE_TIMEOUT_MS = 15_000
WAIT = 15.0
"""Deadline for one awaited condition (a loaded 2-core machine runs the loop and Chromium)."""


async def open_player(
    browser: Any, base_url: str, name: str, viewport: dict[str, int] | None = None
) -> tuple[Any, Any]:
    """A page in a browser context of its own that has joined as ``name``."""
    context = await browser.new_context(viewport=viewport or {"width": 1100, "height": 760})
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    await page.goto(f"{base_url}/")
    await page.fill("#name", name)
    await page.click("#join button")
    await page.wait_for_function("document.body.dataset.subscribed === 'true'")
    return context, page


async def truth(rt: Tidings) -> Snapshot:
    """The server's latest state."""
    latest = await rt.history(STATE, limit=1, reverse=True)
    return msgspec.convert(latest.publications[0].data, Snapshot)


async def seen(page: Any) -> dict[str, tuple[int, int, int]]:
    """What a page draws: ``{player id: (x, y, score)}`` from its latest snapshot."""
    snapshot = await page.evaluate("window.game.snapshot")
    if not snapshot:
        return {}
    return {p[0]: (p[2], p[3], p[4]) for p in snapshot["players"]}


def positions(snapshot: Snapshot) -> dict[str, tuple[int, int, int]]:
    return {p.id: (p.x, p.y, p.score) for p in snapshot.players}


def away_from_wall(x: int) -> tuple[str, int]:
    """The arrow key that has room to move, and its sign on x."""
    return ("ArrowRight", 1) if x < WIDTH / 2 else ("ArrowLeft", -1)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: the test's own directory, or ``docs/examples/`` (for docs/examples.md)
    when ``TIDINGS_EXAMPLE_SCREENSHOTS=docs``."""
    if os.environ.get("TIDINGS_EXAMPLE_SCREENSHOTS") == "docs":
        return Path(__file__).resolve().parents[2] / "docs" / "examples"
    return tmp_path


async def steer_a_while(page: Any, rt: Tidings, player: str) -> None:
    """Hold an arrow key until the server has moved ``player`` 80 units, then let go and
    wait for the server to stop it."""
    start = positions(await truth(rt))[player]
    key, sign = away_from_wall(start[0])
    await page.keyboard.down(key)

    async def moved() -> bool:
        return (positions(await truth(rt))[player][0] - start[0]) * sign >= 80

    await eventually(moved, f"the server to move {player}", within=WAIT)
    await page.keyboard.up(key)

    async def stopped() -> bool:
        return all(p.dx == p.dy == 0 for p in (await truth(rt)).players if p.id == player)

    await eventually(stopped, f"{player} to stop", within=WAIT)


async def sees_the_truth(page: Any, rt: Tidings, *players: str) -> bool:
    """The page draws the server's latest state, and ``players`` have joined it."""
    now = positions(await truth(rt))
    return all(player in now for player in players) and await seen(page) == now


async def test_two_players_see_each_other_move_and_a_reload_sees_the_current_state(
    browser: Any, start_app: StartApp, screenshots: Path
) -> None:
    rt = create_app(port=0)
    server = await start_app(rt)
    _, ann = await open_player(browser, server.http_url, "ann")
    _, bob = await open_player(browser, server.http_url, "bob", {"width": 360, "height": 740})
    ann_id, bob_id = await ann.evaluate("window.game.me"), await bob.evaluate("window.game.me")
    assert ann_id and bob_id and ann_id != bob_id

    async def both_in_both() -> bool:
        return set(await seen(ann)) == set(await seen(bob)) == {ann_id, bob_id}

    await eventually(both_in_both, "each page to show both players", within=WAIT)
    assert await bob.evaluate("document.documentElement.scrollWidth") <= 360  # fits a phone
    await steer_a_while(ann, rt, ann_id)
    await eventually(lambda: sees_the_truth(bob, rt), "bob's page to show ann's move", WAIT)
    await steer_a_while(bob, rt, bob_id)
    await eventually(lambda: sees_the_truth(ann, rt), "ann's page to show bob's move", WAIT)
    await ann.locator("#scores li", has_text="bob").wait_for()
    await bob.locator("#scores li", has_text="ann").wait_for()
    await ann.screenshot(path=str(screenshots / "game-desktop.png"))
    await bob.screenshot(path=str(screenshots / "game-phone.png"), full_page=True)

    # ann reloads while bob moves: the same player comes back, drawn at once from the
    # snapshot in the subscribe reply, then follows the game.
    before = positions(await truth(rt))[ann_id]
    key, _ = away_from_wall(positions(await truth(rt))[bob_id][0])
    await bob.keyboard.down(key)
    tick_at_reload = (await truth(rt)).tick
    await ann.reload()
    await ann.wait_for_function("document.body.dataset.subscribed === 'true'")
    assert await ann.evaluate("window.game.me") == ann_id
    joined = await ann.evaluate("window.game.joinedTick")
    assert joined is not None and joined >= tick_at_reload
    first = await ann.evaluate("window.game.drawn[0]")
    assert first == joined, "the first thing drawn after the reload was not the reply's snapshot"
    assert (await seen(ann))[ann_id] == before  # same place, same score
    assert bob_id in await seen(ann)
    await bob.keyboard.up(key)
    await eventually(lambda: sees_the_truth(ann, rt), "the reloaded page to follow", WAIT)


async def test_a_page_offline_for_seconds_comes_back_to_the_current_state(
    browser: Any, start_app: StartApp
) -> None:
    """Bob's page loses its network while ann moves; back online it shows where everyone
    is now: the same single bob (no second avatar, same score), every tick drawn once and
    in order, nothing stale drawn after the current state."""
    rt = create_app(port=0)
    server = await start_app(rt)
    _, ann = await open_player(browser, server.http_url, "ann")
    bob_context, bob = await open_player(browser, server.http_url, "bob")
    ann_id, bob_id = await ann.evaluate("window.game.me"), await bob.evaluate("window.game.me")
    await eventually(
        lambda: sees_the_truth(bob, rt, ann_id, bob_id), "bob's page to follow the game", WAIT
    )
    bob_before = positions(await truth(rt))[bob_id]

    await bob_context.set_offline(True)
    await bob.wait_for_function("document.body.dataset.state !== 'connected'")
    assert await bob.text_content("#status") != "connected"  # the page says so
    offline_at = asyncio.get_running_loop().time()
    await steer_a_while(ann, rt, ann_id)
    assert (await seen(bob))[ann_id] != positions(await truth(rt))[ann_id], "bob saw it offline?"
    await bob_context.set_offline(False)
    await bob.wait_for_function(
        "document.body.dataset.state === 'connected' && document.body.dataset.subscribed === 'true'"
    )
    assert asyncio.get_running_loop().time() - offline_at < LEAVE_AFTER
    await eventually(lambda: sees_the_truth(bob, rt), "bob's page to show the current state", WAIT)

    assert await bob.evaluate("window.game.me") == bob_id
    now = await truth(rt)
    assert [p.id for p in now.players].count(bob_id) == 1
    assert positions(now)[bob_id] == bob_before, "bob's player moved or lost its score"
    drawn = await bob.evaluate("window.game.drawn")
    assert drawn == sorted(set(drawn)), "a tick was drawn twice or out of order"
    assert await bob.locator("#scores li", has_text="bob").count() == 1


async def test_two_processes_on_redis_one_loop_and_a_takeover(
    browser: Any, shared_redis: str
) -> None:
    """``tidings serve examples.game.app:rt --broker redis://...`` twice: a page on each
    process, one game; killing the process that runs the loop hands it to the other,
    which carries on from the last snapshot (same tick count, same scores)."""
    prefix = unique_prefix("tgame")
    nodes: list[NodeProcess] = []
    try:
        args = ["--broker", shared_redis, "--broker-prefix", prefix, "--shutdown-timeout", "1s"]
        for name in ("node1", "node2"):
            nodes.append(await spawn_tidings("examples.game.app:rt", *args, name=name))
        first, second = nodes
        _, ann = await open_player(browser, f"http://127.0.0.1:{first.port}", "ann")
        await first.wait_for_line("leader lock: this process runs the loop")
        _, bob = await open_player(browser, f"http://127.0.0.1:{second.port}", "bob")
        ann_id, bob_id = await ann.evaluate("window.game.me"), await bob.evaluate("window.game.me")

        async def both_see_both() -> bool:
            return set(await seen(ann)) == set(await seen(bob)) == {ann_id, bob_id}

        await eventually(both_see_both, "each page to show both players", WAIT)
        start = (await seen(bob))[bob_id]
        key, sign = away_from_wall(start[0])
        await bob.keyboard.down(key)

        async def ann_sees_bob_move() -> bool:
            return ((await seen(ann))[bob_id][0] - start[0]) * sign >= 60

        await eventually(ann_sees_bob_move, "ann (node1) to see bob (node2) move", WAIT)
        await bob.keyboard.up(key)
        assert not any("runs the loop" in line for line in second.lines)

        last_tick = (await bob.evaluate("window.game.snapshot"))["tick"]
        first.kill()
        await second.wait_for_line("leader lock: this process runs the loop", within=WAIT)

        async def game_goes_on() -> bool:
            snapshot = await bob.evaluate("window.game.snapshot")
            return bool(snapshot["tick"] > last_tick + 20)

        await eventually(game_goes_on, "the game to go on from node2", WAIT)
        drawn = await bob.evaluate("window.game.drawn")
        assert drawn == sorted(set(drawn)), "the new leader started the ticks over"
        assert bob_id in await seen(bob)
    finally:
        for node in nodes:
            await node.stop()
        await delete_keys(shared_redis, prefix)
