"""The Redis engine: one stream, one pub/sub channel and one presence set per channel.

Every node of a deployment points at the same Redis (standalone, Sentinel or
Cluster). What each piece guarantees (:mod:`tidings.brokers.base` states the
contracts):

* **One Lua step per publication.** ``publish`` is a single ``EVALSHA``: the
  script checks the idempotency key, creates the epoch if the channel's meta
  hash is missing, ``HINCRBY``s the top offset, ``XADD``s the publication to the
  channel's stream (exact ``MAXLEN`` trim, expired head trimmed), refreshes the
  TTLs and ``PUBLISH``es (``SPUBLISH`` on a cluster) the encoded publication.
  Redis runs a script alone, so offsets are unique, contiguous and published in
  offset order; one pub/sub connection per Redis server delivers them in that
  order.
* **Epochs.** The epoch lives in the meta hash next to the top offset. Whatever
  loses that hash (restart without persistence, ``FLUSHDB``, ``meta_ttl``
  expiry) makes the next publication or history read start a new epoch at
  offset 0 and drop any stale items, so a client that recovers from the old
  epoch is told ``recovered: false``, never handed a silent gap.
* **Keys** carry the channel as a hash tag, ``<prefix>:{<channel>}:<part>``
  (``%`` and ``}`` in the channel escaped as ``%25`` and ``%7D``), so all of a
  channel's keys and its sharded pub/sub channel live in one cluster slot.
* **Interest.** The broker subscribes in Redis only to channels the Node asked
  for (reference-counted), plus one node-wide control channel. When a pub/sub
  connection comes back after a failure it subscribes everything again and
  then calls the handler's ``handle_resubscribed(channels)``: the channels
  listed may have missed publications.
* **Bounded waits.** Every command runs under ``timeout`` seconds (1 s by
  default); past it, or when Redis cannot be reached, the call raises
  :class:`~tidings.errors.BrokerUnavailable`. Publications are never retried by
  the client (a retry after a lost reply would publish twice).

URL forms: ``redis://`` / ``rediss://`` / ``unix://`` (anything
``redis.asyncio.Redis.from_url`` takes), ``redis+sentinel://[user:pass@]host:port,
host:port/service_name[/db]`` (``rediss+sentinel`` for TLS) and
``redis+cluster://[user:pass@]host:port,host:port`` (``rediss+cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, unquote

import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from tidings.brokers.base import (
    IDEMPOTENCY_WINDOW,
    BrokerEventHandler,
    HistoryOptions,
    new_epoch,
)
from tidings.errors import BrokerUnavailable, ConfigError
from tidings.protocol.messages import ClientInfo, Publication, StreamPosition

__all__ = ["RedisAddress", "RedisBroker", "RedisPresence", "parse_redis_url"]

logger = logging.getLogger("tidings.brokers.redis")

T = TypeVar("T")

DEFAULT_TIMEOUT = 1.0
"""Seconds a command may take before ``BrokerUnavailable``."""

DEFAULT_PING_INTERVAL = 5.0
"""Seconds of pub/sub silence before a PING; no answer within as long again = dead."""

RECONNECT_BACKOFF_MAX = 2.0
"""Ceiling of the pause between pub/sub reconnect attempts (the first is immediate)."""

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoading, MasterNotFound, auth failures
    redis_errors.TimeoutError,
    redis_errors.ClusterError,  # includes ClusterDown, MasterDown
    redis_errors.RedisClusterException,  # includes SlotNotCovered, "cannot be connected"
    redis_errors.ReadOnlyError,  # a failover in progress
    redis_errors.TryAgainError,
    OSError,
    TimeoutError,  # our own asyncio.timeout
)
"""Failures that mean "Redis is not reachable now", as opposed to a bug."""

_RECONNECT_ON: tuple[type[BaseException], ...] = (*_UNAVAILABLE, redis_errors.RedisError)
"""Failures after which a pub/sub connection starts over."""


# --------------------------------------------------------------------------- Lua

_LUA_TIME = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

_LUA_TRIM_EXPIRED = """
-- Stream entries are <offset>-0 with fields d (publication) and x (expiry, ms).
-- Drop the expired head: entries are appended in expiry order.
local function trim_expired(stream, now_ms)
  local batch = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  local expired = false
  while batch[1] do
    local entry = batch[1]
    if tonumber(entry[2][4]) > now_ms then
      if expired then redis.call('XTRIM', stream, 'MINID', entry[1]) end
      return
    end
    expired = true
    batch = redis.call('XRANGE', stream, '(' .. entry[1], '+', 'COUNT', 1)
  end
  if expired then redis.call('DEL', stream) end
