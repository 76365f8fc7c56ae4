"""``tidings asyncapi module:rt`` as users run it, checked by AsyncAPI's own parser.

A sample application module is written to ``tmp_path`` and loaded with
``--app-dir`` from another directory; the command runs as a real process. Its
JSON and YAML output go through npm's ``@asyncapi/parser`` (tests/asyncapi_validate.mjs,
under Node), which must report no diagnostic of severity error.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import run_cli

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO / "tests" / "asyncapi_validate.mjs"

SAMPLE_APP = '''
"""A chat application, as a user would write it."""
import logging
from dataclasses import dataclass
from typing import TypedDict

import msgspec
import pydantic

from tidings import Tidings
from tidings.channels import ChannelOptions
from tidings.config import ChannelsConfig, Config

print("sample app: loading")  # must not end up in the document
logging.getLogger("sample").warning("sample app: a warning while loading")


class ChatMessage(msgspec.Struct):
    """One line of chat."""
    text: str
    author: str | None = None


@dataclass
class Tick:
    symbol: str
    price: float


class Cursor(TypedDict):
    x: int
    y: int


class Address(pydantic.BaseModel):
    city: str


class Profile(pydantic.BaseModel):
    name: str
    address: Address


class QuoteRequest(msgspec.Struct):
    symbol: str


class Quote(msgspec.Struct):
    symbol: str
    price: float


class Circle(msgspec.Struct, tag=True):
    radius: float


class Square(msgspec.Struct, tag=True):
    side: float


rt = Tidings(
    Config(
        token_hmac_secret="s" * 32,
        channels=ChannelsConfig(
            namespaces={
                "chat": ChannelOptions(
                    history_size=50, history_ttl=60.0, allow_subscribe_for_client=True,
                    allow_publish_for_subscriber=True, presence=True,
                ),
                "ticker": ChannelOptions(allow_subscribe_for_client=True),
                "cursors": ChannelOptions(join_leave=True),
                "profiles": ChannelOptions(),
                "shapes": ChannelOptions(allow_publish_for_client=True),
            }
        ),
    )
)
rt.channel("chat:*", schema=ChatMessage)
rt.channel("ticker:*", schema=Tick)
rt.channel("cursors:*", schema=Cursor)
rt.channel("profiles:*", schema=Profile)
rt.channel("shapes:*", schema=Circle | Square)


@rt.on_publish("chat:*")
async def post(ctx, data: ChatMessage) -> ChatMessage:
    """Stamp the author."""
    return ChatMessage(data.text, ctx.user)


@rt.on_publish("cursors:room-*")
async def move(ctx, data: Cursor) -> None:
    return None


@rt.on_subscribe("$dm:*")
async def join(ctx):
    return None


@rt.rpc("quote")
async def quote(ctx, params: QuoteRequest) -> Quote:
    """The latest quote of a symbol."""
    return Quote(params.symbol, 1.0)


@rt.rpc("profile/get")
async def profile(ctx, params: dict) -> Profile | None:
    return None
'''


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "sampleapp.py").write_text(SAMPLE_APP)
    return directory


async def export(app_dir: Path, *args: str) -> tuple[int, str, str]:
    return await run_cli("asyncapi", "sampleapp:rt", "--app-dir", str(app_dir), *args)


def node_missing_reason() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (REPO / "node_modules" / "@asyncapi" / "parser" / "package.json").is_file():
        return f"npm package @asyncapi/parser is not installed (run `npm ci` in {REPO})"
    return None


async def parse_with_asyncapi_parser(text: str) -> tuple[int, dict[str, Any]]:
    """Exit code and report of tests/asyncapi_validate.mjs on ``text``."""
    reason = node_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    process = await asyncio.create_subprocess_exec(
        "node",
        str(VALIDATOR),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(text.encode()), 90)
    assert process.returncode is not None
    assert process.returncode in (0, 1), err.decode()
    return process.returncode, json.loads(out)


def errors(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in report["diagnostics"] if d["severity"] == 0]


# --------------------------------------------------------------------------- the command


async def test_json_on_stdout_alone(app_dir: Path) -> None:
    code, out, err = await export(app_dir)
    assert code == 0, err
    document = json.loads(out)  # the whole of stdout, nothing printed around it
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "sampleapp"
    assert "sample app: loading" in err  # the module's print went to stderr
    assert "sample app: a warning while loading" in err
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {"chat:{name}", "ticker:{name}", "cursors:room-{name}", "$dm:{name}", None} <= addresses
    schemas = document["components"]["schemas"]
    assert {"ChatMessage", "Tick", "Cursor", "Profile", "Address", "Quote"} <= set(schemas)


async def test_yaml_is_the_same_document(app_dir: Path) -> None:
    code, out, err = await export(app_dir, "--format", "yaml")
    assert code == 0, err
    _, json_out, _ = await export(app_dir, "--format", "json")
    assert yaml.safe_load(out) == json.loads(json_out)
    assert out.startswith('asyncapi: "3.0.0"\n')


async def test_flags_set_title_version_and_url(app_dir: Path) -> None:
    code, out, err = await export(
        app_dir,
        "--title",
        "Chat",
        "--api-version",
        "2.0.1",
        "--url",
        "wss://chat.example.com/connection/websocket",
    )
    assert code == 0, err
    document = json.loads(out)
    assert (document["info"]["title"], document["info"]["version"]) == ("Chat", "2.0.1")
    assert document["servers"]["tidings"]["host"] == "chat.example.com"
    assert document["servers"]["tidings"]["protocol"] == "wss"


async def test_a_url_that_is_not_websocket_is_a_usage_error(app_dir: Path) -> None:
    code, out, err = await export(app_dir, "--url", "http://example.com/")
    assert code == 2
    assert out == ""
    assert "ws:// or wss://" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule:rt", "no module 'nosuchmodule'"),
        ("sampleapp:nope", "module 'sampleapp' has no attribute 'nope'"),
        ("sampleapp:Quote", "not a Tidings application"),
        ("sampleapp", "expected MODULE:ATTRIBUTE"),
    ],
)
async def test_what_cannot_be_loaded_is_one_line_on_stderr(
    app_dir: Path, spec: str, message: str
) -> None:
    code, out, err = await run_cli("asyncapi", spec, "--app-dir", str(app_dir))
    assert code == 1
    assert out == ""
    # after what the module itself printed to stderr while it loaded, one line
    assert err.endswith("\n") and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("tidings: cannot load the application: ") and message in last


async def test_an_error_inside_the_module_shows_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('the app is broken')\n")
    code, out, err = await run_cli("asyncapi", "brokenapp:rt", "--app-dir", str(tmp_path))
    assert code == 1
    assert out == ""
    assert "Traceback" in err and "RuntimeError: the app is broken" in err


async def test_a_configuration_error_in_the_module(tmp_path: Path) -> None:
    (tmp_path / "badconfig.py").write_text(
        "from tidings import Tidings\nrt = Tidings('missing.toml')\n"
    )
    code, out, err = await run_cli("asyncapi", "badconfig:rt", "--app-dir", str(tmp_path))
    assert code == 2
    assert out == ""
    assert "configuration error" in err and "missing.toml" in err


# --------------------------------------------------------------------------- AsyncAPI's parser


@pytest.mark.node
@pytest.mark.parametrize("output_format", ["json", "yaml"])
async def test_the_asyncapi_parser_accepts_the_document(app_dir: Path, output_format: str) -> None:
    code, out, err = await export(app_dir, "--format", output_format)
    assert code == 0, err
    exit_code, report = await parse_with_asyncapi_parser(out)
    assert errors(report) == []
    assert exit_code == 0
    parsed = report["document"]
    assert parsed["servers"]["tidings"] == {
        "host": "127.0.0.1:8000",
        "protocol": "ws",
        "pathname": "/connection/websocket",
    }
    assert parsed["channels"]["chat"]["address"] == "chat:{name}"
    assert parsed["channels"]["chat"]["parameters"] == ["name"]
    operations = parsed["operations"]
    assert operations["chat.receive"]["action"] == "receive"
    assert operations["chat.receive"]["channels"] == ["chat"]
    assert operations["chat.publish"]["action"] == "send"
    assert operations["shapes.publish"]["action"] == "send"
    assert "ticker.publish" not in operations  # the server alone publishes there
    assert operations["rpc.quote"] == {
        "action": "send",
        "channels": ["rpc"],
        "messages": ["rpc.quote.params"],
        "reply": ["rpc.quote.result"],
    }
    # the parser resolved the payloads through components.schemas
    payloads = report["document"]["payloads"]
    assert set(payloads["chat.publication"]["properties"]) == {"text", "author"}
    address = payloads["profiles.publication"]["properties"]["address"]
    assert address["properties"]["city"]["type"] == "string"
    assert payloads["rpc.quote.result"]["required"] == ["symbol", "price"]
    assert payloads["rpc.profile_get.result"]["anyOf"][1]["type"] == "null"


@pytest.mark.node
async def test_the_parser_check_is_not_vacuous(app_dir: Path) -> None:
    """The same document, broken in two ways AsyncAPI 3.0 forbids, is refused."""
    code, out, err = await export(app_dir)
    assert code == 0, err
    document = json.loads(out)
    document["operations"]["chat.receive"]["messages"] = [
        {"$ref": "#/channels/ticker/messages/publication"}
    ]
    union = document["components"]["messages"]["shapes.publication"]["payload"]
    union["discriminator"] = union.pop("x-discriminator")  # OpenAPI's form, not AsyncAPI's
    exit_code, report = await parse_with_asyncapi_parser(json.dumps(document))
    assert exit_code == 1
    codes = {d["code"] for d in errors(report)}
    assert "asyncapi3-operation-messages-from-referred-channel" in codes
    assert any("discriminator" in d["message"] for d in errors(report))
