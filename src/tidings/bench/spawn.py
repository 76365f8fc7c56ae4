"""Start and stop the server under test, pinned to its own CPU with ``taskset``.

``--spawn`` gives each scenario a fresh server process, so one scenario's
leftovers (memory, history, buffers) never weigh on the next one, and so the
generator knows the server's PID for RSS and CPU readings. The server runs in
its own session (process group) so that worker processes stop with it.

Commands:

* tidings: ``python -m tidings serve --config FILE --port N`` (plus
  ``--broker URL --workers N`` for scenario F);
* reference: ``node benchmarks/reference/server.js`` with ``PORT=N``;
* mount: ``python -m uvicorn tidings.bench.mount:app --port N`` (``rt.asgi()`` at ``/rt``
  in a FastAPI app), reading the tidings config named by ``TIDINGS_BENCH_CONFIG``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tidings.bench.system import parse_cpu_list


class SpawnError(Exception):
    """The server could not be started; the message carries the end of its log."""


def find_repository_root(start: Path | None = None) -> Path | None:
    """The checkout holding ``benchmarks/reference``: from ``start`` (or the cwd) upwards,
    then from this file's location (an editable install)."""
    candidates = [start or Path.cwd(), Path(__file__).resolve().parent]
    for candidate in candidates:
        for directory in (candidate, *candidate.parents):
            if (directory / "benchmarks" / "reference" / "server.js").is_file():
                return directory
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class ServerSpec:
    """How to run one server: which kind, where its files are, which CPUs."""

    kind: str
    root: Path
    cpus: str | None = "1"
    config: Path | None = None
    broker: str | None = None
    broker_prefix: str | None = None
    workers: int | None = None
    host: str = "127.0.0.1"
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> tuple[list[str], dict[str, str], Path]:
        """The argv, environment and working directory for a server on ``port``."""
        env = dict(os.environ)
        env.update(self.extra_env)
        if self.kind == "reference":
            directory = self.root / "benchmarks" / "reference"
            if not (directory / "node_modules" / "ws").is_dir():
                raise SpawnError(
                    f"the reference server's packages are not installed: run `npm ci` in "
                    f"{directory.relative_to(self.root)}"
                )
            node = shutil.which("node")
            if node is None:
                raise SpawnError("the reference server needs Node.js (`node` is not on PATH)")
            env["PORT"] = str(port)
            env["HOST"] = self.host
            argv = [node, "server.js"]
            cwd = directory
        elif self.kind == "tidings":
            config = self.config or self.root / "benchmarks" / "tidings-bench.toml"
            argv = [sys.executable, "-m", "tidings", "serve", "--config", str(config)]
            argv += ["--port", str(port)]
            if self.broker:
                argv += ["--broker", self.broker]
            if self.broker_prefix:
                argv += ["--broker-prefix", self.broker_prefix]
            if self.workers:
                argv += ["--workers", str(self.workers)]
            source = self.root / "src"
            if source.is_dir():
                env["PYTHONPATH"] = os.pathsep.join(
                    part for part in (str(source), env.get("PYTHONPATH", "")) if part
                )
            cwd = self.root
        elif self.kind == "mount":
            for module in ("uvicorn", "fastapi"):
                if importlib.util.find_spec(module) is None:
                    raise SpawnError(
                        f"the mount target needs {module}: pip install fastapi uvicorn "
                        "(the test extra has both)"
                    )
            config = self.config or self.root / "benchmarks" / "tidings-bench.toml"
            env["TIDINGS_BENCH_CONFIG"] = str(config)
            argv = [sys.executable, "-m", "uvicorn", "tidings.bench.mount:app"]
            argv += ["--host", self.host, "--port", str(port), "--log-level", "warning"]
            argv += ["--no-access-log", "--lifespan", "on", "--http", "httptools"]
            argv += ["--ws", "websockets-sansio", "--loop", "uvloop"]
            source = self.root / "src"
            if source.is_dir():
                env["PYTHONPATH"] = os.pathsep.join(
                    part for part in (str(source), env.get("PYTHONPATH", "")) if part
                )
            cwd = self.root
        else:
            raise SpawnError(
                f"expected a server kind of tidings, reference or mount, got {self.kind!r}"
            )
        if self.cpus:
            if shutil.which("taskset") is None:
                raise SpawnError("pinning the server needs `taskset` (util-linux)")
            parse_cpu_list(self.cpus)
            argv = ["taskset", "-c", self.cpus, *argv]
        return argv, env, cwd


class SpawnedServer:
    """One running server process; use as an async context manager.

    Its output goes to a temporary log file whose end is quoted when the server
    fails to start.
    """

    def __init__(self, spec: ServerSpec, *, start_timeout: float = 30.0) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self.port = free_port(spec.host)
        self.process: asyncio.subprocess.Process | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    @property
    def url(self) -> str:
        path = {"tidings": "/connection/websocket", "mount": "/rt/connection/websocket"}.get(
            self.spec.kind, "/"
        )
        return f"ws://{self.spec.host}:{self.port}{path}"

    async def __aenter__(self) -> SpawnedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        argv, env, cwd = self.spec.command(self.port)
        # taskset execs the server, so the child's PID is the server's PID.
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.returncode is not None:
                raise SpawnError(
                    f"{self.spec.kind} server exited with {self.process.returncode} "
                    f"before listening:\n{self.log_tail()}"
                )
            try:
                _, writer = await asyncio.open_connection(self.spec.host, self.port)
            except OSError:
                if time.monotonic() > deadline:
                    await self.stop()
                    raise SpawnError(
                        f"{self.spec.kind} server did not listen on port {self.port} within "
                        f"{self.start_timeout:.0f} s:\n{self.log_tail()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers past ``grace``."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    def log_tail(self, size: int = 4000) -> str:
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        end = self._log.tell()
        self._log.seek(max(0, end - size))
        return self._log.read().decode("utf-8", "replace")
