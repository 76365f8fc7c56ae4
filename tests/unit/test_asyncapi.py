"""The AsyncAPI document builder: an application in, the 3.0 document out (no node, no I/O).

The schema-level validation with AsyncAPI's own parser (npm) is in
``tests/e2e/test_asyncapi_cli.py``; here the document is checked for what it
says: channels per namespace and pattern, operations per action, payloads from
the annotations, every reference resolving.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any, Literal, TypedDict

import msgspec
import pydantic
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tidings import ClientError, SubscribeResult, Tidings
from tidings.asyncapi import build_document, to_json, to_yaml
from tidings.channels import ChannelOptions
from tidings.config import ChannelsConfig, Config
from tidings.hooks import PublishContext, RPCContext, SubscribeContext

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- the sample app


class ChatMessage(msgspec.Struct):
    """One line of chat."""

    text: str
    author: str | None = None


@dataclasses.dataclass
class Tick:
    symbol: str
    price: float


class Cursor(TypedDict):
    x: int
    y: int


class Address(pydantic.BaseModel):
    city: str


class Profile(pydantic.BaseModel):
    """A user's public profile."""

    name: str
    address: Address


class QuoteRequest(msgspec.Struct):
    symbol: str


class Quote(msgspec.Struct):
    symbol: str
    price: float
    currency: Literal["EUR", "USD"] = "EUR"


class Circle(msgspec.Struct, tag=True):
    radius: float


class Square(msgspec.Struct, tag=True):
    side: float


class Draft(msgspec.Struct):
    body: str


def namespaces() -> dict[str, ChannelOptions]:
    return {
        "chat": ChannelOptions(
            history_size=100,
            history_ttl=300.0,
            force_recovery=True,
            presence=True,
            allow_subscribe_for_client=True,
            allow_publish_for_subscriber=True,
        ),
        "ticker": ChannelOptions(
            allow_subscribe_for_client=True, allow_subscribe_for_anonymous=True
        ),
        "cursors": ChannelOptions(allow_subscribe_for_client=True, join_leave=True),
        "profiles": ChannelOptions(),
        "shapes": ChannelOptions(allow_publish_for_client=True),
        "notes": ChannelOptions(allow_subscribe_for_client=True),
    }


def make_app(**config: Any) -> Tidings:
    return Tidings(
        Config(
            token_hmac_secret="s" * 32,
            channels=ChannelsConfig(namespaces=namespaces()),
            **config,
        )
    )


def sample_app() -> Tidings:
    rt = make_app()
    rt.channel("chat:*", schema=ChatMessage)
    rt.channel("ticker:*", schema=Tick)
    rt.channel("cursors:*", schema=Cursor)
    rt.channel("profiles:*", schema=Profile)
    rt.channel("shapes:*", schema=Circle | Square)

    @rt.on_publish("chat:*")
    async def post(ctx: PublishContext, data: ChatMessage) -> ChatMessage | dict[str, Any] | None:
        """Stamp the author on every line."""
        return ChatMessage(data.text, ctx.user)

    @rt.on_publish("cursors:room-*")
    async def move(ctx: PublishContext, data: Cursor) -> None:
        return None

    @rt.on_publish("notes:*")
    async def note(ctx: PublishContext, data: Draft) -> dict[str, str]:
        return {"body": data.body, "by": ctx.user}

    @rt.on_subscribe("$dm:*")
    async def join(ctx: SubscribeContext) -> SubscribeResult | None:
        return None

    @rt.rpc("quote")
    async def quote(ctx: RPCContext, params: QuoteRequest) -> Quote:
        """The latest quote of a symbol."""
        return Quote(params.symbol, 1.0)

    @rt.rpc("user/get")
    async def user_get(ctx: RPCContext, params: dict[str, str]) -> list[Profile]:
        return []

    @rt.rpc("whoami")
    async def whoami(ctx, params):  # type: ignore[no-untyped-def]
        raise ClientError(4000, "nobody")

    return rt


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document(sample_app())


# --------------------------------------------------------------------------- helpers


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    value: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(value, dict) and part in value, f"{ref} does not resolve at {part!r}"
        value = value[part]
    return value


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from keys(item)


def channel_by_address(document: dict[str, Any], address: str) -> tuple[str, dict[str, Any]]:
    found = [(k, c) for k, c in document["channels"].items() if c["address"] == address]
    assert len(found) == 1, f"{len(found)} channels at {address!r}"
    return found[0]


