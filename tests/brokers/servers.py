"""Private Redis servers for the broker suite, started from the ``redis-server`` binary.

A 3-master Redis Cluster and a single standalone server, each on free loopback
ports with its own temporary directory, torn down by the fixtures that start
them. Nothing here touches the shared Redis the suite also runs against.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

START_TIMEOUT = 20.0
"""Seconds a server (or the cluster) may take to answer before the fixture gives up."""


def binaries_missing() -> str:
    """Why private servers cannot run here, or "" when they can."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    return f"{' and '.join(missing)} not on PATH" if missing else ""


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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def cli(port: int, *args: str, timeout: float = 5.0) -> str:
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.stdout


@dataclass
class RedisServer:
    port: int
    directory: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.resume()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_server(directory: str, *extra: str, bus: bool = False) -> RedisServer:
    port = free_port(bus=bus)
    log = open(os.path.join(directory, f"redis-{port}.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", directory,
            "--daemonize", "no",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    server = RedisServer(port, directory, process)
    try:
        wait_for(lambda: cli(port, "PING").strip() == "PONG", f"redis-server on port {port}")
    except BaseException:
        server.stop()
        raise
    return server


CLUSTER_OPTIONS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")


@dataclass
class Cluster:
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]


@contextlib.contextmanager
def standalone_server() -> Iterator[RedisServer]:
    directory = tempfile.mkdtemp(prefix="tidings-redis-")
    try:
        server = start_server(directory)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def cluster(masters: int = 3) -> Iterator[Cluster]:
    directory = tempfile.mkdtemp(prefix="tidings-cluster-")
    result = Cluster()
    try:
        for _ in range(masters):
            node_dir = tempfile.mkdtemp(dir=directory)
            result.servers.append(start_server(node_dir, *CLUSTER_OPTIONS, bus=True))
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
            wait_for(
                lambda port=port: "cluster_state:ok" in cli(port, "CLUSTER", "INFO"),
                f"cluster_state:ok on port {port}",
            )
        yield result
    finally:
        for server in result.servers:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def sentinel(master: RedisServer, service: str) -> Iterator[int]:
    """A Redis Sentinel watching ``master`` as ``service``; yields its port."""
    directory = tempfile.mkdtemp(prefix="tidings-sentinel-")
    config = os.path.join(directory, "sentinel.conf")
    with open(config, "w") as file:
        file.write(f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n")
    port = free_port()
    log = open(os.path.join(directory, "sentinel.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["redis-server", config, "--sentinel", "--port", str(port), "--bind", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    server = RedisServer(port, directory, process)
    try:
        wait_for(
            lambda: str(master.port) in cli(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", service),
            f"sentinel on port {port} to know {service}",
        )
        yield port
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
