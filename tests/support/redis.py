"""Redis for the tests: the shared server, and private ``redis-server`` processes.

* The shared server is ``TIDINGS_TEST_REDIS_URL`` (default db 15 of the local
  Redis). Other engineers use it too: a test takes a key prefix of its own
  (:func:`unique_prefix`), deletes its keys afterwards (:func:`delete_keys`)
  and never flushes.
* A private server (:class:`RedisServer`) runs from the ``redis-server`` binary
  on a free loopback port with a directory of its own. A test may pause it,
  kill it and start it again on the same port and directory, and flush it.
  :func:`redis_servers` starts them and tears them all down; :func:`cluster`
  and :func:`sentinel` build a 3-master cluster and a sentinel from them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.polling import eventually_blocking

REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
"""The shared Redis."""

START_TIMEOUT = 20.0
"""Seconds a private server (or the cluster) may take to answer."""

CLUSTER_OPTIONS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")


# --------------------------------------------------------------------------- shared server


def redis_unreachable(url: str = REDIS_URL) -> str:
    """Why ``url`` cannot be used, or "" when Redis answers there."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"no Redis at TIDINGS_TEST_REDIS_URL={url} ({exc})"
    finally:
        client.close()
    return ""


def unique_prefix(stem: str = "tscale") -> str:
    """A key prefix no other test run uses."""
    return f"{stem}{uuid.uuid4().hex[:10]}"


async def delete_keys(url: str, prefix: str) -> None:
    """Delete every key under ``prefix:`` on one server (never a FLUSH: it may be shared)."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:  # one by one: on a cluster's master they live in different slots
                pipe.delete(key)
            await pipe.execute()
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- private servers


def skip_without_redis_server() -> None:
    """Skip the test, naming what is missing, when private servers cannot run here."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"needs a local redis-server: {' and '.join(missing)} not on PATH")


def free_port(*, bus: bool = False) -> int:
    """A loopback port nobody listens on (and, with ``bus``, port + 10000 free too)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port found")


def cli(port: int, *args: str, timeout: float = 5.0) -> str:
    """``redis-cli -p port args``: its output ("" when it cannot connect)."""
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.stdout


class RedisServer:
    """A ``redis-server`` of the test's own on a fixed loopback port and directory.

    ``start`` after ``kill`` brings it back on the same port with the same
    directory and options, so what it persisted (an append-only file) is loaded
    again. ``config`` is a configuration file passed first (a sentinel's).
    """

    def __init__(self, directory: str, *options: str, bus: bool = False, config: str = "") -> None:
        self.directory = directory
        self.options = options
        self.config = config
        self.port = free_port(bus=bus)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Run the server and wait until it answers PING."""
        log = open(os.path.join(self.directory, f"redis-{self.port}.log"), "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                "redis-server",
                *([self.config] if self.config else []),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--dir", self.directory,
                "--daemonize", "no",
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        try:
            eventually_blocking(
                lambda: cli(self.port, "PING").strip() == "PONG",
                f"redis-server on port {self.port}",
                START_TIMEOUT,
            )
        except BaseException:
            self.stop()
            raise

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no save."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), or ``kill -9`` if it does not end within 5 s."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


StartRedis = Callable[..., RedisServer]
"""``start(*options, bus=False, config="")``: a started private server."""


@contextlib.contextmanager
def redis_servers() -> Iterator[StartRedis]:
    """Start private servers, each in a directory of its own; on exit all are stopped
    and their directories removed."""
    started: list[RedisServer] = []
    root = tempfile.mkdtemp(prefix="tidings-redis-")

    def start(*options: str, bus: bool = False, config: str = "") -> RedisServer:
        directory = tempfile.mkdtemp(dir=root)
        server = RedisServer(directory, *options, bus=bus, config=config)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Cluster:
    """A private Redis Cluster: its masters, each a :class:`RedisServer`."""

    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]


@contextlib.contextmanager
def cluster(masters: int = 3) -> Iterator[Cluster]:
    """A private cluster of ``masters`` masters and no replicas, its slots all assigned."""
    with redis_servers() as start:
        result = Cluster([start(*CLUSTER_OPTIONS, bus=True) for _ in range(masters)])
        created = subprocess.run(
            [
                "redis-cli", "--cluster", "create",
                *(f"127.0.0.1:{port}" for port in result.ports),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed: {created.stdout}{created.stderr}"
            )
        for port in result.ports:
            eventually_blocking(
                lambda port=port: "cluster_state:ok" in cli(port, "CLUSTER", "INFO"),
                f"cluster_state:ok on port {port}",
                START_TIMEOUT,
            )
        yield result


@contextlib.contextmanager
def sentinel(master: RedisServer, service: str) -> Iterator[int]:
    """A Redis Sentinel watching ``master`` as ``service``; yields its port."""
    with redis_servers() as start:
        directory = tempfile.mkdtemp(prefix="tidings-sentinel-")
        try:
            config = os.path.join(directory, "sentinel.conf")
            with open(config, "w") as file:
                file.write(f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n")
            port = start("--sentinel", config=config).port

            def knows_master() -> bool:
                return str(master.port) in cli(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)

            eventually_blocking(
                knows_master, f"sentinel on port {port} to know {service}", START_TIMEOUT
            )
            yield port
        finally:
            shutil.rmtree(directory, ignore_errors=True)