end
"""

PUBLISH_LUA = (
    """
-- KEYS: 1 meta hash {e = epoch, s = top offset}, 2 history stream,
--       3 pub/sub channel, 4 idempotency key (optional)
-- ARGV: 1 publication JSON (offset left out), 2 '1' to keep history,
--       3 size, 4 ttl ms, 5 meta ttl ms, 6 epoch to use if the meta is gone,
--       7 idempotency window s, 8 PUBLISH or SPUBLISH
-- Returns {offset, epoch, 1 if a repeat of an idempotency key else 0};
-- epoch '' means no history (offset 0).
local idempotency_key = KEYS[4]
if idempotency_key then
  local seen = redis.call('GET', idempotency_key)
  if seen then
    local sep = string.find(seen, ',', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 1}
  end
end
local offset, epoch = 0, ''
if ARGV[2] == '1' then
"""
    + _LUA_TIME
    + """
  epoch = redis.call('HGET', KEYS[1], 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch)
  end
  offset = redis.call('HINCRBY', KEYS[1], 's', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  local ttl = tonumber(ARGV[4])
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[1], 'x', now_ms + ttl)
  trim_expired(KEYS[2], now_ms)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call(ARGV[8], KEYS[3], 'p' .. offset .. ',' .. epoch .. ',' .. ARGV[1])
if idempotency_key then
  redis.call('SET', idempotency_key, offset .. ',' .. epoch, 'EX', ARGV[7])
end
return {offset, epoch, 0}
"""
)

HISTORY_LUA = (
    """
-- KEYS: 1 meta hash, 2 history stream
-- ARGV: 1 epoch to use if the meta is gone, 2 meta ttl ms (0: leave as is),
--       3 '' (position only), XRANGE or XREVRANGE, 4 and 5 range bounds,
--       6 COUNT (0: all)
-- Returns {top offset, epoch, entries}.
local meta = redis.call('HMGET', KEYS[1], 'e', 's')
local epoch, top = meta[1], tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[1]
  top = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local meta_ttl = tonumber(ARGV[2])
if meta_ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], meta_ttl)
end
if ARGV[3] == '' then return {top, epoch, {}} end
"""
    + _LUA_TIME
    + """
trim_expired(KEYS[2], now_ms)
local entries
if ARGV[6] == '0' then
  entries = redis.call(ARGV[3], KEYS[2], ARGV[4], ARGV[5])
else
  entries = redis.call(ARGV[3], KEYS[2], ARGV[4], ARGV[5], 'COUNT', ARGV[6])
end
return {top, epoch, entries}
"""
)

SEND_LUA = """
-- KEYS: 1 pub/sub channel. ARGV: 1 message, 2 PUBLISH or SPUBLISH.
-- A script so that a cluster client routes the sharded publish by its key.
return redis.call(ARGV[2], KEYS[1], ARGV[1])
"""

_LUA_PRUNE_PRESENCE = """
-- KEYS: 1 client -> ClientInfo JSON, 2 client -> user, 3 zset client -> expiry ms
local function prune(now_ms)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
  for i = 1, #gone, 1000 do
    local last = math.min(i + 999, #gone)
    redis.call('HDEL', KEYS[1], unpack(gone, i, last))
    redis.call('HDEL', KEYS[2], unpack(gone, i, last))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms) end
end
"""

PRESENCE_ADD_LUA = (
    _LUA_PRUNE_PRESENCE
    + _LUA_TIME
    + """
-- ARGV: 1 client id, 2 ClientInfo JSON, 3 user, 4 ttl ms
local ttl = tonumber(ARGV[4])
prune(now_ms)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now_ms + ttl, ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return 1
"""
)

PRESENCE_REMOVE_LUA = """
-- ARGV: 1 client id
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

PRESENCE_GET_LUA = (
    _LUA_PRUNE_PRESENCE
    + _LUA_TIME
    + """
prune(now_ms)
return redis.call('HGETALL', KEYS[1])
"""
)

PRESENCE_STATS_LUA = (
    _LUA_PRUNE_PRESENCE
    + _LUA_TIME
    + """
prune(now_ms)
local users, distinct = {}, 0
for _, user in ipairs(redis.call('HVALS', KEYS[2])) do
  if not users[user] then
    users[user] = true
    distinct = distinct + 1
  end
end
return {redis.call('HLEN', KEYS[1]), distinct}
"""
)


