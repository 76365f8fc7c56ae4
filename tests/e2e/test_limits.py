"""Limits at the edge and per connection: each refusal has its exact code, others carry on."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode

from tests.conftest import (
    ClientFactory,
    RunningServer,
    StartServer,
    WsClient,
    assert_still_serving,
    control_client,
    token,
)
from tests.support.polling import eventually


async def test_permessage_deflate_roundtrip(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(websocket_compression=True, websocket_compression_min_size=64)
    client = await ws_client(server.ws_url, compression="deflate")
    assert client.ws.protocol.extensions, "permessage-deflate was not negotiated"
    await client.connect(token())
    await client.subscribe("chat:zip")
    big = {"text": "tidings " * 200}
    await server.node.publish("chat:zip", big)
    await server.node.publish("chat:zip", {"small": 1})
    publications = await client.publications("chat:zip", 2)
    assert [p["data"] for p in publications] == [big, {"small": 1}]


async def test_compression_bomb_closes_with_1009(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(websocket_compression=True, max_message_size=65536)
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url, compression="deflate", max_size=None)
    await client.connect(token())
    bomb = '{"id":2,"publish":{"channel":"chat:x","data":"' + "0" * (8 * 1024 * 1024) + '"}}'
    await client.send_raw(bomb)  # a few KiB on the wire, 8 MiB inflated
    code, _ = await client.closed()
    assert code == 1009
    await assert_still_serving(server, control)


async def test_too_many_fragments_closes_with_1009(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(websocket_max_fragments=16)
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token())
    protocol = client.ws.protocol
    protocol.send_frame(Frame(Opcode.TEXT, b'{"id":2,', fin=False))  # type: ignore[attr-defined]
    for _ in range(20):
        protocol.send_frame(Frame(Opcode.CONT, b" ", fin=False))  # type: ignore[attr-defined]
    client.ws.send_data()  # type: ignore[attr-defined]
    code, _ = await client.closed()
    assert code == 1009
    await assert_still_serving(server, control)


async def test_fragmented_message_within_limits_is_accepted(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    client = await ws_client(server.ws_url)
    await client.connect(token())
    message = json.dumps({"id": 2, "subscribe": {"channel": "chat:frag"}}).encode()
    protocol = client.ws.protocol
    chunks = [message[i : i + 7] for i in range(0, len(message), 7)]
    protocol.send_frame(Frame(Opcode.TEXT, chunks[0], fin=False))  # type: ignore[attr-defined]
    for index, chunk in enumerate(chunks[1:], start=1):
        protocol.send_frame(Frame(Opcode.CONT, chunk, fin=index == len(chunks) - 1))  # type: ignore[attr-defined]
    client.ws.send_data()  # type: ignore[attr-defined]
    reply = await client.reply(2)
    assert "subscribe" in reply


async def test_command_rate_limit_gives_111_then_3013(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(client_command_rate_limit=5, client_command_burst=5)
    control = await control_client(server, ws_client)
    client = await ws_client(server.ws_url)
    await client.connect(token())  # 1 token used
    commands = [{"id": n, "presence_stats": {"channel": "chat:r"}} for n in range(10, 18)]
    await client.send(*commands)
    replies = [await client.reply(n) for n in range(10, 18)]
    errors = [r["error"]["code"] for r in replies if "error" in r]
    assert errors.count(111) >= 3  # the bucket held 4 tokens for 8 commands
    assert all(code in (103, 111) for code in errors)
    flood = [{"id": n, "presence_stats": {"channel": "chat:r"}} for n in range(100, 140)]
    await client.send(*flood)
    assert await client.closed() == (3013, "too many requests")
    await assert_still_serving(server, control)


async def test_user_connection_limit_gives_3504(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(client_user_connection_limit=2)
    for _ in range(2):
        client = await ws_client(server.ws_url)
        await client.connect(token("alice"))
    third = await ws_client(server.ws_url)
    await third.send({"connect": {"token": token("alice")}, "id": 1})
    assert await third.closed() == (3504, "connection limit")
    other_user = await ws_client(server.ws_url)
    assert (await other_user.connect(token("bob")))["client"]


async def refused_status(url: str) -> int:
    try:
        ws = await connect(url, compression=None, open_timeout=5)
    except InvalidStatus as refused:
        return refused.response.status_code
    await ws.close()
    return 101


async def test_ip_connection_limit_gives_503(start_server: StartServer) -> None:
    server = await start_server(client_ip_connection_limit=2)
    held = [await connect(server.ws_url, compression=None) for _ in range(2)]
    assert await refused_status(server.ws_url) == 503
    await held[0].close()
    await held[0].wait_closed()

    async def admitted_again() -> bool:
        return await refused_status(server.ws_url) == 101

    await eventually(admitted_again, "the freed slot to be reused")
    await held[1].close()


async def test_connection_rate_limit_gives_503(start_server: StartServer) -> None:
    server = await start_server(client_connection_rate_limit=3)
    statuses = await asyncio.gather(*(refused_status(server.ws_url) for _ in range(8)))
    assert statuses.count(503) >= 4 and statuses.count(101) >= 1


async def test_slow_request_head_times_out(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    server = await start_server(http_header_timeout=0.3)
    control = await control_client(server, ws_client)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()
    await assert_still_serving(server, control)


async def test_slow_reader_is_disconnected_with_3008(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    """A client that stops reading is cut off; a reading client loses nothing."""
    server = await start_server(write_buffer_limit=256 * 1024, slow_timeout=1.0)
    control = await control_client(server, ws_client)
    await control.subscribe("chat:firehose")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await reader.readuntil(b"\r\n\r\n")
    subscribe = json.dumps({"connect": {"token": token("lazy")}, "id": 1}) + "\n"
    subscribe += json.dumps({"subscribe": {"channel": "chat:firehose"}, "id": 2})
    payload = subscribe.encode()
    writer.write(bytes((0x81, 0xFE)) + len(payload).to_bytes(2, "big") + b"\0\0\0\0" + payload)
    await writer.drain()
    # From here on the lazy client never reads again.
    sessions = server.node.users
    deadline = asyncio.get_running_loop().time() + 5
    await eventually(
        lambda: "lazy" in sessions and next(iter(sessions["lazy"])).subscriptions,
        "the lazy client's subscription",
    )
    lazy = next(iter(sessions["lazy"]))
    payload_data = {"blob": "x" * 4000}
    sent = 0
    while not lazy.closed:
        assert asyncio.get_running_loop().time() < deadline + 10, (
            "the slow client was never cut off"
        )
        await server.node.publish("chat:firehose", payload_data)
        sent += 1
        (publication,) = await control.publications("chat:firehose", 1)
        assert publication["offset"] == sent
    assert lazy.transport.closed
    writer.close()
    await assert_still_serving(server, control)


async def test_control_client_unaffected_by_protocol_abuse(
    server: RunningServer, ws_client: ClientFactory
) -> None:
    control = await control_client(server, ws_client)
    abusers: list[WsClient] = []
    for frame in ("{", "[]", '{"id":1}', "\x00", '{"id":1,"connect":{"token":5}}'):
        abuser = await ws_client(server.ws_url)
        await abuser.send_raw(frame)
        abusers.append(abuser)
    for abuser in abusers:
        assert (await abuser.closed())[0] == 3501
    await assert_still_serving(server, control)


async def test_slow_http_stream_reader_is_disconnected(
    start_server: StartServer, ws_client: ClientFactory
) -> None:
    """Back-pressure on HTTP streams works like on WebSocket: a reader that stalls is cut off."""
    server = await start_server(write_buffer_limit=256 * 1024, slow_timeout=1.0)
    control = await control_client(server, ws_client)
    await control.subscribe("chat:stream-firehose")
    body = json.dumps({"token": token("lazy", channels=["chat:stream-firehose"])}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /connection/uni_http_stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")  # the response has started; from now on nobody reads
    deadline = asyncio.get_running_loop().time() + 5
    await eventually(lambda: "lazy" in server.node.users, "the lazy stream's session")
    lazy = next(iter(server.node.users["lazy"]))
    sent = 0
    while not lazy.closed:
        assert asyncio.get_running_loop().time() < deadline + 10, (
            "the slow stream was never cut off"
        )
        await server.node.publish("chat:stream-firehose", {"blob": "x" * 4000})
        sent += 1
        (publication,) = await control.publications("chat:stream-firehose", 1)
        assert publication["offset"] == sent
    writer.close()
    await assert_still_serving(server, control)
