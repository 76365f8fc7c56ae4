"""Several worker processes on one port: ``tidings serve --workers N``.

Each worker is a whole node (its own :class:`~tidings.node.Node`,
:class:`~tidings.server.app.TidingsServer` and event loop) listening on the
same address with ``SO_REUSEPORT``, so the kernel spreads new connections
across them. They share the Redis broker, so a publication through any worker
reaches the subscribers of every worker, in the same order, and a client that
reconnects to another worker recovers from the shared history.

This process is the supervisor and never serves a request. Its contract:

* It holds the port (a bound socket that never listens, so it receives no
  connections) from start to exit: with ``--port 0`` every worker gets the same
  port, and a restarted worker binds it again.
* It says ``listening on http://HOST:PORT`` once every worker is listening.
* A worker that dies is started again (after a pause that grows while it keeps
  dying young, up to ``RESTART_PAUSE_MAX``). A worker that dies before the
  first start completed means a configuration or environment problem (port
  taken, broker unreachable): everything stops and the exit code is 1.
* SIGTERM or SIGINT is passed on as SIGTERM to every worker; each disconnects
  its clients with 3001 (shutdown: the SDKs reconnect) and exits. Exit code 0,
  or 1 if a worker had to be killed after ``shutdown_timeout``.
* Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group;
  the supervisor decides) and die with the supervisor (``PR_SET_PDEATHSIG``
  on Linux), so a killed supervisor leaves no orphan holding the port.

Log lines name their process: ``[supervisor]`` or ``[worker N]``.

With ``metrics = true`` the workers share their Prometheus values
(``prometheus_client``'s multiprocess mode): the supervisor makes a fresh
directory, hands it to every worker in ``PROMETHEUS_MULTIPROC_DIR``, forgets a
dead worker's gauges (its counters stay in the sums) and removes the directory
at exit. A scrape of ``/metrics``, whichever worker answers it, shows the sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from tidings.config import Config, announce
from tidings.errors import BrokerUnavailable

__all__ = ["run_workers"]

log = logging.getLogger("tidings.workers")

RESTART_PAUSE_MIN = 0.5
RESTART_PAUSE_MAX = 10.0
"""Seconds before a dead worker is started again: doubling while it dies young."""

YOUNG = 10.0
"""A worker that dies within this many seconds of its start counts as dying young."""

START_TIMEOUT = 60.0
"""Longest wait for the first start of every worker (imports, broker, bind)."""

KILL_GRACE = 5.0
"""Seconds past ``shutdown_timeout`` before a worker that has not exited is killed."""

_PR_SET_PDEATHSIG = 1

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Where ``prometheus_client`` in multiprocess mode keeps each process's values."""


AppSpec = tuple[str, str]
"""An application to serve in every worker: ``(MODULE:ATTRIBUTE, app directory)``."""


