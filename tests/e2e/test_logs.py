"""``--log-format json`` and text: the same events, one line each, and never a secret."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import API_KEY, SECRET, WsClient, token
from tests.support.processes import CHAT_CONFIG, spawn

pytestmark = pytest.mark.timeout(60)

WRONG_KEY = "a-wrong-api-key-that-is-almost-right"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR)\s+([\w.]+): (.*)$"
)


async def events_of_a_session(log_format: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """Serve, provoke the same refusals, stop; returns the log lines and the secrets used."""
    path = tmp_path / "tidings.toml"
    path.write_text(CHAT_CONFIG)
    good, bad = token("alice"), token("mallory", ttl=-10)
    server = await spawn(
        "--config",
        str(path),
        "--log-format",
        log_format,
        env={"TIDINGS_TOKEN_HMAC_SECRET": SECRET, "TIDINGS_API_KEY": API_KEY},
    )
    assert server.process.stderr is not None
    base = f"127.0.0.1:{server.port}"
    try:
        # A connect with an expired token, then a subscribe to an unknown namespace.
        async with connect(f"ws://{base}/connection/websocket", compression=None) as ws:
            reply = await WsClient(ws).call("connect", {"token": bad})
            assert reply["error"]["code"] == 109
        async with connect(f"ws://{base}/connection/websocket", compression=None) as ws:
            client = WsClient(ws)
            await client.connect(good)
            assert (await client.call("subscribe", {"channel": "nowhere:x"}))["error"][
                "code"
            ] == 102
        # A page from another origin.
        with pytest.raises(InvalidStatus):
            await connect(
                f"ws://{base}/connection/websocket",
                origin="https://elsewhere.example",  # type: ignore[arg-type]
            )
        async with aiohttp.ClientSession() as http:
            # The API with a wrong key in the URL, then the right one and an unknown namespace.
            body = {"channel": "nowhere:x", "data": 1}
            async with http.post(f"http://{base}/api/publish?api_key={WRONG_KEY}", json=body) as r:
                assert r.status == 401
            async with http.post(f"http://{base}/api/publish?api_key={API_KEY}", json=body) as r:
                assert (await r.json())["error"]["code"] == 102
            # Long polling with the token in the URL and a malformed cursor.
            url = f"http://{base}/longpoll?channel=chat:a&token={good}&cursor=nonsense"
            async with http.get(url) as r:
                assert r.status == 400
    finally:
        server.process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(server.process.stderr.read(), 20)
        assert await asyncio.wait_for(server.process.wait(), 20) == 0
    lines = [*server.log, *rest.decode().splitlines()]
    return [line.rstrip("\n") for line in lines if line.strip()], [good, bad]


def normalized(level: str, logger: str, message: str) -> str:
    message = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", message)
    return f"{level.lower()} {logger}: {re.sub(r'[0-9]+', 'N', message)}"


async def test_json_and_text_log_the_same_events_without_secrets(tmp_path: Path) -> None:
    text_lines, text_tokens = await events_of_a_session("text", tmp_path)
    json_lines, json_tokens = await events_of_a_session("json", tmp_path)

    text_events = []
    for line in text_lines:
        match = TEXT_LINE.match(line)
        assert match, f"not one text line: {line!r}"
        text_events.append(normalized(*match.groups()))

    json_events, documents = [], []
    for line in json_lines:
        document = json.loads(line)  # one JSON object per line, nothing else
        assert isinstance(document, dict)
        assert {"time", "level", "logger", "message"} <= document.keys(), document
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["time"])
        documents.append(document)
        json_events.append(normalized(document["level"], document["logger"], document["message"]))

    assert sorted(text_events) == sorted(json_events)
    assert len(json_events) >= 8, json_events
    refused = [d for d in documents if d["logger"] == "tidings.api" and d.get("code") == 102]
    assert refused and refused[0]["channel"] == "nowhere:x"
    assert "unknown namespace 'nowhere'" in refused[0]["message"]
    assert any(d.get("status") == 401 and d.get("client") for d in documents)
    assert any(d.get("status") == 403 and d.get("client") for d in documents)

    everything = "\n".join(text_lines + json_lines)
    for secret in (API_KEY, SECRET, WRONG_KEY, *text_tokens, *json_tokens):
        assert secret not in everything, secret
