"""~50 hostile channel names x subscribe/publish/history/presence: no unauthorised success.

The attacker is an authenticated user, ``mallory``, with no subscription token.
The namespaces are set up so that none of the hostile names may be used by
her: top-level channels allow nothing, ``chat`` is open to subscribers (so its
malformed variants must fail on parsing alone), ``dm`` is user-limited, ``sec``
admits only token holders. Two well-formed names she *may* use are in the list
as positive controls, so a harness that could not see a success would fail.

Each name is tried on a fresh connection: subscribe first (so publish, history
and presence run as a subscriber whenever the subscribe succeeded), and the
expected code of every cell is asserted, so a regression names itself. The
server API, which skips permissions but not parsing, must refuse the malformed
names and unknown namespaces with the same codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import RunningServer, StartServer, full_namespace, make_config, token
from tests.security.conftest import (
    OK,
    ControlSubscriber,
    LogCapture,
    Outcome,
    ProtocolClient,
    disconnect,
    error,
    ok,
)
from tests.support.http import api
from tidings.channels import ChannelOptions
from tidings.config import ChannelsConfig

pytestmark = pytest.mark.timeout(90)

OPERATIONS = ("subscribe", "publish", "history", "presence")


@dataclass(frozen=True)
class Name:
    id: str
    json: str  # the channel value as JSON text (not always a string)
    expected: tuple[Outcome, Outcome, Outcome, Outcome]

    @property
    def text(self) -> str | None:
        value = json.loads(self.json)
        return value if isinstance(value, str) else None


def name(id: str, channel: str, *expected: Outcome) -> Name:
    return Name(id, json.dumps(channel), _four(expected))


def raw_name(id: str, json_text: str, *expected: Outcome) -> Name:
    return Name(id, json_text, _four(expected))


def _four(expected: tuple[Outcome, ...]) -> tuple[Outcome, Outcome, Outcome, Outcome]:
    if len(expected) == 1:
        return (expected[0], expected[0], expected[0], expected[0])
    first, second, third, fourth = expected
    return (first, second, third, fourth)


DENIED = error(103)
BAD = error(107)
UNKNOWN = error(102)
VIOLATION = disconnect(3501)
TOP_LEVEL = (error(103), error(103), error(108), error(108))
"""Top-level channels allow nothing; history and presence are off there (108 comes first)."""

HOSTILE = [
    # -- privacy and user limits
    name("private-no-token", "$sec:vault", DENIED),
    name("private-in-open-namespace", "$chat:room", DENIED),
    name("private-with-user-suffix", "$sec:vault#mallory", DENIED),
    name("token-only-namespace", "sec:vault", DENIED),
    name("token-only-with-user-suffix", "sec:vault#mallory", DENIED),
    name("user-limited-other", "dm:x#alice", DENIED),
    name("user-limited-others", "dm:x#alice,bob", DENIED),
    name("user-limited-padded", "dm:x#alice, mallory", DENIED),
    name("user-limited-case", "dm:x#MALLORY", DENIED),
    name("user-limited-prefix", "dm:x#mallor", DENIED),
    name("user-limited-empty", "dm:x#", DENIED),
    name("user-limited-separators", "dm:x#,,", DENIED),
    name("user-limited-without-users", "dm:x", DENIED),
    name("user-limited-nul", "dm:x#mallory\x00", BAD),
    # -- namespaces
    name("unknown-namespace", "secret:x", UNKNOWN),
    name("namespace-case", "Chat:x", UNKNOWN),
    name("namespace-upper", "CHAT:x", UNKNOWN),
    name("namespace-homoglyph", "ch\u0430t:x", UNKNOWN),
    name("namespace-trailing-space", "chat :x", UNKNOWN),
    name("namespace-leading-space", " chat:x", UNKNOWN),
    name("namespace-path", "../chat:x", UNKNOWN),
    name("namespace-backslash", "chat\\:x", UNKNOWN),
    name("double-private-prefix", "$$sec:vault", UNKNOWN),
    name("namespace-with-user-boundary", "dm#mallory:x", UNKNOWN),
    name("json-injection", 'sec:x","channel":"chat:x', DENIED),
    name("encoded-boundary", "chat%3Ax", *TOP_LEVEL),
    name("fullwidth-boundary", "chat\uff1ax", *TOP_LEVEL),
    name("top-level", "plain", *TOP_LEVEL),
    name("top-level-user-limited", "#mallory", *TOP_LEVEL),
    name("wildcard", "*", *TOP_LEVEL),
    # -- malformed: parsing alone refuses them, even in the open namespace
    name("empty-namespace", ":x", BAD),
    name("private-empty-namespace", "$:x", BAD),
    name("empty-name", "chat:", BAD),
    name("bare-private-prefix", "$", BAD),
    name("nul", "chat:x\x00", BAD),
    name("nul-in-namespace", "chat\x00:x", BAD),
    name("newline", "chat:a\nb", BAD),
    name("carriage-return", "chat:a\rb", BAD),
    name("tab", "chat:a\tb", BAD),
    name("ansi-escape", "chat:\x1b[2J", BAD),
    name("del", "chat:\x7f", BAD),
    name("c1-next-line", "chat:\x85", BAD),
    name("c1-csi", "chat:\x9b1m", BAD),
    name("over-255-bytes", "chat:" + "x" * 251, BAD),
    name("over-255-bytes-multibyte", "chat:" + "\u20ac" * 84, BAD),
    name("sixty-thousand", "chat:" + "x" * 60_000, BAD),
    # -- not a string at all: the command is malformed (3501, terminal)
    name("empty", "", VIOLATION),
    raw_name("number", "123", VIOLATION),
    raw_name("null", "null", VIOLATION),
    raw_name("list", '["chat:x"]', VIOLATION),
    raw_name("object", '{"$ne":""}', VIOLATION),
    raw_name("boolean", "true", VIOLATION),
    raw_name("lone-surrogate", '"\\ud800"', VIOLATION),
]

CONTROLS = [
    name("control-open-namespace", "chat:lobby", ok()),
    name("control-own-user-limited", "dm:x#alice,mallory", ok()),
]


def channels() -> ChannelsConfig:
    guarded: dict[str, Any] = {
        "history_size": 10,
        "history_ttl": 60.0,
        "presence": True,
        "allow_publish_for_subscriber": True,
        "allow_history_for_subscriber": True,
        "allow_presence_for_subscriber": True,
    }
    return ChannelsConfig(
        namespaces={
            "chat": full_namespace(),
            "dm": ChannelOptions(allow_user_limited_channels=True, **guarded),
            "sec": ChannelOptions(**guarded),
        }
    )


def frame(method: str, channel_json: str) -> str:
    params = {"publish": ',"data":{"x":1}', "history": ',"limit":10'}.get(method, "")
    return f'{{"id":1000,"{method}":{{"channel":{channel_json}{params}}}}}'


async def try_name(
    server: RunningServer,
    transport: str,
    open_client: Callable[..., Any],
    hostile: Name,
) -> list[Outcome]:
    """The four outcomes for one name, reconnecting whenever the server hung up."""
    outcomes: list[Outcome] = []
    client: ProtocolClient | None = None
    for method in OPERATIONS:
        if client is None:
            client = await open_client(server, transport)
            assert await client.command("connect", {"token": token("mallory")}) == ok()
            if method != "subscribe" and outcomes[0].kind == OK:
                await client.raw(frame("subscribe", hostile.json))
        outcome = await client.raw(frame(method, hostile.json))
        outcomes.append(outcome)
        if outcome.kind == "disconnect":
            client = None
    if client is not None:
        await client.close()
    return outcomes


async def test_hostile_channel_names(
    transport: str,
    start_server: StartServer,
    open_client: Callable[..., Any],
    server_log: LogCapture,
) -> None:
    server = await start_server(make_config(channels=channels()))
    control = await ControlSubscriber.open(server)
    unauthorised: list[str] = []
    unexpected: list[str] = []
    for hostile in [*HOSTILE, *CONTROLS]:
        outcomes = await try_name(server, transport, open_client, hostile)
        for method, outcome, expected in zip(OPERATIONS, outcomes, hostile.expected, strict=True):
            cell = f"{hostile.id} {method}: expected {expected}, got {outcome}"
            if outcome.kind == OK and hostile in HOSTILE:
                unauthorised.append(cell)
            elif outcome != expected:
                unexpected.append(cell)
        await control.roundtrip()
    assert not unauthorised, "UNAUTHORISED SUCCESS:\n" + "\n".join(unauthorised)
    assert not unexpected, "\n".join(unexpected)
    assert not server_log.errors(), server_log.errors()
    assert len(HOSTILE) >= 50


async def test_api_parses_as_strictly(start_server: StartServer) -> None:
    """The server API skips permissions, never parsing: 107 and 102 as for clients."""
    server = await start_server(make_config(channels=channels()))
    wrong = []
    for hostile in HOSTILE:
        expected = hostile.expected[1]
        channel = hostile.text
        if channel is None or not channel or expected not in (BAD, UNKNOWN):
            continue
        status, body = await api(server.port, "publish", {"channel": channel, "data": {"x": 1}})
        got = body.get("error", {}).get("code") if status == 200 and body else None
        if got != expected.code:
            wrong.append(f"{hostile.id}: expected {expected.code}, got {status} {body}")
    assert not wrong, "\n".join(wrong)
