"""The URL forms RedisBroker and RedisPresence accept (no server needed)."""

from __future__ import annotations

import pytest

from tidings.brokers.redis import RedisAddress, RedisBroker, parse_redis_url
from tidings.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/15", RedisAddress("standalone", "redis://127.0.0.1:6379/15")),
        ("rediss://h:6380", RedisAddress("standalone", "rediss://h:6380", tls=True)),
        ("unix:///run/redis.sock", RedisAddress("standalone", "unix:///run/redis.sock")),
        (
            "redis+cluster://a:7000,b:7001",
            RedisAddress(
                "cluster", "redis+cluster://a:7000,b:7001", hosts=(("a", 7000), ("b", 7001))
            ),
        ),
        (
            "rediss+cluster://user:p%40ss@[::1]:7000,h?ssl_cert_reqs=none",
            RedisAddress(
                "cluster",
                "rediss+cluster://user:p%40ss@[::1]:7000,h?ssl_cert_reqs=none",
                hosts=(("::1", 7000), ("h", 6379)),
                username="user",
                password="p@ss",
                tls=True,
                options=(("ssl_cert_reqs", "none"),),
            ),
        ),
        (
            "redis+sentinel://:secret@s1:26379,s2/mymaster/2?sentinel_password=x",
            RedisAddress(
                "sentinel",
                "redis+sentinel://:secret@s1:26379,s2/mymaster/2?sentinel_password=x",
                hosts=(("s1", 26379), ("s2", 26379)),
                service="mymaster",
                db=2,
                password="secret",
                options=(("sentinel_password", "x"),),
            ),
        ),
    ],
)
def test_url_forms(url: str, expected: RedisAddress) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("127.0.0.1:6379", "expected scheme://"),
        ("http://h", "expected redis://"),
        ("redis+cluster://", "at least one host"),
        ("redis+cluster://h:x", "expected a port"),
        ("redis+cluster://h/3", "only database 0"),
        ("redis+cluster://h?cluster=true", "unknown option 'cluster'"),
        ("redis+sentinel://h", "service_name"),
        ("redis+sentinel://h/m/x", "expected a database number"),
    ],
)
def test_bad_urls_say_what_was_expected(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_redis_url(url)


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b"])
def test_prefix_must_not_carry_a_hash_tag(prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        RedisBroker("redis://127.0.0.1:1", prefix=prefix)
