"""Where Redis is: the URL forms the engine accepts, parsed into a :class:`RedisAddress`.

``redis://`` / ``rediss://`` / ``unix://`` (anything
``redis.asyncio.Redis.from_url`` takes), ``redis+sentinel://[user:pass@]host:port,
host:port/service_name[/db]`` (``rediss+sentinel`` for TLS) and
``redis+cluster://[user:pass@]host:port,host:port`` (``rediss+cluster``).
Query options: the TLS ones (``ssl_cert_reqs``, ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``) and, for Sentinel, ``sentinel_username``
and ``sentinel_password``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote

from tidings.errors import ConfigError

__all__ = ["TLS_OPTIONS", "RedisAddress", "parse_redis_url"]


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
TLS_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})


def parse_redis_url(url: str) -> RedisAddress:
    """Read one of the URL forms in this module's docstring.

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
    allowed = TLS_OPTIONS | (_SENTINEL_OPTIONS if variant == "sentinel" else frozenset())
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