def run_workers(config: Config, *, app: AppSpec | None = None) -> int:
    """Run ``config.workers`` worker processes on one port until SIGTERM/SIGINT.

    Returns the exit code: 0 after a graceful stop, 1 when the workers could
    not start (or one had to be killed), 2 for a configuration that cannot
    work with several processes.
    """
    _label_logs("[supervisor]", config)
    if config.broker == "memory":
        log.error(
            "--workers %d needs a shared broker (--broker redis://...): the memory broker "
            "lives inside one process",
            config.workers,
        )
        return 2
    if not hasattr(socket, "SO_REUSEPORT"):
        log.error("--workers needs SO_REUSEPORT, which this platform does not have")
        return 2
    try:
        reservation = _reserve_port(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    with reservation, _shared_metrics(config) as metrics_dir:
        port = reservation.getsockname()[1]
        supervisor = Supervisor(
            dataclasses.replace(config, port=port), app, metrics_dir=metrics_dir
        )
        return asyncio.run(supervisor.run())


@contextlib.contextmanager
def _shared_metrics(config: Config) -> Iterator[str | None]:
    """With metrics on, a fresh directory for the workers' values, removed at exit.

    It is set in this process's environment before any worker starts, so each
    worker's ``prometheus_client`` starts in multiprocess mode (it reads the
    variable once, when first imported); the supervisor itself imports it only
    to forget dead workers.
    """
    if not config.metrics:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="tidings-metrics-")
    previous = os.environ.get(METRICS_DIR_VARIABLE)
    os.environ[METRICS_DIR_VARIABLE] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(METRICS_DIR_VARIABLE, None)
        else:
            os.environ[METRICS_DIR_VARIABLE] = previous
        shutil.rmtree(directory, ignore_errors=True)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the serving address with SO_REUSEPORT that never listens.

    It fixes the port (``--port 0`` picks one for every worker) and keeps it
    while workers come and go; Linux hands connections to listening sockets
    only, so it never takes one.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _label_logs(label: str, config: Config) -> None:
    """Log with ``label`` after the level (``process`` in JSON), so interleaved lines say
    which process wrote them; in the configured log format (:mod:`tidings.logs`)."""
    from tidings.logs import configure_for

    configure_for(config, label=label)


@dataclasses.dataclass(eq=False)
class _Worker:
    index: int
    process: BaseProcess | None = None
    ready: Connection | None = None
    started_at: float = 0.0
    pause: float = 0.0
    is_ready: bool = False


