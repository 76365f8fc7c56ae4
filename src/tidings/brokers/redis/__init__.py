"""The Redis engine: one stream, one pub/sub channel and one presence set per channel.

Every node of a deployment points at the same Redis (standalone, Sentinel or
Cluster). :mod:`tidings.brokers.base` states the contracts; the pieces:

* :mod:`.address`: the URL forms (``redis://``, ``rediss://``, ``unix://``,
  ``redis+sentinel://``, ``redis+cluster://``) -> :class:`RedisAddress`.
* :mod:`.connection`: command clients and pub/sub connections for an address,
  and the bound every call runs under (past it: ``BrokerUnavailable``).
* :mod:`.keys`: the key layout, ``<prefix>:{<channel>}:<part>``, one cluster
  slot per channel.
* :mod:`.scripts`: the Lua scripts (``lua/*.lua``), read once, run by ``EVALSHA``.
* :mod:`.pubsub`: one pub/sub link per Redis server, read in order.
* :mod:`.broker`: :class:`RedisBroker`, publications and streams.
* :mod:`.presence`: :class:`RedisPresence`.
* :mod:`.map`: :class:`RedisMapBroker`, map channels (state, stream, key TTLs), with
  :mod:`.interest` for its pub/sub subscriptions.

It needs the ``redis`` extra (redis-py with hiredis).
"""

from tidings.brokers.redis.address import RedisAddress, parse_redis_url
from tidings.brokers.redis.broker import RedisBroker
from tidings.brokers.redis.connection import DEFAULT_TIMEOUT, RoundTrips
from tidings.brokers.redis.map import RedisMapBroker
from tidings.brokers.redis.presence import RedisPresence
from tidings.brokers.redis.pubsub import DEFAULT_PING_INTERVAL, RECONNECT_BACKOFF_MAX

__all__ = [
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_TIMEOUT",
    "RECONNECT_BACKOFF_MAX",
    "RedisAddress",
    "RedisBroker",
    "RedisMapBroker",
    "RedisPresence",
    "RoundTrips",
    "parse_redis_url",
]
