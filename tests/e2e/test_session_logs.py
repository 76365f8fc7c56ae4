"""Session log lines carry structured fields (client, user, remote, channel, namespace, code),
and a refusal for an unknown namespace names the namespace, never the token."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import ClientFactory, StartServer, token
from tidings.logs import JsonFormatter

pytestmark = pytest.mark.timeout(30)


async def test_refusals_carry_fields_and_name_the_namespace(
    start_server: StartServer, ws_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.session")
    running = await start_server()
    secret_token = token("alice")
    client = await ws_client(running.ws_url)
    connected = await client.connect(secret_token)
    reply = await client.call("subscribe", {"channel": "nowhere:room"})
    assert reply["error"]["code"] == 102
    await client.send_raw("this is not JSON")  # a protocol violation: 3501
    assert (await client.closed())[0] == 3501

    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    (refused,) = [line for line in lines if line.get("code") == 102]
    assert "unknown namespace 'nowhere'" in refused["message"]
    assert "[channels.namespaces.nowhere]" in refused["message"]
    assert refused["namespace"] == "nowhere" and refused["channel"] == "nowhere:room"
    assert refused["method"] == "subscribe"
    assert refused["client"] == connected["client"] and refused["user"] == "alice"
    assert refused["remote"].startswith("127.0.0.1")
    (violation,) = [line for line in lines if line.get("code") == 3501]
    assert violation["client"] == connected["client"] and violation["user"] == "alice"
    assert secret_token not in json.dumps(lines)
