"""Origin checks for browser requests (WebSocket upgrades and HTTP transports).

Rules, as Centrifugo's: a request without an ``Origin`` header is not from a
browser page and passes. With an allow-list, the origin must match one of its
entries; ``*`` allows every origin and entries may hold ``*`` wildcards
(``https://*.example.com``). With an empty list, only a page served from the
same host may connect, which stops cross-site WebSocket hijacking by default.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit


class OriginPolicy:
    def __init__(self, allowed: list[str]) -> None:
        self.allow_all = "*" in allowed
        self._exact = {entry.lower().rstrip("/") for entry in allowed if "*" not in entry}
        self._patterns = [
            re.compile(
                "^"
                + ".*".join(re.escape(part) for part in entry.lower().rstrip("/").split("*"))
                + "$"
            )
            for entry in allowed
            if "*" in entry and entry != "*"
        ]
        self.configured = bool(allowed)

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        if self.allow_all:
            return True
        normalized = origin.lower().rstrip("/")
        if self.configured:
            if normalized in self._exact:
                return True
            return any(pattern.match(normalized) for pattern in self._patterns)
        if not host:
            return False
        return urlsplit(normalized).netloc == host.lower()