class _Script:
    """A Lua script run by ``EVALSHA``, falling back to ``EVAL`` once per server.

    ``EVAL`` also caches the script, and unlike ``SCRIPT LOAD`` it is routed by
    its keys, so the fallback works unchanged on a cluster.
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: Redis | RedisCluster, keys: Sequence[str], args: Sequence[str | bytes]
    ) -> Any:
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await client.execute_command("EVAL", self.source, len(keys), *keys, *args)


_publish_script = _Script(_LUA_TRIM_EXPIRED + PUBLISH_LUA)
_history_script = _Script(_LUA_TRIM_EXPIRED + HISTORY_LUA)
_send_script = _Script(SEND_LUA)
_presence_add_script = _Script(PRESENCE_ADD_LUA)
_presence_remove_script = _Script(PRESENCE_REMOVE_LUA)
_presence_get_script = _Script(PRESENCE_GET_LUA)
_presence_stats_script = _Script(PRESENCE_STATS_LUA)


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is, parsed from a URL by :func:`parse_redis_url`."""

    kind: Literal["standalone", "sentinel", "cluster"]
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: tuple[tuple[str, str], ...] = ()


_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_TLS_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})


def parse_redis_url(url: str) -> RedisAddress:
    """Read one of the URL forms in the module docstring.

    Raises :class:`ConfigError` naming what was expected and what came.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(f"redis url: expected scheme://..., got {url!r}")
    if scheme in ("redis", "rediss", "unix"):
        return RedisAddress("standalone", url, tls=scheme == "rediss")
    base, _, variant = scheme.partition("+")
    if base not in ("redis", "rediss") or variant not in ("sentinel", "cluster"):
        raise ConfigError(
            "redis url: expected redis://, rediss://, unix://, redis+sentinel:// or "
            f"redis+cluster:// (rediss+ for TLS), got {scheme}://"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    default_port = 26379 if variant == "sentinel" else 6379
    hosts = tuple(_parse_host(part, default_port) for part in hostlist.split(",") if part)
    if not hosts:
        raise ConfigError(f"redis url: expected at least one host:port in {scheme}://, got none")
    options = tuple(parse_qsl(query, keep_blank_values=True))
    allowed = _TLS_OPTIONS | (_SENTINEL_OPTIONS if variant == "sentinel" else frozenset())
    for name, _ in options:
        if name not in allowed:
            raise ConfigError(
                f"redis url: unknown option {name!r} for {scheme}://, expected one of "
                f"{', '.join(sorted(allowed))}"
            )
    parts = [unquote(p) for p in path.split("/") if p]
    service, db = "", 0
    if variant == "sentinel":
        if not parts or len(parts) > 2:
            raise ConfigError(
                f"redis url: expected {scheme}://host:port,.../service_name[/db], got path {path!r}"
            )
        service = parts[0]
        if len(parts) == 2:
            db = _parse_int(parts[1], "database number")
    elif parts and parts != ["0"]:
        raise ConfigError(f"redis url: a cluster has only database 0, got path {path!r}")
    return RedisAddress(
        variant,  # type: ignore[arg-type]  # checked above: "sentinel" or "cluster"
        url,
        hosts=hosts,
        service=service,
        db=db,
        username=username,
        password=password,
        tls=base == "rediss",
        options=options,
    )


def _parse_host(part: str, default_port: int) -> tuple[str, int]:
    if part.startswith("["):  # [ipv6]:port
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, colon, port = part.rpartition(":")
        if not colon:
            host, port = part, ""
    if not host:
        raise ConfigError(f"redis url: expected host:port, got {part!r}")
    return host, _parse_int(port, "port") if port else default_port


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"redis url: expected a {what}, got {text!r}") from None


_CLIENT_NAME_UNSAFE = re.compile(r"[^!-~]")


class _Connector:
    """Makes command clients and pub/sub connections for one :class:`RedisAddress`."""

    def __init__(self, address: RedisAddress, timeout: float, client_name: str) -> None:
        self.address = address
        self.timeout = timeout
        self.client_name = _CLIENT_NAME_UNSAFE.sub("_", client_name)
        self._sentinel: Sentinel | None = None
        self._pubsub_pool: ConnectionPool | None = None

    def _common(self) -> dict[str, Any]:
        address = self.address
        options: dict[str, Any] = {
            "protocol": 2,
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
        }
        if address.kind != "standalone":
            options["username"] = address.username
            options["password"] = address.password
            for name, value in address.options:
                if name in _TLS_OPTIONS:
                    options[name] = value
        return options

    def command_client(self) -> Redis | RedisCluster:
        """The client for commands: bounded socket timeouts, no client-side retries."""
        address = self.address
        options = self._common()
        options["socket_timeout"] = self.timeout
        if address.kind == "cluster":
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in address.hosts],
                ssl=address.tls,
                **options,
            )
        options["retry"] = Retry(NoBackoff(), 0)
        client: Redis
        if address.kind == "sentinel":
            client = self._sentinel_client().master_for(
                address.service, redis_class=Redis, **options
            )
        else:
            client = Redis.from_url(address.url, **options)
        return client

    def _sentinel_client(self) -> Sentinel:
        if self._sentinel is None:
            address = self.address
            extra = dict(address.options)
            sentinel_options = {
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
                "username": extra.get("sentinel_username"),
                "password": extra.get("sentinel_password"),
            }
            common = self._common()
            if address.tls:
                common["ssl"] = True
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(address.hosts), sentinel_kwargs=sentinel_options, db=address.db, **common
            )
        return self._sentinel

    def pubsub_connection(self, host: str = "", port: int = 0) -> Connection:
        """A fresh, unconnected pub/sub connection (reads block; liveness is pinged)."""
        address = self.address
        options = self._common()
        options["socket_timeout"] = None
        options["client_name"] = self.client_name
        if address.kind == "cluster":
            connection_class = SSLConnection if address.tls else Connection
            return connection_class(host=host, port=port, **options)
        if self._pubsub_pool is None:
            if address.kind == "sentinel":
                client = self._sentinel_client().master_for(
                    address.service, redis_class=Redis, **options
                )
                self._pubsub_pool = client.connection_pool
            else:
                self._pubsub_pool = ConnectionPool.from_url(address.url, **options)
        connection: Connection = self._pubsub_pool.make_connection()
        return connection

    async def close(self) -> None:
        """Close what the connector itself holds: sentinel clients, the pub/sub pool."""
        with contextlib.suppress(*_UNAVAILABLE):
            if self._pubsub_pool is not None:
                await self._pubsub_pool.disconnect()
            if self._sentinel is not None:
                for client in self._sentinel.sentinels:
                    await _close_client(client)


# --------------------------------------------------------------------------- keys


class _Keys:
    """The key layout: ``<prefix>:{<channel>}:<part>``, one hash slot per channel."""

    __slots__ = ("control", "prefix")

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"redis prefix: expected a non-empty name without braces, got {prefix!r}"
            )
        self.prefix = prefix
        self.control = f"{prefix}:control"

    def channel(self, channel: str) -> str:
        """The common start of a channel's keys; the hash tag is the whole channel."""
        if "%" in channel or "}" in channel:
            channel = channel.replace("%", "%25").replace("}", "%7D")
        return f"{self.prefix}:{{{channel}}}"

    def pubsub(self, channel: str) -> str:
        return self.channel(channel) + ":pub"