def operations_of(document: dict[str, Any], channel_key: str) -> dict[str, dict[str, Any]]:
    target = f"#/channels/{channel_key}"
    return {
        key: operation
        for key, operation in document["operations"].items()
        if operation["channel"]["$ref"] == target
    }


def payload(document: dict[str, Any], message_ref: str) -> Any:
    message = resolve(document, message_ref)
    if "$ref" in message:
        message = resolve(document, message["$ref"])
    return message.get("payload")


def schema(document: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    return resolve(document, value["$ref"]) if "$ref" in value else value


# --------------------------------------------------------------------------- the document


def test_the_document_head(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "tidings"
    assert document["info"]["version"] == "1.0.0"
    assert document["defaultContentType"] == "application/json"
    server = document["servers"]["tidings"]
    assert server["host"] == "127.0.0.1:8000"
    assert server["protocol"] == "ws"
    assert server["pathname"] == "/connection/websocket"
    assert "centrifuge-json" in server["description"]
    assert server["x-tidings-subprotocol"] == "centrifuge-json"


def test_title_version_and_url_come_from_the_app_or_the_caller() -> None:
    rt = make_app(host="0.0.0.0", port=9000)
    rt.title = "Chat API"  # type: ignore[attr-defined]
    rt.version = "2.3.0"  # type: ignore[attr-defined]
    document = build_document(rt)
    assert document["info"]["title"] == "Chat API"
    assert document["info"]["version"] == "2.3.0"
    assert document["servers"]["tidings"]["host"] == "0.0.0.0:9000"
    document = build_document(
        rt, title="Other", version="9.9.9", url="wss://rt.example.com/ws/connection/websocket"
    )
    assert document["info"] == {**document["info"], "title": "Other", "version": "9.9.9"}
    server = document["servers"]["tidings"]
    assert (server["host"], server["protocol"], server["pathname"]) == (
        "rt.example.com",
        "wss",
        "/ws/connection/websocket",
    )
    with pytest.raises(ValueError, match="ws:// or wss://"):
        build_document(rt, url="http://example.com/")


def test_building_is_pure() -> None:
    """Reading the application starts nothing: the node is not even created."""
    rt = sample_app()
    first = build_document(rt)
    assert rt._node is None
    assert build_document(rt) == first
    assert json.loads(to_json(first)) == first


def test_every_reference_resolves_and_no_defs_are_left(document: dict[str, Any]) -> None:
    found = list(refs(document))
    assert found
    for ref in found:
        resolve(document, ref)
    assert "$defs" not in set(keys(document))
    assert not any(ref.startswith("#/$defs") for ref in found)


def test_every_operation_takes_its_messages_from_its_channel(document: dict[str, Any]) -> None:
    """AsyncAPI 3.0: an operation's (and a reply's) messages are a subset of its channel's."""
    for key, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), key
        if "reply" in operation:
            reply = operation["reply"]
            for message in reply["messages"]:
                assert message["$ref"].startswith(reply["channel"]["$ref"] + "/messages/"), key


def test_no_two_channels_share_an_address(document: dict[str, Any]) -> None:
    addresses = [channel["address"] for channel in document["channels"].values()]
    assert len(addresses) == len(set(addresses))


def test_component_and_channel_keys_are_what_asyncapi_allows(document: dict[str, Any]) -> None:
    for kind in ("schemas", "messages"):
        for key in document["components"][kind]:
            assert all(c.isascii() and (c.isalnum() or c in "._-") for c in key), key
    for key in document["channels"]:
        assert "?" not in key and "#" not in key


# --------------------------------------------------------------------------- channels


def test_one_channel_per_namespace_with_its_options(document: dict[str, Any]) -> None:
    key, chat = channel_by_address(document, "chat:{name}")
    assert key == "chat"
    assert chat["x-tidings-namespace"] == "chat"
    assert chat["x-tidings-options"] == {
        "presence": True,
        "history_size": 100,
        "history_ttl": 300.0,
        "force_recovery": True,
        "allow_subscribe_for_client": True,
        "allow_publish_for_subscriber": True,
    }
    assert set(chat["parameters"]) == {"name"}
    description = chat["description"]
    assert "namespace `chat`" in description
    assert "the last 100 publications for 5m" in description
    assert "recovery on every subscription" in description
    assert "Presence" in description
    for namespace in ("ticker", "cursors", "profiles", "shapes", "notes"):
        _, channel = channel_by_address(document, f"{namespace}:{{name}}")
        assert channel["x-tidings-namespace"] == namespace
    _, top = channel_by_address(document, "{name}")
    assert top["x-tidings-namespace"] == ""
    assert top["x-tidings-options"] == {}
    assert "with a subscription token only" in top["description"]


def test_a_handler_pattern_inside_a_namespace_gets_its_own_channel(
    document: dict[str, Any],
) -> None:
    key, room = channel_by_address(document, "cursors:room-{name}")
    assert room["title"] == "cursors:room-*"
    assert room["x-tidings-namespace"] == "cursors"
    assert room["x-tidings-options"] == {"join_leave": True, "allow_subscribe_for_client": True}
    assert "on_publish handler" in room["description"]
    # the typed channel cursors:* covers cursors:room-*
    assert payload(document, room["messages"]["publication"]["$ref"]) == {
        "$ref": "#/components/schemas/Cursor"
    }
    assert {op["action"] for op in operations_of(document, key).values()} == {"receive", "send"}


def test_a_pattern_in_a_namespace_that_is_not_configured_says_so(
    document: dict[str, Any],
) -> None:
    key, dm = channel_by_address(document, "$dm:{name}")
    assert key == "private.dm"
    assert dm["x-tidings-namespace"] == "dm"
    assert "x-tidings-options" not in dm
    assert "error 102" in dm["description"]
    # receiving is described; sending cannot succeed there
    assert [op["action"] for op in operations_of(document, key).values()] == ["receive"]


def test_the_subscribe_handler_replaces_the_rules_in_the_description() -> None:
    rt = make_app()

    @rt.on_subscribe("profiles:*")
    async def allowed(ctx: SubscribeContext) -> None:
        return None

    _, profiles = channel_by_address(build_document(rt), "profiles:{name}")
    assert "Subscribe: as the on_subscribe handler" in profiles["description"]
    assert "allowed" in profiles["description"]


def test_a_handler_for_every_channel_covers_each_namespace() -> None:
    rt = make_app()

    @rt.on_publish("*")
    async def anything(ctx: PublishContext, data: Draft) -> None:
        return None

    document = build_document(rt)
    assert "*" not in {c["title"] for c in document["channels"].values()}
    for key, channel in document["channels"].items():
        actions = sorted(op["action"] for op in operations_of(document, key).values())
        assert actions == ["receive", "send"], channel["title"]


@pytest.mark.parametrize(
    ("pattern", "address", "parameters"),
    [
        ("chat:*", "chat:{name}", ["name"]),
        ("game:*:moves", "game:{name}:moves", ["name"]),
        ("game:*:*", "game:{name1}:{name2}", ["name1", "name2"]),
        ("chat:room-?", "chat:room-{name}", ["name"]),
        ("chat:[ab]*", "chat:{name1}{name2}", ["name1", "name2"]),
        ("chat:lobby", "chat:lobby", []),
    ],
)
def test_glob_patterns_become_addresses_with_parameters(
    pattern: str, address: str, parameters: list[str]
) -> None:
    rt = make_app()
    rt.channel(pattern, schema=Draft)
    document = build_document(rt)
    _, channel = channel_by_address(document, address)
    assert list(channel.get("parameters", {})) == parameters
    assert channel["title"] == pattern


def test_a_wildcard_namespace_is_any_namespace() -> None:
    rt = make_app()
    rt.channel("*:announcements", schema=Draft)
    _, channel = channel_by_address(build_document(rt), "{name}:announcements")
    assert "x-tidings-namespace" not in channel
    assert "in any namespace" in channel["description"]


# --------------------------------------------------------------------------- publications


@pytest.mark.parametrize(
    ("address", "component", "properties"),
    [
        ("chat:{name}", "ChatMessage", {"text", "author"}),  # msgspec.Struct
        ("ticker:{name}", "Tick", {"symbol", "price"}),  # dataclass
        ("cursors:{name}", "Cursor", {"x", "y"}),  # TypedDict
        ("profiles:{name}", "Profile", {"name", "address"}),  # pydantic model
    ],
)
def test_typed_channels_carry_their_schema(
    document: dict[str, Any], address: str, component: str, properties: set[str]
) -> None:
    key, channel = channel_by_address(document, address)
    assert payload(document, channel["messages"]["publication"]["$ref"]) == {
        "$ref": f"#/components/schemas/{component}"
    }
    body = document["components"]["schemas"][component]
    assert body["type"] == "object"
    assert set(body["properties"]) == properties
    receive = operations_of(document, key)[f"{key}.receive"]
    assert receive["action"] == "receive"
    assert receive["messages"] == [{"$ref": f"#/channels/{key}/messages/publication"}]


def test_docstrings_and_nested_pydantic_models_reach_the_schemas(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["ChatMessage"]["description"] == "One line of chat."
    assert schemas["Profile"]["description"] == "A user's public profile."
    assert schemas["Profile"]["properties"]["address"] == {"$ref": "#/components/schemas/Address"}
    assert set(schemas["Address"]["properties"]) == {"city"}


def test_a_tagged_union_keeps_its_discriminator_as_an_extension(
    document: dict[str, Any],
) -> None:
    _, shapes = channel_by_address(document, "shapes:{name}")
    union = payload(document, shapes["messages"]["publication"]["$ref"])
    assert union["anyOf"] == [
        {"$ref": "#/components/schemas/Circle"},
        {"$ref": "#/components/schemas/Square"},
    ]
    assert "discriminator" not in union  # AsyncAPI's discriminator is a bare property name
    assert union["x-discriminator"] == {
        "propertyName": "type",
        "mapping": {
            "Circle": "#/components/schemas/Circle",
            "Square": "#/components/schemas/Square",
        },
    }


def test_untyped_channels_share_one_any_json_publication(document: dict[str, Any]) -> None:
    _, top = channel_by_address(document, "{name}")
    _, notes = channel_by_address(document, "notes:{name}")
    for channel in (top, notes):
        assert channel["messages"]["publication"] == {"$ref": "#/components/messages/publication"}
    assert "payload" not in document["components"]["messages"]["publication"]


def test_clients_send_where_the_namespace_or_a_handler_lets_them(
    document: dict[str, Any],
) -> None:
    sends = {
        key.rsplit(".", 1)[0]
        for key, operation in document["operations"].items()
        if operation["action"] == "send" and "reply" not in operation
    }
    # chat: allow_publish_for_subscriber and a handler; shapes: allow_publish_for_client;
    # notes and cursors:room-*: handlers only. ticker, cursors, profiles: the server only.
    assert sends == {"chat", "shapes", "notes", "cursors.room"}


def test_a_publish_handler_with_its_own_type_gets_its_own_message(
    document: dict[str, Any],
) -> None:
    key, notes = channel_by_address(document, "notes:{name}")
    assert set(notes["messages"]) == {"publication", "publish"}
    send = document["operations"][f"{key}.publish"]
    assert send["messages"] == [{"$ref": f"#/channels/{key}/messages/publish"}]
    assert payload(document, send["messages"][0]["$ref"]) == {"$ref": "#/components/schemas/Draft"}


def test_a_publish_handler_of_the_channel_type_shares_its_message(
    document: dict[str, Any],
) -> None:
    key, chat = channel_by_address(document, "chat:{name}")
    assert set(chat["messages"]) == {"publication"}
    send = document["operations"][f"{key}.publish"]
    assert send["action"] == "send"
    assert send["messages"] == [{"$ref": f"#/channels/{key}/messages/publication"}]
    assert send["description"] == "Stamp the author on every line."
    assert "on_publish handler `" in chat["description"]


# --------------------------------------------------------------------------- RPC


def rpc_operation(document: dict[str, Any], method: str) -> dict[str, Any]:
    found = [
        op for op in document["operations"].values() if op.get("x-tidings-rpc-method") == method
    ]
    assert len(found) == 1
    return found[0]


def test_an_rpc_is_a_request_with_a_reply(document: dict[str, Any]) -> None:
    operation = rpc_operation(document, "quote")
    assert operation["action"] == "send"
    assert operation["description"] == "The latest quote of a symbol."
    channel = resolve(document, operation["channel"]["$ref"])
    assert channel["address"] is None
    assert operation["reply"]["channel"] == operation["channel"]
    params = payload(document, operation["messages"][0]["$ref"])
    result = payload(document, operation["reply"]["messages"][0]["$ref"])
    assert params == {"$ref": "#/components/schemas/QuoteRequest"}
    assert result == {"$ref": "#/components/schemas/Quote"}
    quote = document["components"]["schemas"]["Quote"]
    assert quote["properties"]["currency"] == {"enum": ["EUR", "USD"], "default": "EUR"}
    assert quote["required"] == ["symbol", "price"]


def test_rpc_results_with_pydantic_models_inside_containers(document: dict[str, Any]) -> None:
    operation = rpc_operation(document, "user/get")
    assert payload(document, operation["messages"][0]["$ref"]) == {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    assert payload(document, operation["reply"]["messages"][0]["$ref"]) == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Profile"},
    }


def test_an_unannotated_rpc_takes_and_returns_any_json(document: dict[str, Any]) -> None:
    operation = rpc_operation(document, "whoami")
    assert payload(document, operation["messages"][0]["$ref"]) is None
    assert payload(document, operation["reply"]["messages"][0]["$ref"]) is None


def test_an_optional_pydantic_result() -> None:
    rt = make_app()

    @rt.rpc("profile")
    async def profile(ctx: RPCContext, params: QuoteRequest) -> Profile | None:
        return None

    document = build_document(rt)
    result = payload(document, rpc_operation(document, "profile")["reply"]["messages"][0]["$ref"])
    assert result == {"anyOf": [{"$ref": "#/components/schemas/Profile"}, {"type": "null"}]}
    assert set(document["components"]["schemas"]) == {"QuoteRequest", "Profile", "Address"}


def test_no_rpc_no_rpc_channel() -> None:
    document = build_document(make_app())
    assert all(c["address"] is not None for c in document["channels"].values())
    assert not any("x-tidings-rpc-method" in op for op in document["operations"].values())
    assert "schemas" not in document["components"]


# --------------------------------------------------------------------------- schema names


def test_two_types_with_one_name_get_two_components() -> None:
    first = msgspec.defstruct("Item", [("a", int)])
    second = msgspec.defstruct("Item", [("b", str)])
    rt = make_app()
    rt.channel("chat:*", schema=first)
    rt.channel("notes:*", schema=second)
    rt.channel("ticker:*", schema=first)
    document = build_document(rt)
    schemas = document["components"]["schemas"]
    assert set(schemas) == {"Item", "Item_2"}
    assert set(schemas["Item"]["properties"]) == {"a"}
    assert set(schemas["Item_2"]["properties"]) == {"b"}
    by_address = {
        channel["address"]: payload(document, channel["messages"]["publication"]["$ref"])
        for channel in document["channels"].values()
    }
    assert by_address["chat:{name}"] == {"$ref": "#/components/schemas/Item"}
    assert by_address["notes:{name}"] == {"$ref": "#/components/schemas/Item_2"}
    assert by_address["ticker:{name}"] == {"$ref": "#/components/schemas/Item"}


def test_the_demo_namespace_shows_while_the_demo_is_on() -> None:
    document = build_document(Tidings(Config(demo="on")))
    _, demo = channel_by_address(document, "demo:{name}")
    assert "anonymous clients too" in demo["description"]


# --------------------------------------------------------------------------- YAML


def test_yaml_reads_back_as_the_document(document: dict[str, Any]) -> None:
    text = to_yaml(document)
    assert yaml.safe_load(text) == document
    assert text.startswith('asyncapi: "3.0.0"\n')


@pytest.mark.parametrize(
    "text",
    [
        "",
        "y",
        "No",
        "NULL",
        "~",
        "123",
        "1e3",
        "0x1F",
        "1_000",
        ".inf",
        "2024-01-01",
        "-",
        "- a",
        "a: b",
        "#x",
        "a #b",
        "{name}",
        "[x]",
        "*x",
        "&x",
        "!x",
        "%x",
        "@x",
        "`x",
        "'x'",
        '"x"',
        " lead",
        "trail ",
        "line\nbreak",
        "tab\there",
        "nel\x85here",
        "sep\u2028here",
        "del\x7fhere",
        "bom\ufeffhere",
        "é and 日本 and 🎉",
        "$ref",
        "chat.publication",
        "/connection/websocket",
        "#/components/schemas/X",
        "chat:*",
        "chat: x",
        "ends:",
        "ends with space ",
        "a  b",
        "x, y",
        "it's (here)",
        "yes please",
        "Null thing",
        "a:b:c",
        "a :b",
        "trailing newline\n",
        "/N\n",
    ],
)
def test_yaml_strings_read_back_unchanged(text: str) -> None:
    assert yaml.safe_load(to_yaml({text: text, "list": [text]})) == {text: text, "list": [text]}


@pytest.mark.parametrize("number", [0, -1, 2**63 - 1, 0.5, 1e-05, 1e20, -2.5e-300])
def test_yaml_numbers_read_back_unchanged(number: float) -> None:
    loaded = yaml.safe_load(to_yaml({"n": number}))["n"]
    assert loaded == number and type(loaded) is type(number)


def test_yaml_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(ValueError):
        to_yaml({"n": math.nan})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_yaml_round_trips_any_json_value(value: Any) -> None:
    assert yaml.safe_load(to_yaml(value)) == value


@given(st.lists(st.text(alphabet="aNy0:# -,'*()/$.\n\t\"\\", max_size=12), max_size=6))
def test_yaml_round_trips_strings_of_tricky_characters(texts: list[str]) -> None:
    value = {text: texts for text in texts}
    assert yaml.safe_load(to_yaml(value)) == value
