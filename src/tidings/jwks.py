"""Fetching a JSON Web Key Set for token verification, off the event loop.

The set is fetched at start, refreshed every ``token_jwks_refresh_interval``,
and refetched early (at most every :data:`MIN_REFETCH_INTERVAL` seconds) when a
token names an unknown ``kid``: a key rotation is picked up without a restart,
and a flood of tokens with made-up ``kid`` values cannot turn into a flood of
requests to the identity provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

from tidings.auth import TokenVerifier

log = logging.getLogger("tidings.jwks")

MIN_REFETCH_INTERVAL = 10.0
MAX_JWKS_BYTES = 1 << 20


def _fetch(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS document over 1 MiB")
    return json.loads(body)


class JwksClient:
    """Keeps a :class:`TokenVerifier`'s JWKS keys fresh."""

    def __init__(
        self,
        url: str,
        verifier: TokenVerifier,
        *,
        refresh_interval: float = 300.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.verifier = verifier
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.min_refetch_interval = MIN_REFETCH_INTERVAL
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        verifier.jwks_configured = True

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the set now (rate-limited unless ``force``). ``True`` when keys were loaded."""
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._last_attempt < self.min_refetch_interval:
                return False
            self._last_attempt = now
            try:
                document = await asyncio.to_thread(_fetch, self.url, self.timeout)
            except Exception as exc:
                log.warning("JWKS fetch from %s failed: %s", self.url, exc.__class__.__name__)
                return False
            count = self.verifier.set_jwks(document)
            log.info("JWKS loaded: %d signing keys", count)
            return count > 0

    async def run(self) -> None:
        """Refresh periodically until cancelled."""
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh(force=True)
