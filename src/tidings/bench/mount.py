"""The ASGI mount under test for ``tidings bench --target mount``.

What a user runs: a FastAPI app whose lifespan starts tidings, with ``rt.asgi()``
mounted at ``/rt``, served by uvicorn (``--spawn`` starts it as
``uvicorn tidings.bench.mount:app`` on uvloop, httptools and websockets' sans-I/O
protocol). The configuration is the one the standalone target reads, named by
``TIDINGS_BENCH_CONFIG``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from tidings import Tidings

MOUNT = "/rt"

rt = Tidings(os.environ.get("TIDINGS_BENCH_CONFIG") or None)
app = FastAPI(lifespan=rt.lifespan)
app.mount(MOUNT, rt.asgi())
