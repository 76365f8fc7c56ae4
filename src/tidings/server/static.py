"""An application's static files (its pages, scripts, styles) on the standalone edge.

``rt.static("/", "static")`` serves ``static/index.html`` at ``/`` and
``static/app.js`` at ``/app.js``: only regular files inside the directory, never
a hidden file or a path that climbs out of it, GET and HEAD only.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from tidings.server.http import Request, Response, text_response

CACHE_CONTROL = ("cache-control", "no-cache")
"""Revalidate every time: pages change during development and examples."""


class StaticFiles:
    """Serves the files under ``directory`` at the URL ``prefix`` (which ends with ``/``)."""

    def __init__(self, prefix: str, directory: Path) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.directory = directory.resolve()

    def find(self, path: str) -> Path | None:
        """The file a URL path names, or ``None`` (outside the directory, hidden, missing)."""
        relative = path[len(self.prefix) :] if path.startswith(self.prefix) else None
        if relative is None:
            return None
        parts = [part for part in relative.split("/") if part]
        if any(part.startswith(".") or "\\" in part for part in parts):
            return None
        candidate = self.directory.joinpath(*parts)
        if candidate.is_dir():
            candidate = candidate / "index.html"
        try:
            resolved = candidate.resolve()
        except OSError:
            return None
        if not resolved.is_relative_to(self.directory) or not resolved.is_file():
            return None
        return resolved

    async def __call__(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"", "text/plain", [("allow", "GET, HEAD")])
        found = self.find(request.path)
        if found is None:
            return text_response("not found", 404)
        content_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith(("javascript", "json")):
            content_type += "; charset=utf-8"
        return Response(200, found.read_bytes(), content_type, [CACHE_CONTROL])