class Supervisor:
    """Starts, watches and stops the worker processes (see the module docstring)."""

    def __init__(
        self, config: Config, app: AppSpec | None = None, *, metrics_dir: str | None = None
    ) -> None:
        self.config = config
        self.app = app
        self.metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(index) for index in range(1, config.workers + 1)]
        self._stopping = False
        self._failed = False
        self._serving = False
        """The first start is over: from now on a dead worker is restarted."""
        self._changed = asyncio.Event()
        self._restarts: set[asyncio.TimerHandle] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        for worker in self._workers:
            self._start(worker)
        if not await self._first_start():
            await self._stop_all()
            return 1
        self._serving = True
        self._announce()
        while not self._stopping:
            self._changed.clear()
            await self._changed.wait()
        return await self._stop_all()

    # ------------------------------------------------------------------ start

    def _start(self, worker: _Worker) -> None:
        if self._stopping:
            return
        config = self.config
        if not config.node_name:
            config = dataclasses.replace(
                config, node_name=f"{socket.gethostname()}-worker-{worker.index}"
            )
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(config, worker.index, sender, os.getpid(), self.app),
            name=f"tidings-worker-{worker.index}",
        )
        process.start()
        sender.close()
        worker.process, worker.ready = process, receiver
        worker.started_at = time.monotonic()
        worker.is_ready = False
        log.info("worker %d started (pid %s)", worker.index, process.pid)
        loop = asyncio.get_running_loop()
        loop.add_reader(receiver.fileno(), self._on_ready, worker)
        loop.add_reader(process.sentinel, self._on_exit, worker)

    def _on_ready(self, worker: _Worker) -> None:
        receiver = worker.ready
        if receiver is None:
            return
        asyncio.get_running_loop().remove_reader(receiver.fileno())
        worker.ready = None
        with contextlib.suppress(EOFError, OSError):
            receiver.recv()
            worker.is_ready = True
            log.info("worker %d is serving", worker.index)
        receiver.close()
        self._changed.set()

    async def _first_start(self) -> bool:
        """Wait until every worker serves; False if one died first or time ran out."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(worker.is_ready for worker in self._workers):
            if self._failed or self._stopping:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("the workers did not start within %s s", START_TIMEOUT)
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def _announce(self) -> None:
        announce(self.config, self.config.port, workers=len(self._workers))

    # ------------------------------------------------------------------ exits

    def _on_exit(self, worker: _Worker) -> None:
        process = worker.process
        if process is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        if worker.ready is not None:
            self._on_ready(worker)  # drain (a worker may say ready and die at once)
        # The sentinel reports the end of the process's files, a moment before the
        # kernel lets it be reaped: wait for that moment (the supervisor has nothing
        # else to do meanwhile).
        process.join(KILL_GRACE)
        code = process.exitcode
        if code is not None:
            self._forget_metrics(process.pid)
            process.close()
        worker.process = None
        self._changed.set()
        if self._stopping:
            log.info("worker %d exited (code %s)", worker.index, code)
            return
        uptime = time.monotonic() - worker.started_at
        if not self._serving:
            log.error(
                "worker %d exited with code %s before it could serve; stopping", worker.index, code
            )
            self._failed = True
            return
        worker.pause = (
            min(RESTART_PAUSE_MAX, max(RESTART_PAUSE_MIN, worker.pause * 2))
            if uptime < YOUNG
            else 0
        )
        log.warning(
            "worker %d exited unexpectedly (code %s) after %.1f s; restarting it in %.1f s",
            worker.index,
            code,
            uptime,
            worker.pause,
        )
        handle = loop.call_later(worker.pause, self._restart, worker)
        self._restarts.add(handle)

    def _forget_metrics(self, pid: int | None) -> None:
        """A dead worker's gauges (its connections...) leave the sums; its counters stay."""
        if self.metrics_dir is None or pid is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _restart(self, worker: _Worker) -> None:
        self._restarts = {handle for handle in self._restarts if not handle.cancelled()}
        if not self._stopping and worker.process is None:
            self._start(worker)

    # ------------------------------------------------------------------ stop

    def _on_signal(self, signum: int) -> None:
        if not self._stopping:
            log.info(
                "%s: stopping %d workers (clients are disconnected with 3001)",
                signal.Signals(signum).name,
                len(self._workers),
            )
        self._stopping = True
        self._changed.set()

    async def _stop_all(self) -> int:
        self._stopping = True
        for handle in self._restarts:
            handle.cancel()
        for worker in self._workers:
            if worker.process is not None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout + KILL_GRACE
        while any(worker.process is not None for worker in self._workers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        code = 1 if self._failed else 0
        for worker in self._workers:
            process = worker.process
            if process is not None:
                log.error("worker %d did not stop in time: killing it", worker.index)
                process.kill()
                process.join(KILL_GRACE)
                code = 1
        log.info("all workers stopped")
        return code


# --------------------------------------------------------------------------- worker side


def worker_main(
    config: Config,
    index: int,
    ready: Connection,
    supervisor_pid: int,
    app: AppSpec | None = None,
) -> None:
    """Entry point of a worker process (``multiprocessing`` spawn target).

    With an application, the worker imports its module again (this is a fresh
    process): its handlers run in every worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(supervisor_pid)
    _label_logs(f"[worker {index}]", config)
    sys.exit(_run_loop(_serve(config, ready, app)))


def _die_with(supervisor_pid: int) -> None:
    """Receive SIGTERM when the supervisor dies, however it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor_pid:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result


async def _serve(config: Config, ready: Connection, app: AppSpec | None = None) -> int:
    from tidings.node import Node
    from tidings.server.app import TidingsServer

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if app is not None:
        from tidings.loading import load_app

        application = load_app(*app)
        application.use_config(config)
        node = application.node
        static = application.static_routes
    else:
        node = Node(config)
        static = []
    server = TidingsServer(node, static=static)
    try:
        if app is not None:
            await application.start()  # the node, then the application's on_startup
        port = await server.start()
    except BrokerUnavailable as exc:
        log.error("cannot start: the broker is unreachable: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    log.info("serving on port %d (node %s)", port, server.node.id)
    ready.send(port)
    ready.close()
    await stop.wait()
    if app is not None:
        await application.stop_within(config.shutdown_timeout)
    await server.shut_down()
    return 0
