"""``serve --help`` and docs/configuration.md show defaults one way per kind, with units."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidings.cli import main
from tidings.config import OPTIONS, format_duration, parse_duration

pytestmark = pytest.mark.timeout(30)

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.002, "2ms"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (25, "25s"),
        (300, "5m"),
        (90, "90s"),
        (3600, "1h"),
        (30 * 86400, "30d"),
    ],
)
def test_durations_are_written_back_with_a_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, "x") == pytest.approx(seconds)


def help_text() -> str:
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=400)
    assert result.exit_code == 0
    return result.output


def test_help_shows_every_default_in_one_format() -> None:
    text = help_text()
    defaults = re.findall(r"\[default: ([^;\]]*); env (TIDINGS_\w+)\]", text)
    assert len(defaults) == len(OPTIONS)
    for option, (shown, env) in zip(OPTIONS, defaults, strict=True):
        assert env == option.env
        assert shown == option.default_text
        if option.kind == "duration":
            assert re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h|d)", shown), (option.name, shown)
        if option.kind == "list":
            assert "[" not in shown and "'" not in shown, (option.name, shown)
        if option.kind == "bool":
            assert shown in ("true", "false")
    # No Python reprs anywhere: no quoted strings, floats or lists as defaults.
    assert "default '" not in text and "default [" not in text and "25.0" not in text
    assert "[default: 65536 bytes; env TIDINGS_MAX_MESSAGE_SIZE]" in text
    assert "[default: 1000 per second; env TIDINGS_CLIENT_COMMAND_RATE_LIMIT]" in text
    assert "--ping-interval DURATION" in text and "--allowed-origins A,B,..." in text
    assert "DURATION: a number and a unit, 250ms, 30s, 5m, 1h or 2d" in text


def test_configuration_doc_shows_the_same_defaults() -> None:
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(\w+)` \| \w+ \| `([^`]*)` \|", DOC.read_text(), re.M)
    }
    for option in OPTIONS:
        assert rows.get(option.name) == option.default_text, option.name
