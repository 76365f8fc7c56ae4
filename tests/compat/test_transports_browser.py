"""Transports in headless Debian Chromium (Playwright with ``executable_path``, no own browser).

* A bare ``EventSource`` on ``/events``: the server drops the stream mid-way, the
  browser reconnects by itself with ``Last-Event-ID``, and the page ends with every
  publication exactly once, in order.
* centrifuge-js (the npm bundle the server serves at ``/vendor/centrifuge.js``)
  configured with ``[websocket, http_stream, sse]``: when the WebSocket upgrade is
  refused it falls back to ``http_stream``, and to ``sse`` when that is refused
  too, and still receives everything.

Pages are served by the test server itself (same origin), from a route the test adds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import RunningServer, StartServer, token
from tidings.server.app import find_centrifuge_js
from tidings.server.http import Request, Response

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

WAIT_MS = 15_000


def serve_page(server: RunningServer, html: str) -> str:
    async def page(request: Request) -> Response:
        return Response(200, html.encode(), "text/html; charset=utf-8")

    server.server.router.route("/test-page", page)
    return f"{server.http_url}/test-page"


async def open_page(browser: Any, url: str) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url)
    page.errors = errors
    return page


def live_members(server: RunningServer) -> int:
    return sum(len(feed.live) for feed in server.server.transports.feeds.feeds.values())


async def test_event_source_resumes_with_last_event_id(
    start_server: StartServer, browser: Any
) -> None:
    server = await start_server()
    last_event_ids: list[str | None] = []
    events = server.server.router.find("/events")
    assert events is not None

    async def recording(request: Request) -> Response | None:
        last_event_ids.append(request.header("last-event-id"))
        return await events(request)

    server.server.router.route("/events", recording)
    url = serve_page(
        server,
        f"""<!doctype html><script>
window.got = [];
window.opens = 0;
const source = new EventSource('/events?channel=chat:browser&token={token()}');
source.onopen = () => window.opens += 1;
source.onmessage = (e) => window.got.push({{id: e.lastEventId, ...JSON.parse(e.data)}});
</script>""",
    )
    page = await open_page(browser, url)
    await page.wait_for_function("window.opens === 1")
    for n in range(1, 6):
        await server.node.publish("chat:browser", {"n": n})
    await page.wait_for_function("window.got.length === 5")

    # The server drops the stream mid-way; these are published while the browser is away.
    server.server.transports.feeds.close()
    assert live_members(server) == 0
    for n in range(6, 11):
        await server.node.publish("chat:browser", {"n": n})
    await page.wait_for_function("window.opens === 2")
    for n in range(11, 16):
        await server.node.publish("chat:browser", {"n": n})
    await page.wait_for_function("window.got.length >= 15")

    got = await page.evaluate("window.got")
    assert [item["data"]["n"] for item in got] == list(range(1, 16))
    assert [item["offset"] for item in got] == list(range(1, 16))
    assert last_event_ids[0] is None
    assert last_event_ids[1] == got[4]["id"]  # the reconnect resumed after publication 5
    assert not page.errors


@pytest.mark.parametrize("expected", ["http_stream", "sse"])
async def test_centrifuge_js_falls_back_when_websocket_is_refused(
    start_server: StartServer, browser: Any, expected: str
) -> None:
    if find_centrifuge_js() is None:
        pytest.skip("centrifuge-js is not installed (npm ci)")
    server = await start_server()
    ws = f"ws://127.0.0.1:{server.port}"
    transports = [
        # A path the server does not serve: the upgrade is refused, as by a proxy.
        {"transport": "websocket", "endpoint": f"{ws}/connection/websocket_blocked"},
        {
            "transport": "http_stream",
            "endpoint": "/connection/http_stream" + ("_blocked" if expected == "sse" else ""),
        },
        {"transport": "sse", "endpoint": "/connection/sse"},
    ]
    url = serve_page(
        server,
        f"""<!doctype html><script src="/vendor/centrifuge.js"></script><script>
window.got = [];
const client = new Centrifuge({json.dumps(transports)}, {{
  token: {json.dumps(token())}, emulationEndpoint: '/emulation', minReconnectDelay: 50,
}});
client.on('connected', (ctx) => window.transport = ctx.transport);
const sub = client.newSubscription('chat:fallback', {{recoverable: true}});
sub.on('publication', (ctx) => window.got.push([ctx.offset, ctx.data.n]));
sub.on('subscribed', () => window.subscribed = true);
sub.subscribe();
client.connect();
window.publish = (n) => sub.publish({{n}});
</script>""",
    )
    page = await open_page(browser, url)
    await page.wait_for_function("window.subscribed === true")
    assert await page.evaluate("window.transport") == expected
    await page.evaluate("window.publish(1)")  # a command through /emulation
    for n in range(2, 11):
        await server.node.publish("chat:fallback", {"n": n})
    await page.wait_for_function("window.got.length >= 10")
    assert await page.evaluate("window.got") == [[n, n] for n in range(1, 11)]
    assert not page.errors
