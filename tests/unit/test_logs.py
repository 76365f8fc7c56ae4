"""Log formats: the JSON shape, the text shape, and secrets removed from both."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from tidings.logs import JsonFormatter, Redactor, TextFormatter

pytestmark = pytest.mark.timeout(30)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


def record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    item = logging.LogRecord("tidings.api", logging.INFO, __file__, 1, message, args, None)
    item.__dict__.update(fields)
    item.created = 1_700_000_000.25
    return item


def test_json_line_has_time_level_logger_message_and_fields() -> None:
    line = JsonFormatter().format(
        record("API %s refused", "publish", code=102, channel="nope:x", client="1.2.3.4:5")
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "info",
        "logger": "tidings.api",
        "message": "API publish refused",
        "client": "1.2.3.4:5",
        "channel": "nope:x",
        "code": 102,
    }


def test_json_keeps_a_traceback_on_one_line_and_names_the_process() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        info = sys.exc_info()
    item = logging.LogRecord("tidings", logging.ERROR, __file__, 1, "failed", (), info)
    line = JsonFormatter("[worker 2]").format(item)
    document = json.loads(line)
    assert "\n" not in line
    assert document["process"] == "worker 2" and "RuntimeError: boom" in document["exception"]


def test_text_line_is_unchanged_apart_from_the_label() -> None:
    line = TextFormatter("[worker 1]").format(record("hello %d", 5))
    assert line.endswith(" INFO    [worker 1] tidings.api: hello 5")


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_secrets_never_reach_a_line(formatter: type[logging.Formatter]) -> None:
    redactor = Redactor(["the-api-key-123", "hmac-secret-xyz"])
    fmt = formatter("", redactor)  # type: ignore[call-arg]
    line = fmt.format(
        record(
            "GET /longpoll?token=%s&api_key=the-api-key-123 with %s, Authorization: Bearer abc "
            "X-API-Key: raw, secret hmac-secret-xyz",
            JWT,
            JWT,
        )
    )
    for secret in (JWT, "the-api-key-123", "hmac-secret-xyz", "Bearer abc", "raw,"):
        assert secret not in line, line
    assert "token=[redacted]" in line and "[token]" in line


def test_short_configured_values_do_not_blank_words() -> None:
    assert Redactor(["on", ""])("connection on node") == "connection on node"
