"""Origin checks on every browser-reachable transport; cross-site WebSocket hijacking fails.

Every endpoint is probed: ``/connection/websocket``, ``/connection/uni_websocket``,
the emulation endpoints (``/connection/http_stream``, ``/connection/sse``,
``/emulation``), ``/connection/uni_sse``, ``/connection/uni_http_stream``,
``/events`` and ``/longpoll``, each with a request it would otherwise serve.

The policy (``server/origins.py``): no ``Origin`` header means not a browser
page, and passes; with an empty ``allowed_origins`` only a page served from
the same host may connect; with a list, the origin must match an entry
(``*`` wildcards allowed). A refused upgrade gets 403 and nothing else.

The hijacking test is the attack itself: a real browser (Debian's Chromium,
driven by Playwright) loads a page from another origin on 127.0.0.1 that opens
a WebSocket to tidings. The browser sends its true ``Origin``, which the page
cannot forge; the upgrade must fail, while the same page succeeds once its
origin is allowed (so the refusal is the origin check's doing).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import RunningServer, StartServer, token
from tests.security.conftest import LogCapture

pytestmark = pytest.mark.timeout(60)


UPGRADE_HEADERS = [
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGlkaW5ncy1iZW5jaC0xNg==",
    "Sec-WebSocket-Version: 13",
]


def _quoted(value: object) -> str:
    return quote(json.dumps(value), safe="")


def _requests(server: RunningServer) -> dict[str, tuple[str, str, list[str], str, int]]:
    """Transport -> a request its endpoint accepts: method, path, headers, body, success status."""
    tok = token("alice")
    connect = {"id": 1, "connect": {"token": tok}}
    emulation = {"session": "none", "node": server.node.id, "data": "{}"}
    bearer = [f"Authorization: Bearer {tok}"]
    return {
        "websocket": ("GET", "/connection/websocket", UPGRADE_HEADERS, "", 101),
        "uni_websocket": ("GET", "/connection/uni_websocket", UPGRADE_HEADERS, "", 101),
        "http_stream": ("POST", "/connection/http_stream", [], json.dumps(connect), 200),
        "sse": ("GET", f"/connection/sse?cf_connect={_quoted(connect)}", [], "", 200),
        "emulation": ("POST", "/emulation", [], json.dumps(emulation), 204),
        "uni_http_stream": (
            "POST", "/connection/uni_http_stream", [], json.dumps({"token": tok}), 200
        ),
        "uni_sse": ("GET", f"/connection/uni_sse?cf_connect={_quoted({'token': tok})}", [], "",
                    200),
        "events": ("GET", "/events?channel=chat%3Ao", bearer, "", 200),
        "longpoll": ("GET", "/longpoll?channel=chat%3Ao", bearer, "", 200),
    }  # fmt: skip


TRANSPORT_NAMES = [
    "emulation", "events", "http_stream", "longpoll", "sse", "uni_http_stream", "uni_sse",
    "uni_websocket", "websocket",
]  # fmt: skip


async def allowed(
    server: RunningServer, transport: str, origin: str | None, host: str | None = None
) -> bool:
    """Send the transport's request with ``origin``: True if served, False on 403."""
    method, path, headers, body, success = _requests(server)[transport]
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host if host is not None else f'127.0.0.1:{server.port}'}",
    ]
    head += [*headers, "Cookie: session=victim", f"Content-Length: {len(body.encode())}"]
    if origin is not None:
        head.append(f"Origin: {origin}")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(("\r\n".join(head) + "\r\n\r\n" + body).encode())
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    status = int(answer.split()[1])
    assert status in (success, 403), f"{transport} answered {status}: {answer[:200]!r}"
    return status == success


@pytest.fixture(params=TRANSPORT_NAMES)
def transport_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


SAME_HOST = "{same}"

DEFAULT_POLICY = [
    (None, True),
    (SAME_HOST, True),
    ("HTTP://127.0.0.1:{port}", True),  # scheme and host are case-insensitive
    ("http://127.0.0.1:{other}", False),  # another port is another origin
    ("http://localhost:{port}", False),
    ("https://evil.example", False),
    ("null", False),  # sandboxed iframes, file: pages, some redirects
    ("http://127.0.0.1:{port}.evil.example", False),
    ("http://evil.example/http://127.0.0.1:{port}", False),
    ("", False),
]


