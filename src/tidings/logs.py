"""Log output: one line per event, as readable text or as JSON, never with a secret in it.

``--log-format text`` (the default) writes what tidings always wrote::

    2025-01-31 12:00:00,123 INFO    tidings.api: API publish refused: 102 unknown channel (...)

``--log-format json`` writes the same events as one JSON object per line, for
log shippers: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, then the structured fields a call passed with ``extra=``
(:data:`FIELDS`: ``client``, ``user``, ``channel``, ``code`` ...), ``process``
when the line comes from a ``--workers`` supervisor or worker, and
``exception`` (the traceback, still on one line) when there is one::

    {"time":"2025-01-31T12:00:00.123Z","level":"info","logger":"tidings.api",
     "message":"API publish refused: ...","code":102,"channel":"nope:x"}

Both formats pass every line through :class:`Redactor` last: the configured
secrets (API key, token secret, admin password and token) and anything shaped
like a JWT or a ``token=``/``api_key=``/``password=`` parameter are replaced,
so neither a log call nor an exception message can write one out.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidings.config import Config

__all__ = ["FIELDS", "JsonFormatter", "Redactor", "TextFormatter", "configure"]

FIELDS = (
    "client",
    "user",
    "channel",
    "namespace",
    "code",
    "method",
    "field",
    "remote",
    "node",
    "status",
)
"""Structured fields a log call may pass with ``extra=``; the JSON format writes them."""

TEXT_FORMAT = "%(asctime)s %(levelname)-7s {label}%(name)s: %(message)s"

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_SECRET_PARAMETER = re.compile(r"(?i)\b(token|api_key|apikey|password|secret)=[^\s&\"',;)]+")
_SECRET_HEADER = re.compile(
    r"(?i)\b(authorization|x-api-key):\s*(?:(?:bearer|apikey)\s+)?[^\s\"',;)]+"
)
_MIN_SECRET = 4
"""Shorter configured values are not searched for: they would blank ordinary words."""


class Redactor:
    """Replaces secrets in finished log lines (the last step of both formats)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted(
            {secret for secret in secrets if len(secret) >= _MIN_SECRET}, key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        text = _JWT.sub("[token]", text)
        text = _SECRET_PARAMETER.sub(lambda m: f"{m.group(1)}=[redacted]", text)
        return _SECRET_HEADER.sub(lambda m: f"{m.group(1)}: [redacted]", text)


class TextFormatter(logging.Formatter):
    """Today's one-line text, with an optional process label and secrets removed."""

    def __init__(self, label: str = "", redactor: Redactor | None = None) -> None:
        super().__init__(TEXT_FORMAT.format(label=f"{label} " if label else ""))
        self.redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the fields present."""

    def __init__(self, label: str = "", redactor: Redactor | None = None) -> None:
        super().__init__()
        self.process_label = label.strip("[]")
        self.redact = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None and value != "":
                document[name] = value if isinstance(value, int | float | bool) else str(value)
        if self.process_label:
            document["process"] = self.process_label
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        line = json.dumps(document, ensure_ascii=False, default=str)
        return self.redact(line)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure(
    level: str = "info",
    log_format: str = "text",
    *,
    label: str = "",
    secrets: Iterable[str] = (),
) -> None:
    """Send every ``tidings`` log line to stderr in ``log_format`` ("text" or "json").

    Replaces whatever handlers the root logger had, so a worker process (or a
    second call) never writes a line twice.
    """
    redactor = Redactor(secrets)
    formatter: logging.Formatter = (
        JsonFormatter(label, redactor) if log_format == "json" else TextFormatter(label, redactor)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True
    )


def configure_for(config: Config, *, label: str = "") -> None:
    """:func:`configure` from a :class:`~tidings.config.Config` and the secrets it holds."""
    configure(
        config.log_level,
        config.log_format,
        label=label,
        secrets=(
            config.api_key,
            config.token_hmac_secret,
            config.admin_password,
            config.admin_token,
            config.metrics_token,
        ),
    )
