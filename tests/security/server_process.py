"""A tidings server in its own process, for tests that measure the server alone (RSS).

Run: ``python -m tests.security.server_process '<JSON config overrides>'``. The
configuration is the test suite's (:func:`tests.conftest.make_config`) with the
overrides applied. Prints ``listening on <port>`` once bound, logs at INFO to
stderr, and serves until SIGTERM.

SIGUSR1 asks glibc to hand its free heap pages back to the system
(``malloc_trim(0)``) and prints ``trimmed``: a test then tells memory the
server still holds from memory it freed but the allocator kept mapped.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import signal
import sys

import uvloop

from tests.conftest import make_config
from tidings.node import Node
from tidings.server.app import TidingsServer


async def serve(overrides: dict[str, object]) -> None:
    server = TidingsServer(Node(make_config(**overrides)))
    port = await server.start()
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, trim)
    await stop.wait()
    await server.stop()


def trim() -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    print("trimmed", flush=True)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    uvloop.run(serve(overrides))


if __name__ == "__main__":
    main()