async def _bounded(what: str, seconds: float, call: Awaitable[T]) -> T:
    """Await ``call`` for at most ``seconds``; unreachable Redis -> BrokerUnavailable."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except _UNAVAILABLE as exc:
        raise BrokerUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc


async def _close_client(client: Redis | RedisCluster) -> None:
    close = getattr(client, "aclose", None) or client.close
    with contextlib.suppress(*_UNAVAILABLE):
        await close()


def _ms(seconds: float) -> str:
    return str(max(0, round(seconds * 1000)))


_encode = msgspec.json.Encoder().encode
_decode_publication = msgspec.json.Decoder(Publication).decode
_decode_client_info = msgspec.json.Decoder(ClientInfo).decode


# --------------------------------------------------------------------------- pub/sub


class _Batch:
    """Names awaiting their subscribe confirmation before the Node is told."""

    __slots__ = ("channels", "pending")

    def __init__(self, pending: set[bytes], channels: list[str]) -> None:
        self.pending = pending
        self.channels = channels


class _Subscriber:
    """One pub/sub connection to one Redis server and the names it must hold.

    The reader task owns the connection: it connects, subscribes every wanted
    name, reads messages in order and, when the connection fails, starts over.
    ``names`` is the wanted set; a name counts as subscribed once Redis has
    acknowledged every SUBSCRIBE/UNSUBSCRIBE sent for it on this connection.
    """

    def __init__(
        self, broker: RedisBroker, endpoint: str, make_connection: Callable[[], Connection]
    ) -> None:
        self._broker = broker
        self.endpoint = endpoint
        self._make_connection = make_connection
        self._sharded = broker._sharded
        self.names: dict[bytes, str] = {}
        self._confirmed: set[bytes] = set()
        self._inflight: dict[bytes, int] = {}
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._batches: list[_Batch] = []
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected_before = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"tidings-redis-pubsub-{self.endpoint}"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("redis broker closed"))
        self._waiters.clear()

    # ----------------------------------------------------------- wanted names

    async def add(self, name: bytes, channel: str, seconds: float) -> None:
        """Want ``name`` and wait until Redis confirms it (BrokerUnavailable past ``seconds``)."""
        self.names[name] = channel
        if name in self._confirmed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append(waiter)
        await self._send(b"SUBSCRIBE", [name])
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            raise BrokerUnavailable(
                f"redis subscribe to {channel or 'control'!r} not confirmed within {seconds} s"
            ) from None
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[name]

    def adopt(self, names: dict[bytes, str]) -> None:
        """Take over names from another server (slot moved); the Node hears when they are in."""
        self.names.update(names)
        self._batches.append(_Batch(set(names), [c for c in names.values() if c]))
        for name in names:
            self._confirmed.discard(name)
        if self._conn is not None:
            self._broker._background(self._send(b"SUBSCRIBE", list(names)))

    async def remove(self, name: bytes) -> None:
        """Stop wanting ``name``. Never raises: a dead connection forgets it anyway."""
        if self.names.pop(name, None) is None:
            return
        self._confirmed.discard(name)
        for batch in self._batches:
            batch.pending.discard(name)
        self._fire_finished_batches()
        await self._send(b"UNSUBSCRIBE", [name])

    async def _send(self, command: bytes, names: Sequence[bytes]) -> None:
        conn = self._conn
        if conn is None or not names or not conn.is_connected:
            return  # the reader subscribes every wanted name when it (re)connects
        if self._sharded:  # one slot per SSUBSCRIBE: send one command per name
            packed = conn.pack_commands([(b"S" + command, name) for name in names])
        else:
            packed = conn.pack_commands([(command, *names)])
        for name in names:
            self._inflight[name] = self._inflight.get(name, 0) + 1
        try:
            await conn.send_packed_command(packed, check_health=False)
        except _UNAVAILABLE as exc:
            logger.debug("redis pub/sub %s: send failed: %r", self.endpoint, exc)

    # ----------------------------------------------------------- reader

    async def _run(self) -> None:
        failures = 0
        while True:
            conn = self._make_connection()
            try:
                async with asyncio.timeout(self._broker._timeout):
                    await conn.connect()  # type: ignore[no-untyped-call]
                self._conn = conn
                self._inflight.clear()
                self._confirmed.clear()
                names = list(self.names)
                if self._connected_before:
                    self._batches = [_Batch(set(names), [c for c in self.names.values() if c])]
                    logger.info(
                        "redis pub/sub %s: reconnected, resubscribing %d channels",
                        self.endpoint,
                        len(names),
                    )
                self._connected_before = True
                failures = 0
                await self._send(b"SUBSCRIBE", names)
                self._fire_finished_batches()
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except _RECONNECT_ON as exc:
                failures += 1
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "redis pub/sub %s: connection lost or refused (%s: %s)",
                    self.endpoint,
                    type(exc).__name__,
                    exc,
                )
            finally:
                self._conn = None
                self._confirmed.clear()
                await conn.disconnect()
            if failures > 1:
                await self._broker._reroute(self)
            if failures:
                pause = min(RECONNECT_BACKOFF_MAX, 0.05 * 2 ** (failures - 1))
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))

    async def _read(self, conn: Connection) -> None:
        interval = self._broker._ping_interval
        awaiting_pong = False
        while True:
            try:
                response = await conn.read_response(timeout=interval, disconnect_on_error=False)
            except redis_errors.ResponseError as exc:
                # A MOVED/CROSSSLOT answer to an SSUBSCRIBE: the topology changed.
                logger.warning("redis pub/sub %s: %s", self.endpoint, exc)
                self._broker._background(self._broker._reroute(self))
                continue
            if response is None:  # silence for one interval
                if awaiting_pong:
                    raise redis_errors.TimeoutError(f"no answer to PING within {interval} s")
                awaiting_pong = True
                await conn.send_packed_command(conn.pack_command(b"PING"), check_health=False)
                continue
            awaiting_pong = False
            self._on_response(response)

    def _on_response(self, response: Any) -> None:
        kind = response[0]
        if kind == b"message" or kind == b"smessage":
            name = response[1]
            channel = self.names.get(name)
            if channel is not None:
                self._broker._dispatch(name, channel, response[2])
        elif kind == b"subscribe" or kind == b"ssubscribe":
            self._acknowledged(response[1])
        elif kind == b"unsubscribe" or kind == b"sunsubscribe":
            name = response[1]
            if self._inflight.get(name, 0) == 0 and name in self.names:
                # Redis dropped a sharded subscription whose slot moved away.
                self._confirmed.discard(name)
                self._broker._background(self._broker._reroute(self))
            else:
                self._acknowledged(name)

    def _acknowledged(self, name: bytes) -> None:
        left = self._inflight.get(name, 0) - 1
        if left > 0:
            self._inflight[name] = left
            return
        self._inflight.pop(name, None)
        if name not in self.names:
            return
        self._confirmed.add(name)
        for waiter in self._waiters.pop(name, ()):
            if not waiter.done():
                waiter.set_result(None)
        for batch in self._batches:
            batch.pending.discard(name)
        self._fire_finished_batches()

    def _fire_finished_batches(self) -> None:
        if not self._batches:
            return
        done = [batch for batch in self._batches if not batch.pending]
        if not done:
            return
        self._batches = [batch for batch in self._batches if batch.pending]
        for batch in done:
            channels = [channel for channel in batch.channels if channel in self._broker._interest]
            self._broker._resubscribed(channels)


# --------------------------------------------------------------------------- broker


class RedisBroker:
    """Broker and history reader over Redis (see :mod:`tidings.brokers.base`).

    ``timeout`` bounds every call (publish, history, subscribe confirmation);
    ``ping_interval`` is how long a pub/sub connection may stay silent before it
    is pinged (no answer within another interval: reconnect). ``name`` labels
    this node's pub/sub connections in ``CLIENT LIST``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        idempotency_window: float = IDEMPOTENCY_WINDOW,
        name: str = "",
    ) -> None:
        self._address = parse_redis_url(url)
        self._keys = _Keys(prefix)
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._idempotency_window = str(max(1, round(idempotency_window)))
        self._connector = _Connector(
            self._address, timeout, f"{prefix}.{name}.pubsub" if name else f"{prefix}.pubsub"
        )
        self._cluster = self._address.kind == "cluster"
        self._sharded = self._cluster
        self._publish_command = "SPUBLISH" if self._sharded else "PUBLISH"
        self._client = self._connector.command_client()
        self._handler: BrokerEventHandler | None = None
        self._interest: dict[str, int] = {}
        self._subscribers: dict[str, _Subscriber] = {}
        self._routes: dict[bytes, _Subscriber] = {}
        self._control = self._keys.control.encode()
        self._started = False
        self._rerouting: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def cluster(self) -> bool:
        """Whether this broker talks to a Redis Cluster (and uses sharded pub/sub)."""
        return self._cluster

    def set_event_handler(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        """Subscribe to the control channel; BrokerUnavailable if Redis does not answer in time."""
        if self._started:
            return
        self._started = True
        self._rerouting = asyncio.Lock()
        try:
            if self._cluster:
                await _bounded(
                    "cluster discovery", self._timeout, self._cluster_client().initialize()
                )
            await self._subscriber_for(self._control).add(self._control, "", self._timeout)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        subscribers = list(self._subscribers.values())
        self._subscribers.clear()
        self._routes.clear()
        self._interest.clear()
        self._started = False
        for task in list(self._tasks):
            task.cancel()
        for subscriber in subscribers:
            await subscriber.close()
        await _close_client(self._client)
        await self._connector.close()

    # ----------------------------------------------------------- interest

    async def subscribe(self, channel: str) -> None:
        """Count one more local interest; on the first, subscribe in Redis and wait for it."""
        if not self._started:
            raise RuntimeError("RedisBroker.subscribe before start()")
        count = self._interest.get(channel, 0)
        self._interest[channel] = count + 1
        name = self._keys.pubsub(channel).encode()
        subscriber = self._routes.get(name) or self._subscriber_for(name)
        self._routes[name] = subscriber
        try:
            await subscriber.add(name, channel, self._timeout)
        except BrokerUnavailable:
            left = self._interest.get(channel, 0) - 1
            if left > 0:
                self._interest[channel] = left
            else:
                await self._drop(channel, name)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Count one less local interest; after the last, unsubscribe in Redis (never raises)."""
        count = self._interest.get(channel, 0)
        if count > 1:
            self._interest[channel] = count - 1
        elif count == 1:
            await self._drop(channel, self._keys.pubsub(channel).encode())

    async def _drop(self, channel: str, name: bytes) -> None:
        self._interest.pop(channel, None)
        subscriber = self._routes.pop(name, None)
        if subscriber is not None:
            await subscriber.remove(name)

    def _cluster_client(self) -> RedisCluster:
        assert isinstance(self._client, RedisCluster)
        return self._client

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on its own, keeping a reference until it is done."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _subscriber_for(self, name: bytes) -> _Subscriber:
        """The pub/sub connection that can hear ``name`` (its slot's master on a cluster)."""
        if self._cluster:
            node = self._cluster_client().get_node_from_key(name.decode())
            if node is None:
                raise BrokerUnavailable("redis cluster: no node serves this channel's slot")
            host, port = str(node.host), int(node.port)
            endpoint = f"{host}:{port}"
        else:
            host, port, endpoint = "", 0, "redis"
        subscriber = self._subscribers.get(endpoint)
        if subscriber is None:
            connector = self._connector
            subscriber = _Subscriber(
                self, endpoint, lambda: connector.pubsub_connection(host, port)
            )
            self._subscribers[endpoint] = subscriber
            subscriber.start()
        return subscriber

    async def _reroute(self, subscriber: _Subscriber) -> None:
        """Re-read the cluster's slots and move names whose slot now lives elsewhere."""
        if not self._cluster or self._rerouting is None or not self._started:
            return
        async with self._rerouting:
            client = self._cluster_client()
            try:
                await _bounded(
                    "cluster discovery", self._timeout, client.nodes_manager.initialize()
                )
            except BrokerUnavailable as exc:
                logger.warning("redis cluster: %s", exc)
                return
            moves: dict[_Subscriber, dict[bytes, str]] = {}
            for name, channel in list(subscriber.names.items()):
                try:
                    target = self._subscriber_for(name)
                except BrokerUnavailable:
                    continue
                if target is not subscriber:
                    del subscriber.names[name]
                    moves.setdefault(target, {})[name] = channel
                    if name in self._routes:
                        self._routes[name] = target
            for target, names in moves.items():
                logger.info("redis cluster: %d channels moved to %s", len(names), target.endpoint)
                target.adopt(names)

    # ----------------------------------------------------------- events

    def _dispatch(self, name: bytes, channel: str, data: bytes) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            if name == self._control:
                handler.handle_control(data)
                return
            kind = data[:1]
            if kind == b"p":
                head, epoch, body = data[1:].split(b",", 2)
                publication = _decode_publication(body)
                offset = int(head)
                position = None
                if epoch:
                    publication.offset = offset
                    position = StreamPosition(offset, epoch.decode())
                handler.handle_publication(channel, publication, position)
            elif kind == b"j":
                handler.handle_join(channel, _decode_client_info(data[1:]))
            elif kind == b"l":
                handler.handle_leave(channel, _decode_client_info(data[1:]))
            else:
                logger.warning("redis pub/sub: unknown message kind %r in %r", kind, channel)
        except (ValueError, msgspec.DecodeError) as exc:
            logger.warning("redis pub/sub: undecodable message in %r: %s", channel, exc)
        except Exception:
            logger.exception("redis pub/sub: event handler failed for %r", channel)

    def _resubscribed(self, channels: Sequence[str]) -> None:
        handler = self._handler
        if handler is None or not channels:
            return
        try:
            handler.handle_resubscribed(channels)
        except Exception:
            logger.exception("redis pub/sub: handle_resubscribed failed")

    # ----------------------------------------------------------- publishing

    async def publish(
        self,
        channel: str,
        publication: Publication,
        *,
        history: HistoryOptions | None = None,
        idempotency_key: str = "",
    ) -> StreamPosition | None:
        base = self._keys.channel(channel)
        keys = [base + ":meta", base + ":history", base + ":pub"]
        if idempotency_key:
            keys.append(f"{base}:idempotency:{idempotency_key}")
        if publication.offset:
            publication = msgspec.structs.replace(publication, offset=0)
        payload = _encode(publication)
        if history is None:
            args: list[str | bytes] = [payload, "0", "0", "0", "0", ""]
        else:
            args = [
                payload,
                "1",
                str(max(0, history.size)),
                _ms(history.ttl),
                _ms(history.meta_ttl),
                new_epoch(),
            ]
        args += [self._idempotency_window, self._publish_command]
        offset, epoch, _repeated = await _bounded(
            "publish", self._timeout, _publish_script(self._client, keys, args)
        )
        if not epoch:
            return None
        return StreamPosition(offset, epoch.decode())

    async def _send(self, what: str, name: str, message: bytes) -> None:
        await _bounded(
            what,
            self._timeout,
            _send_script(self._client, [name], [message, self._publish_command]),
        )

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._send("join", self._keys.pubsub(channel), b"j" + _encode(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._send("leave", self._keys.pubsub(channel), b"l" + _encode(info))

    async def publish_control(self, message: bytes) -> None:
        await self._send("control", self._keys.control, message)

    # ----------------------------------------------------------- history

    async def history(
        self,
        channel: str,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
        meta_ttl: float | None = None,
    ) -> tuple[list[Publication], StreamPosition]:
        base = self._keys.channel(channel)
        command, start, end = "", "", ""
        if since is None:
            if limit != 0:
                command, start, end = ("XREVRANGE", "+", "-") if reverse else ("XRANGE", "-", "+")
        elif reverse:
            if since.offset > 1:
                command, start, end = "XREVRANGE", str(since.offset - 1), "-"
        else:
            command, start, end = "XRANGE", str(since.offset + 1), "+"
        args = [
            new_epoch(),
            _ms(meta_ttl) if meta_ttl is not None else "0",
            command,
            start,
            end,
            str(limit) if limit > 0 else "0",
        ]
        top, epoch, entries = await _bounded(
            "history",
            self._timeout,
            _history_script(self._client, [base + ":meta", base + ":history"], args),
        )
        publications = []
        for entry_id, fields in entries:
            publication = _decode_publication(fields[1])
            publication.offset = int(entry_id.partition(b"-")[0])
            publications.append(publication)
        return publications, StreamPosition(top, epoch.decode())

    async def remove_history(self, channel: str) -> None:
        key = self._keys.channel(channel) + ":history"
        await _bounded("remove history", self._timeout, self._client.execute_command("DEL", key))


# --------------------------------------------------------------------------- presence


class RedisPresence:
    """Presence over Redis: per channel a hash of ClientInfo, a hash of users and a
    sorted set of expiry times, pruned by every script that touches them.

    Expiry uses the Redis server's clock (``TIME``), so nodes need not agree on time.
    """

    def __init__(
        self, url: str, *, prefix: str = "tidings", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._keys = _Keys(prefix)
        self._timeout = timeout
        self._connector = _Connector(parse_redis_url(url), timeout, f"{prefix}.presence")
        self._client = self._connector.command_client()

    def _presence_keys(self, channel: str) -> list[str]:
        base = self._keys.channel(channel)
        return [base + ":presence", base + ":presence_users", base + ":presence_expiry"]

    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None:
        args: list[str | bytes] = [client_id, _encode(info), info.user, _ms(ttl)]
        await _bounded(
            "add presence",
            self._timeout,
            _presence_add_script(self._client, self._presence_keys(channel), args),
        )

    async def add_presence_many(
        self, entries: Sequence[tuple[str, str, ClientInfo]], ttl: float
    ) -> None:
        """Add or refresh many ``(channel, client id, info)`` entries in one round trip.

        The same script as :meth:`add_presence`, once per entry, sent as one
        pipeline (on a cluster redis-py splits it by master: one round trip
        each). The Node's periodic refresh uses it, so N entries cost one round
        trip instead of N. Entries whose script was not cached yet are sent
        again with ``EVAL``; any other failure raises.
        """
        if not entries:
            return
        ttl_ms = _ms(ttl)
        script = _presence_add_script

        commands: list[list[str | bytes]] = [
            [*self._presence_keys(channel), client_id, _encode(info), info.user, ttl_ms]
            for channel, client_id, info in entries
        ]

        async def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command("EVALSHA", script.sha, 3, *command)
            results = await pipe.execute(raise_on_error=False)
            retry = [
                commands[i]
                for i, result in enumerate(results)
                if isinstance(result, redis_errors.NoScriptError)
            ]
            if retry:
                pipe = self._client.pipeline(transaction=False)
                for command in retry:
                    pipe.execute_command("EVAL", script.source, 3, *command)
                results = await pipe.execute(raise_on_error=False)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

        await _bounded("refresh presence", self._timeout, run())

    async def remove_presence(self, channel: str, client_id: str) -> None:
        await _bounded(
            "remove presence",
            self._timeout,
            _presence_remove_script(self._client, self._presence_keys(channel), [client_id]),
        )

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        flat = await _bounded(
            "presence",
            self._timeout,
            _presence_get_script(self._client, self._presence_keys(channel), []),
        )
        return {flat[i].decode(): _decode_client_info(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        clients, users = await _bounded(
            "presence stats",
            self._timeout,
            _presence_stats_script(self._client, self._presence_keys(channel), []),
        )
        return int(clients), int(users)

    async def close(self) -> None:
        await _close_client(self._client)
        await self._connector.close()
