"""The namespace options of delta compression and conflation, and the refusals they get."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.config import load_config
from tidings.errors import ConfigError

TICKER = """
[channels.namespaces.ticker]
history_size = 1000
history_ttl = "60s"
force_recovery = true
allow_subscribe_for_client = true
allowed_delta_types = ["fossil"]
delta_publish = true
conflate_by = "key"
max_frequency = 10
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return path


def test_a_ticker_namespace_loads(tmp_path: Path) -> None:
    ticker = load_config(write(tmp_path, TICKER), env={}).channels.namespaces["ticker"]
    assert ticker.allowed_delta_types == ["fossil"] and ticker.delta_publish
    assert ticker.conflates and ticker.max_frequency == 10.0


def test_defaults_are_off(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, "[channels.namespaces.chat]\n"), env={})
    chat = plain.channels.namespaces["chat"]
    assert chat.allowed_delta_types == [] and not chat.delta_publish
    assert chat.conflate_by == "" and not chat.conflates and chat.max_frequency == 0.0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            'allowed_delta_types = ["vcdiff"]',
            "x1.allowed_delta_types: unknown delta type 'vcdiff' (known: fossil)",
        ),
        ('conflate_by = "symbol"', 'channels.namespaces.x1.conflate_by: expected "key", "none"'),
        ("max_frequency = -1", "channels.namespaces.x1.max_frequency: expected updates per second"),
        ("max_frequency = 5", 'channels.namespaces.x1.max_frequency: needs conflate_by = "key"'),
    ],
)
def test_refusals_name_the_option(tmp_path: Path, option: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, f"[channels.namespaces.x1]\n{option}\n"), env={})
    assert message in str(raised.value)
