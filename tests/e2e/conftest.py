"""Fixtures of the end-to-end suite (the shared ones are in ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import token
from tests.support.fallback import FALLBACK, REPO, FallbackClient, StartFallback, node_missing


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client for the HTTP transports; closed after the test."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def fallback_client() -> AsyncIterator[StartFallback]:
    """centrifuge-js in Node against a base URL (a server's root or a mount), with the
    transports it is told to block; every process is stopped after the test."""
    reason = node_missing()
    if reason:
        pytest.skip(reason)
    started: list[FallbackClient] = []

    async def start(base: str, blocked: list[str], channel: str) -> FallbackClient:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(FALLBACK),
            base,
            token(),
            channel,
            json.dumps(blocked),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        client = FallbackClient(process)
        started.append(client)
        return client

    yield start
    for client in started:
        if client.process.returncode is None:
            client.process.kill()
            await client.process.wait()
