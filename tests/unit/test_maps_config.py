"""Map namespace options: Centrifugo's defaults and rules, and errors that name the option."""

from __future__ import annotations

import math

import pytest

from tidings.brokers.maps import MapMode, MapRetention
from tidings.errors import ConfigError
from tidings.maps_config import MapOptions, map_options_from_table

pytestmark = pytest.mark.timeout(30)


def test_recoverable_defaults() -> None:
    retention = MapRetention.of("recoverable", key_ttl=60)
    assert retention == MapRetention(
        MapMode.RECOVERABLE, key_ttl=60, stream_size=100, stream_ttl=60, meta_ttl=600
    )
    # The top outlives the keys even when ten stream lifetimes would not.
    assert MapRetention.of("recoverable", key_ttl=3600, stream_ttl=30).meta_ttl == 3600


def test_persistent_keeps_its_position_forever() -> None:
    retention = MapRetention.of("persistent", stream_size=1000)
    assert (retention.key_ttl, retention.stream_size, retention.meta_ttl) == (0, 1000, math.inf)


def test_ephemeral_keeps_no_stream() -> None:
    retention = MapRetention.of("ephemeral", key_ttl=30)
    assert (retention.stream_size, retention.stream_ttl) == (0, 0)
    assert not retention.mode.has_stream


@pytest.mark.parametrize(
    ("mode", "options", "message"),
    [
        ("durable", {}, "mode: expected one of ephemeral, recoverable, persistent"),
        ("ephemeral", {}, "key_ttl: required in ephemeral mode"),
        ("recoverable", {}, "key_ttl: required in recoverable mode"),
        ("persistent", {"key_ttl": 5}, "key_ttl: must be 0 in persistent mode"),
        ("ephemeral", {"key_ttl": 5, "stream_size": 10}, "stream_size: ephemeral mode keeps"),
        ("ephemeral", {"key_ttl": 5, "meta_ttl": 10}, "meta_ttl: ephemeral mode keeps"),
        ("recoverable", {"key_ttl": 5, "stream_ttl": 60, "meta_ttl": 30}, ">= stream_ttl"),
        ("recoverable", {"key_ttl": 120, "meta_ttl": 90}, ">= key_ttl"),
        ("persistent", {"meta_ttl": 600}, "must be 0 (never) when keys never expire"),
        ("recoverable", {"key_ttl": -1}, "key_ttl: must be >= 0"),
    ],
)
def test_retention_rules(mode: str, options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MapRetention.of(mode, **options)  # type: ignore[arg-type]


def test_options_from_a_table() -> None:
    options = map_options_from_table(
        {"mode": "recoverable", "key_ttl": 60.0, "stream_size": 1000, "client_key": "user_id"},
        "channels.namespaces.prices.map",
    )
    assert options.retention.stream_size == 1000
    assert options.has_stream and options.client_key == "user_id"
    assert options.live_limit == 1000 and options.catch_up_timeout == 5.0


@pytest.mark.parametrize(
    ("table", "subscription_type", "message"),
    [
        ({}, "map", "prices.map.mode: required for a map namespace"),
        ({"mode": "recoverable"}, "map", "prices.map.key_ttl: required in recoverable mode"),
        ({"mode": "persistent"}, "map_clients", "prices.map.mode: a map_clients namespace needs"),
        ({"mode": "persistent", "min_page_size": 0}, "map", "page sizes need 1 <= min_page_size"),
        (
            {"mode": "persistent", "default_page_size": 2000},
            "map",
            "default_page_size <= max_page_size",
        ),
        (
            {"mode": "persistent", "client_key": "session"},
            "map",
            "prices.map.client_key: invalid enum value 'session'",
        ),
        (
            {"mode": "persistent", "colour": "red"},
            "map",
            "prices.map: object contains unknown field colour",
        ),
        (
            {"mode": "persistent", "live_transition_max_publication_limit": -1},
            "map",
            "live_transition_max_publication_limit: must be >= 0",
        ),
    ],
)
def test_invalid_tables_name_the_option(
    table: dict[str, object], subscription_type: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        map_options_from_table(table, "prices.map", subscription_type)
    assert message in str(raised.value)


def test_page_size_clamps_a_clients_limit() -> None:
    options = MapOptions(mode="persistent").checked("m")
    assert options.page_size(0) == 100
    assert options.page_size(5) == 100
    assert options.page_size(500) == 500
    assert options.page_size(50_000) == 1000
    small = MapOptions(mode="persistent", min_page_size=1, default_page_size=10).checked("m")
    assert small.page_size(2) == 2 and small.page_size(0) == 10


def test_negative_catch_up_timeout_means_none() -> None:
    assert MapOptions(mode="persistent", subscribe_catch_up_timeout=-1).catch_up_timeout is None


@pytest.mark.parametrize(
    ("options", "user", "subscribed", "publish", "remove"),
    [
        ({}, "u1", True, False, False),
        ({"allow_publish_for_client": True}, "u1", False, True, False),
        ({"allow_publish_for_client": True}, "", False, False, False),
        (
            {"allow_publish_for_client": True, "allow_publish_for_anonymous": True},
            "",
            False,
            True,
            False,
        ),
        ({"allow_remove_for_subscriber": True}, "u1", False, False, False),
        ({"allow_remove_for_subscriber": True}, "u1", True, False, True),
    ],
)
def test_client_write_permissions(
    options: dict[str, bool], user: str, subscribed: bool, publish: bool, remove: bool
) -> None:
    map_options = MapOptions(mode="persistent", **options)
    assert map_options.may_publish(user, subscribed=subscribed) is publish
    assert map_options.may_remove(user, subscribed=subscribed) is remove
