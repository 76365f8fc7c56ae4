"""ASGI servers in the test's own event loop, on an ephemeral port of 127.0.0.1.

``serve_asgi(app, "uvicorn")`` or ``serve_asgi(app, "hypercorn")`` binds a socket
to port 0, hands it to the server, waits until the application answers (its
lifespan has run by then), and stops it at the end of the block.

``mounted(kind)`` is the application a user writes: FastAPI with its own route
and ``rt.asgi()`` at ``/rt``, the node started by the lifespan, and the same node
listening standalone too (``TidingsServer(rt.node)``), so a test can hold the
mount to the standalone edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tests.conftest import make_config
from tests.support.polling import eventually
from tidings import Tidings
from tidings.server.app import TidingsServer
from tidings.server.asgi import AsgiMount

ASGI_SERVERS = ("uvicorn", "hypercorn")

MOUNT = "/rt"
"""Where the tests' FastAPI apps mount ``rt.asgi()``."""
PAGE_ORIGIN = "http://app.example"
"""The one origin the tests' mounts allow besides same-host pages."""


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, kind: str, probe: str = "/health") -> AsyncIterator[int]:
    """Serve ``app`` with ``kind`` (uvicorn or hypercorn); yields the port once ``GET probe``
    answers 200 (the lifespan has run by then)."""
    sock = _bound_socket()
    port = int(sock.getsockname()[1])
    if kind == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await _answering(port, probe, task)
        if task.done():
            task.result()
            raise AssertionError("uvicorn stopped at start-up")
        try:
            yield port
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
            sock.close()
    elif kind == "hypercorn":
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.graceful_timeout = 2
        config.loglevel = "WARNING"
        stop = asyncio.Event()

        async def shutdown_trigger() -> None:
            await stop.wait()

        task = asyncio.create_task(
            serve(app, config, shutdown_trigger=shutdown_trigger, mode="asgi")
        )
        await _answering(port, probe, task)
        if task.done():
            task.result()
            raise AssertionError("hypercorn stopped at start-up")
        try:
            yield port
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    else:
        raise ValueError(f"expected an ASGI server in {ASGI_SERVERS}, got {kind!r}")


async def _answering(port: int, probe: str, task: asyncio.Task[Any]) -> None:
    """Poll ``GET probe`` until it answers 200 (or the server task ended)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            if task.done():
                return True
            try:
                async with http.get(f"http://127.0.0.1:{port}{probe}") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, what=f"the ASGI server to answer {probe}", within=10)


@dataclass
class Mounted:
    """A FastAPI app with ``rt.asgi()`` at ``/rt`` under an ASGI server, and the same
    node listening standalone."""

    rt: Tidings
    asgi: AsgiMount
    port: int
    standalone: TidingsServer
    disconnects: list[int]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}{MOUNT}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{MOUNT}/connection/websocket"

    @property
    def standalone_ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.standalone.port}/connection/websocket"


def fastapi_app(rt: Tidings, asgi: AsgiMount, *, own_lifespan: bool) -> Any:
    """The application a user writes: its own routes, tidings mounted at ``/rt``."""
    from fastapi import FastAPI

    if own_lifespan:

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            async with rt:
                yield

        app = FastAPI(lifespan=lifespan)
    else:
        app = FastAPI(lifespan=rt.lifespan)

    @app.post("/notify/{channel}")
    async def notify(channel: str, body: dict[str, Any]) -> dict[str, Any]:
        result = await rt.publish(channel, body)
        return {"offset": result.offset}

    app.mount(MOUNT, asgi)
    return app


@contextlib.asynccontextmanager
async def mounted(kind: str, **overrides: Any) -> AsyncIterator[Mounted]:
    overrides.setdefault("allowed_origins", [PAGE_ORIGIN])
    rt = Tidings(make_config(**overrides))
    disconnects: list[int] = []

    @rt.on_disconnect
    async def gone(ctx: Any) -> None:
        disconnects.append(ctx.code)

    # hypercorn gets the app's own lifespan (`async with rt:`), uvicorn rt.lifespan.
    asgi = rt.asgi()
    app = fastapi_app(rt, asgi, own_lifespan=kind == "hypercorn")
    async with serve_asgi(app, kind, probe=f"{MOUNT}/health") as port:
        standalone = TidingsServer(rt.node)
        await standalone.start()
        try:
            yield Mounted(rt, asgi, port, standalone, disconnects)
        finally:
            await standalone.stop()
    assert rt.node.closing, "the lifespan stopped the node"
