"""Origin checks on the WebSocket upgrade: cross-site hijacking is refused with 403."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningServer, StartServer


async def status_for(url: str, origin: str | None) -> int:
    try:
        ws = await connect(url, origin=origin, compression=None)  # type: ignore[arg-type]
    except InvalidStatus as refused:
        return refused.response.status_code
    await ws.close()
    return 101


async def test_default_allows_no_origin_and_same_host_only(server: RunningServer) -> None:
    assert await status_for(server.ws_url, None) == 101
    assert await status_for(server.ws_url, f"http://127.0.0.1:{server.port}") == 101
    assert await status_for(server.ws_url, "https://evil.example") == 403
    assert await status_for(server.ws_url, f"http://127.0.0.1:{server.port + 1}") == 403


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://app.example.com", 101),
        ("https://admin.example.com", 101),
        ("https://example.com.evil.net", 403),
        ("http://app.example.com", 403),
        ("https://other.example", 403),
    ],
)
async def test_allow_list_with_patterns(
    start_server: StartServer, origin: str, expected: int
) -> None:
    server = await start_server(allowed_origins=["https://*.example.com"])
    assert await status_for(server.ws_url, origin) == expected


async def test_star_allows_every_origin(start_server: StartServer) -> None:
    server = await start_server(allowed_origins=["*"])
    assert await status_for(server.ws_url, "https://anywhere.example") == 101


async def test_offered_subprotocol_is_echoed(server: RunningServer) -> None:
    """``centrifuge-json`` or ``centrifuge-protobuf``: the one offered is the one spoken
    (JSON when both are); the unidirectional WebSocket refuses Protobuf."""
    for offered, expected in (
        (["centrifuge-json"], "centrifuge-json"),
        (["centrifuge-protobuf"], "centrifuge-protobuf"),
        (["centrifuge-protobuf", "centrifuge-json"], "centrifuge-json"),
    ):
        ws = await connect(server.ws_url, subprotocols=offered)  # type: ignore[arg-type]
        assert ws.subprotocol == expected
        await ws.close()
    uni_url = server.ws_url.replace("/connection/websocket", "/connection/uni_websocket")
    with pytest.raises(InvalidStatus) as refused:
        await connect(uni_url, subprotocols=["centrifuge-protobuf"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 400