@pytest.mark.parametrize(("origin", "expected"), DEFAULT_POLICY)
async def test_default_policy_is_same_host_only(
    transport_name: str,
    start_server: StartServer,
    server_log: LogCapture,
    origin: str | None,
    expected: bool,
) -> None:
    server = await start_server()
    if origin is not None:
        origin = origin.replace(SAME_HOST, f"http://127.0.0.1:{server.port}").format(
            port=server.port, other=server.port + 1
        )
    assert await allowed(server, transport_name, origin) is expected
    refusals = [m for m in server_log.messages() if "not allowed" in m]
    assert len(refusals) == (0 if expected else 1), refusals


ALLOW_LIST = ["https://app.example.com", "https://*.example.org"]

ALLOW_LIST_CASES = [
    ("https://app.example.com", True),
    ("https://app.example.com/", True),
    ("https://APP.example.com", True),
    ("http://app.example.com", False),  # the scheme is part of the origin
    ("https://app.example.com:8443", False),
    ("https://app.example.com.evil.net", False),
    ("https://evilapp.example.com", False),
    ("https://a.example.org", True),
    ("https://a.b.example.org", True),
    ("https://example.org", False),  # the pattern asks for a subdomain
    ("https://evilexample.org", False),
    ("https://example.org.evil.net", False),
    ("null", False),
    (None, True),
]


async def test_allow_list_with_patterns(transport_name: str, start_server: StartServer) -> None:
    server = await start_server(allowed_origins=ALLOW_LIST)
    wrong = [
        f"{origin!r}: expected {'allowed' if expected else 'refused'}"
        for origin, expected in ALLOW_LIST_CASES
        if await allowed(server, transport_name, origin) is not expected
    ]
    assert not wrong, wrong


async def test_same_host_rule_follows_the_host_header(
    transport_name: str, start_server: StartServer
) -> None:
    """Behind a proxy the Host header names the public host; the origin must match it."""
    server = await start_server()
    origin = "https://chat.example.com"
    assert await allowed(server, transport_name, origin, "chat.example.com") is True
    assert await allowed(server, transport_name, origin, "other.example.com") is False
    assert await allowed(server, transport_name, origin, "") is False


async def test_refusal_body_is_fixed_text(start_server: StartServer) -> None:
    server = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGlkaW5ncy1iZW5jaC0xNg==\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403")
    assert json.loads(body) == {"error": {"code": 103, "message": "origin not allowed"}}


# --------------------------------------------------------------------------- a real browser


ATTACKER_PAGE = """<!doctype html><html><body><script>
window.result = new Promise((resolve) => {
  const ws = new WebSocket(TARGET);
  ws.onopen = () => ws.send(JSON.stringify({id: 1, connect: {}}));
  ws.onmessage = (event) => resolve({opened: true, reply: event.data});
  ws.onclose = (event) => resolve({opened: false, code: event.code});
});
</script></body></html>"""


async def serve_page(html: str) -> tuple[asyncio.Server, int]:
    """A one-page HTTP server on another port of 127.0.0.1: another origin."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = html.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def visit_attacker_page(browser: Any, target: str) -> dict[str, Any]:
    page_server, page_port = await serve_page(ATTACKER_PAGE.replace("TARGET", json.dumps(target)))
    try:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{page_port}/", timeout=15_000)
        result: dict[str, Any] = await page.evaluate("window.result")
        await context.close()
        return result
    finally:
        page_server.close()


@pytest.mark.browser
async def test_cross_site_websocket_hijacking_fails_in_a_real_browser(
    browser: Any, start_server: StartServer, server_log: LogCapture
) -> None:
    # Anonymous connects are allowed, so an opened socket would be a working session.
    server = await start_server(allow_anonymous_connect_without_token=True)
    result = await visit_attacker_page(browser, server.ws_url)
    assert result == {"opened": False, "code": 1006}, result
    assert not server.node.clients
    assert any("origin" in m and "not allowed" in m for m in server_log.messages())


@pytest.mark.browser
async def test_the_same_page_connects_once_its_origin_is_allowed(
    browser: Any, start_server: StartServer
) -> None:
    server = await start_server(
        allow_anonymous_connect_without_token=True, allowed_origins=["http://127.0.0.1:*"]
    )
    result = await visit_attacker_page(browser, server.ws_url)
    assert result["opened"] is True
    assert '"connect":{"client"' in result["reply"]
