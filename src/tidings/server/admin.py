"""The admin web page: nodes, channels, presence, history, publishing, disconnecting.

Off by default: ``admin = true`` turns it on, and it needs a secret of its own,
``admin_password`` (typed into its login form) and/or ``admin_token`` (the
login form accepts it too, and scripts may send it as ``Authorization: Bearer``).
The server API key is never used here, so it never reaches a browser or a URL.

Routes (all under ``/admin``):

* ``GET /admin``, ``/admin/admin.js``, ``/admin/admin.css``: the page, from
  the package's ``admin/`` directory, with a strict Content-Security-Policy
  (scripts and connections from this origin only, no framing);
* ``POST /admin/login`` ``{"password": ...}``: sets the session cookie;
  ``POST /admin/logout`` clears it;
* ``POST /admin/api/<method>``: one server API method (:data:`METHODS`), run by
  :class:`~tidings.server.api.ServerApi`, so the page sees every node of a
  Redis deployment (``info`` lists them, ``channels`` surveys them, presence
  and history live in the broker, a disconnect reaches the user's node).

The session is a signed, expiring value (HMAC-SHA256 under a key derived from
the configured secrets), so any node or worker with the same secrets accepts
it and nothing is stored; changing the secrets ends every session. The cookie
is ``HttpOnly; SameSite=Strict; Path=/admin``.

Same-origin protection, on every POST: a browser request must come from this
origin (``Origin`` matching ``Host``, or ``Sec-Fetch-Site: same-origin``),
else 403; a request with no ``Origin`` (a script) must bring the bearer token;
API calls must be ``application/json``, which a cross-site form cannot send.
Failed logins are limited per client address (:class:`LoginThrottle`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from tidings.config import Config
from tidings.server.api import ApiError, ServerApi
from tidings.server.http import Request, Response, json_response, text_response

if TYPE_CHECKING:
    from tidings.server.app import TidingsServer

__all__ = ["METHODS", "AdminPage", "LoginThrottle", "install"]

log = logging.getLogger("tidings.admin")

METHODS = frozenset(
    {"info", "channels", "presence", "presence_stats", "history", "publish", "disconnect"}
)
"""Server API methods the page may call: what it shows and the two actions it offers."""

COOKIE = "tidings_admin"
SESSION_TTL = 12 * 3600
"""Seconds a login lasts."""

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
}

PAGE_HEADERS = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
]
"""On every admin answer: nothing from elsewhere runs in the page, and no site frames it."""


def _error(status: int, code: int, message: str, detail: str) -> Response:
    body = {"error": {"code": code, "message": message, "detail": detail}}
    response = json_response(json.dumps(body).encode(), status)
    response.headers.extend(PAGE_HEADERS)
    return response


class LoginThrottle:
    """At most ``attempts`` failed logins per client address within ``window`` seconds."""

    def __init__(self, attempts: int = 10, window: float = 300.0) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def allowed(self, ip: str, now: float | None = None) -> bool:
        failures = self._failures.get(ip)
        if failures is None:
            return True
        now = time.monotonic() if now is None else now
        while failures and now - failures[0] > self.window:
            failures.popleft()
        if not failures:
            del self._failures[ip]
            return True
        return len(failures) < self.attempts

    def failed(self, ip: str, now: float | None = None) -> None:
        self._failures.setdefault(ip, deque()).append(time.monotonic() if now is None else now)
        if len(self._failures) > 10_000:  # bounded: forget the oldest address
            self._failures.pop(next(iter(self._failures)))


class AdminPage:
    """The ``/admin`` routes of one server (see the module docstring)."""

    def __init__(self, api: ServerApi, config: Config) -> None:
        self.api = api
        self._password = config.admin_password.encode()
        self._token = config.admin_token.encode()
        material = b"\0".join([b"tidings admin session v1", self._password, self._token])
        self._key = hashlib.sha256(material).digest()
        self.throttle = LoginThrottle()

    # ------------------------------------------------------------------ sessions

    def new_session(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_TTL)
        nonce = base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=")
        payload = f"v1.{expires}.{nonce}"
        return f"{payload}.{self._sign(payload)}"

    def session_valid(self, value: str | None, now: float | None = None) -> bool:
        if not value or value.count(".") != 3:
            return False
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        expires = payload.split(".")[1]
        return expires.isdigit() and int(expires) > (time.time() if now is None else now)

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def _secret_matches(self, supplied: str) -> bool:
        given = supplied.encode()
        password = bool(self._password) and hmac.compare_digest(given, self._password)
        token = bool(self._token) and hmac.compare_digest(given, self._token)
        return password or token

    def _bearer(self, request: Request) -> bool:
        authorization = request.header("authorization") or ""
        scheme, _, value = authorization.partition(" ")
        return (
            scheme.lower() == "bearer"
            and bool(self._token)
            and hmac.compare_digest(value.strip().encode(), self._token)
        )

    # ------------------------------------------------------------------ routes

    async def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path in ("/admin", "/admin/index.html"):
            return self._asset(request, "index.html")
        rest = path[len("/admin/") :]
        if rest in ASSETS:
            return self._asset(request, rest)
        if rest == "login":
            return await self._login(request)
        if rest == "logout":
            return self._logout(request)
        if rest.startswith("api/"):
            return await self._call(request, rest[len("api/") :])
        return text_response("not found", 404)

    def _asset(self, request: Request, name: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"", "text/plain", [("allow", "GET, HEAD")])
        body = (resources.files("tidings") / "admin" / name).read_bytes()
        return Response(200, body, ASSETS[name], list(PAGE_HEADERS))

    def _refusal(self, request: Request, *, bearer: bool) -> Response | None:
        """POST only, and from this origin when a browser sends it (see the module doc)."""
        if request.method != "POST":
            return Response(405, b"", "text/plain", [("allow", "POST")])
        site = request.header("sec-fetch-site")
        origin = request.header("origin")
        if site is not None and site not in ("same-origin", "none"):
            return self._cross_origin(request, f"Sec-Fetch-Site is {site!r}")
        if origin is not None:
            host = (request.header("host") or "").lower()
            if not host or urlsplit(origin.lower()).netloc != host:
                return self._cross_origin(request, f"origin {origin[:100]!r} is another one")
        elif site != "same-origin" and not bearer:
            log.info(
                "admin request from %s refused: no Origin header and no bearer token",
                request.client,
                extra={"client": request.client, "status": 403},
            )
            return _error(
                403,
                103,
                "permission denied",
                "a request without an Origin header needs Authorization: Bearer <admin_token>",
            )
        return None

    def _cross_origin(self, request: Request, what: str) -> Response:
        log.info(
            "admin request from %s refused: %s",
            request.client,
            what,
            extra={"client": request.client, "status": 403},
        )
        return _error(403, 103, "permission denied", "the admin page accepts its own origin only")

    async def _login(self, request: Request) -> Response:
        refusal = self._refusal(request, bearer=False)
        if refusal is not None:
            return refusal
        ip = request.client.rpartition(":")[0]
        if not self.throttle.allowed(ip):
            log.warning(
                "admin login from %s refused: too many failed attempts",
                request.client,
                extra={"client": request.client, "status": 429},
            )
            return _error(429, 111, "too many requests", "too many failed logins: wait a while")
        try:
            supplied = msgspec.json.decode(request.body or b"{}").get("password", "")
        except (msgspec.DecodeError, AttributeError):
            supplied = ""
        if not isinstance(supplied, str) or not supplied or not self._secret_matches(supplied):
            self.throttle.failed(ip)
            log.info(
                "admin login from %s refused: wrong password",
                request.client,
                extra={"client": request.client, "status": 401},
            )
            return _error(401, 101, "unauthorized", "wrong password or admin token")
        log.info("admin login from %s", request.client, extra={"client": request.client})
        secure = "; Secure" if request.header("x-forwarded-proto") == "https" else ""
        cookie = (
            f"{COOKIE}={self.new_session()}; Path=/admin; Max-Age={SESSION_TTL}; "
            f"HttpOnly; SameSite=Strict{secure}"
        )
        return Response(204, b"", "text/plain", [*PAGE_HEADERS, ("set-cookie", cookie)])

    def _logout(self, request: Request) -> Response:
        refusal = self._refusal(request, bearer=False)
        if refusal is not None:
            return refusal
        cookie = f"{COOKIE}=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict"
        return Response(204, b"", "text/plain", [*PAGE_HEADERS, ("set-cookie", cookie)])

    async def _call(self, request: Request, method: str) -> Response:
        bearer = self._bearer(request)
        refusal = self._refusal(request, bearer=bearer)
        if refusal is not None:
            return refusal
        if not bearer and not self.session_valid(request.cookie(COOKIE)):
            return _error(401, 101, "unauthorized", "log in first (the session is missing or over)")
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _error(415, 107, "bad request", "send the params as application/json")
        if method not in METHODS:
            detail = f"the admin page calls {', '.join(sorted(METHODS))}"
            return _error(404, 104, "not found", detail)
        if method in ("publish", "disconnect"):
            self._audit(request, method)
        try:
            result: Any = await self.api.call(method, request.body or b"{}")
        except ApiError as exc:
            body: dict[str, Any] = {"code": exc.error.code, "message": exc.error.message}
            if exc.detail:
                body["detail"] = exc.detail
            answer = msgspec.json.encode({"error": body})
        else:
            answer = msgspec.json.encode({"result": result})
        response = json_response(answer)
        response.headers.extend(PAGE_HEADERS)
        return response

    def _audit(self, request: Request, method: str) -> None:
        """Actions that change something are logged with who asked and what."""
        try:
            params = msgspec.json.decode(request.body or b"{}")
        except msgspec.DecodeError:
            params = {}
        fields = {"client": request.client, "method": method}
        if isinstance(params, dict):
            for name in ("channel", "user"):
                if isinstance(params.get(name), str):
                    fields[name] = params[name][:255]
        target = fields.get("channel") or fields.get("user") or "?"
        log.info("admin %s %r from %s", method, target, request.client, extra=fields)


def install(server: TidingsServer) -> AdminPage:
    """Register the ``/admin`` routes on ``server`` (only called when ``admin`` is on)."""
    page = AdminPage(server.api.api, server.config)
    server.router.route("/admin", page.handle)
    server.router.route("/admin/*", page.handle)
    return page
