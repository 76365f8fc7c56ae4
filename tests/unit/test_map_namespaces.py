"""Map namespaces in the configuration: the issue's TOML loads, and each rule names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.config import load_config
from tidings.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

ISSUE_EXAMPLE = """
[channels.namespaces.prices]
subscription_type = "map"
allow_subscribe_for_client = true
allowed_delta_types = ["fossil"]
[channels.namespaces.prices.map]
mode = "recoverable"
key_ttl = "60s"
stream_size = 1000
"""

PRESENCE = """
[channels.namespaces.game]
allow_subscribe_for_client = true
map_clients_presence_channel_prefix = "clients:"
map_users_presence_channel_prefix = "$users:"
[channels.namespaces.clients]
subscription_type = "map_clients"
[channels.namespaces.clients.map]
mode = "ephemeral"
key_ttl = "1m"
[channels.namespaces.users]
subscription_type = "map_users"
[channels.namespaces.users.map]
mode = "recoverable"
key_ttl = "90s"
subscribe_catch_up_timeout = -1
"""


def test_the_issue_example_loads_with_durations_in_seconds(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ISSUE_EXAMPLE), env={})
    prices = config.channels.namespaces["prices"]
    assert prices.subscription_type == "map" and prices.is_map
    assert prices.allowed_delta_types == ["fossil"]
    assert prices.map is not None
    assert (prices.map.mode, prices.map.key_ttl, prices.map.stream_size) == (
        "recoverable",
        60.0,
        1000,
    )
    assert prices.map.retention.meta_ttl == 600.0  # ten stream lifetimes
    assert not config.channels.is_map  # channels without a namespace stay streams


def test_presence_prefixes_name_their_namespaces(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, PRESENCE), env={})
    users = config.channels.namespaces["users"].map
    assert users is not None and users.catch_up_timeout is None  # negative: no limit


def test_the_map_engine_follows_the_broker_unless_named() -> None:
    assert load_config(env={}).map_broker_url == "memory"
    redis = load_config(env={"TIDINGS_BROKER": "redis://127.0.0.1:6379/0"})
    assert redis.map_broker_url == "redis://127.0.0.1:6379/0"
    split = load_config(
        env={"TIDINGS_BROKER": "redis://127.0.0.1:6379/0", "TIDINGS_MAP_BROKER": "memory"}
    )
    assert split.map_broker_url == "memory"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[channels.namespaces.mm]\nsubscription_type = "map"\n',
            'channels.namespaces.mm.map: required for a map namespace (mode = "...")',
        ),
        (
            '[channels.namespaces.mm]\nsubscription_type = "shared_poll"\n',
            "channels.namespaces.mm.subscription_type: expected one of stream, map, map_clients, "
            "map_users, got 'shared_poll' (shared poll is not supported)",
        ),
        (
            "[channels.namespaces.mm.map]\nmode = 'persistent'\n",
            "channels.namespaces.mm.map: only for a map namespace",
        ),
        (
            '[channels.namespaces.mm]\nsubscription_type = "map"\n[channels.namespaces.mm.map]\n'
            'mode = "recoverable"\n',
            "channels.namespaces.mm.map.key_ttl: required in recoverable mode",
        ),
        (
            '[channels.namespaces.mm]\nsubscription_type = "map"\n[channels.namespaces.mm.map]\n'
            'mode = "ephemeral"\nkey_ttl = "soon"\n',
            'channels.namespaces.mm.map.key_ttl: expected a duration like "30s"',
        ),
        (
            '[channels.namespaces.mm]\nsubscription_type = "map"\n[channels.namespaces.mm.map]\n'
            'mode = "persistent"\ncolour = "red"\n',
            "channels.namespaces.mm.map.colour: unknown option",
        ),
        (
            '[channels.namespaces.mm]\nsubscription_type = "map"\nhistory_size = 10\n'
            'history_ttl = "1m"\n[channels.namespaces.mm.map]\nmode = "persistent"\n',
            "channels.namespaces.mm.history_size: a stream option, not used by a map namespace",
        ),
        (
            '[channels.namespaces.mm]\nsubscription_type = "map_users"\n'
            '[channels.namespaces.mm.map]\nmode = "persistent"\n',
            "channels.namespaces.mm.map.mode: a map_users namespace needs keys that expire",
        ),
        (
            '[channels.namespaces.mm]\nallowed_delta_types = ["xdelta"]\n',
            "channels.namespaces.mm.allowed_delta_types: unknown delta type 'xdelta'",
        ),
        (
            '[channels.namespaces.game]\nmap_clients_presence_channel_prefix = "who:"\n',
            "channels.namespaces.game.map_clients_presence_channel_prefix: expected a prefix "
            "naming a map_clients namespace",
        ),
    ],
    ids=[
        "no-map-table",
        "shared-poll",
        "map-table-on-a-stream",
        "missing-key-ttl",
        "bad-duration",
        "unknown-map-option",
        "stream-option-on-a-map",
        "persistent-presence",
        "unknown-delta",
        "prefix-without-namespace",
    ],
)
def test_bad_map_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, text), env={})
    assert str(raised.value).startswith(message), str(raised.value)


def test_several_workers_need_a_shared_map_engine() -> None:
    env = {
        "TIDINGS_BROKER": "redis://127.0.0.1:6379/0",
        "TIDINGS_MAP_BROKER": "memory",
        "TIDINGS_WORKERS": "2",
    }
    with pytest.raises(ConfigError, match="workers: more than one worker needs a shared map"):
        load_config(env=env)
    with pytest.raises(ConfigError, match='map_broker: expected "memory" or a redis:// URL'):
        load_config(env={"TIDINGS_MAP_BROKER": "postgres://x"})


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return path
