"""The admin page's HTTP side: off by default, its own secret, same-origin, the API underneath."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import API_KEY, ClientFactory, RunningServer, StartServer, token
from tests.support.http import http
from tidings.config import Config
from tidings.errors import ConfigError
from tidings.server.admin import SESSION_TTL, AdminPage, LoginThrottle

pytestmark = pytest.mark.timeout(30)

PASSWORD = "correct horse battery staple"
ADMIN_TOKEN = "admin-token-0123456789abcdef0123456789"


@pytest.fixture
async def admin(start_server: StartServer) -> RunningServer:
    return await start_server(admin=True, admin_password=PASSWORD, admin_token=ADMIN_TOKEN)


def same_origin(server: RunningServer, **headers: str) -> dict[str, str]:
    """What the page's fetch() sends: its origin, and JSON."""
    return {
        "Origin": f"http://127.0.0.1:{server.port}",
        "Host": f"127.0.0.1:{server.port}",
        "Content-Type": "application/json",
        **headers,
    }


async def login(server: RunningServer, password: str = PASSWORD) -> tuple[int, str]:
    """Log in like the page does; returns the status and the session cookie (name=value)."""
    status, headers, _ = await http(
        server.port, "POST", "/admin/login", {"password": password}, same_origin(server)
    )
    cookie = headers.get("set-cookie", "")
    return status, cookie.split(";", 1)[0]


async def admin_call(
    server: RunningServer, method: str, params: dict[str, Any], **headers: str
) -> tuple[int, Any]:
    status, _, body = await http(server.port, "POST", f"/admin/api/{method}", params, headers)
    return status, json.loads(body) if body else None


async def test_off_by_default(server: RunningServer) -> None:
    for path in ("/admin", "/admin/admin.js", "/admin/api/info"):
        status, _, _ = await http(server.port, "GET", path)
        assert status == 404, path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"admin": True},
            "admin: the admin page needs admin_password or admin_token "
            "(TIDINGS_ADMIN_PASSWORD / TIDINGS_ADMIN_TOKEN)",
        ),
        (
            {"admin": True, "admin_password": "short"},
            "admin_password: expected at least 12 characters, got 5",
        ),
        (
            {"admin": True, "admin_token": "x" * 20},
            "admin_token: expected at least 32 characters, got 20 (openssl rand -hex 32 makes one)",
        ),
        (
            {"admin": True, "api_key": "k" * 40, "admin_token": "k" * 40},
            "admin_password/admin_token: must differ from api_key (the admin page has its own "
            "secret, so the API key never reaches a browser)",
        ),
    ],
)
def test_needs_a_secret_of_its_own(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config(**overrides).validate()
    assert str(error.value) == message


async def test_page_is_served_with_a_strict_policy(admin: RunningServer) -> None:
    status, headers, body = await http(admin.port, "GET", "/admin")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="/admin/admin.js" defer></script>' in body
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    status, headers, _ = await http(admin.port, "GET", "/admin/admin.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")


async def test_login_sets_a_strict_cookie_and_the_api_answers(admin: RunningServer) -> None:
    status, headers, _ = await http(
        admin.port, "POST", "/admin/login", {"password": PASSWORD}, same_origin(admin)
    )
    assert status == 204
    assert headers["set-cookie"].endswith("; Path=/admin; Max-Age=43200; HttpOnly; SameSite=Strict")
    cookie = headers["set-cookie"].split(";", 1)[0]
    status, answer = await admin_call(admin, "info", {}, **same_origin(admin, Cookie=cookie))
    assert status == 200 and len(answer["result"]["nodes"]) == 1


async def test_wrong_password_and_api_key_are_refused(admin: RunningServer) -> None:
    assert (await login(admin, "not the password"))[0] == 401
    assert (await login(admin, API_KEY))[0] == 401
    status, answer = await admin_call(
        admin, "info", {}, **same_origin(admin, Authorization=f"Bearer {API_KEY}")
    )
    assert status == 401 and answer["error"]["detail"].startswith("log in first")


async def test_the_admin_token_logs_in_and_works_as_a_bearer(admin: RunningServer) -> None:
    assert (await login(admin, ADMIN_TOKEN))[0] == 204
    # A script: no Origin, the token in a header (never in the URL).
    status, answer = await admin_call(
        admin,
        "info",
        {},
        **{"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    assert status == 200 and "nodes" in answer["result"]


async def test_other_origins_and_originless_cookies_are_refused(admin: RunningServer) -> None:
    _, cookie = await login(admin)
    evil = {**same_origin(admin, Cookie=cookie), "Origin": "http://evil.example"}
    status, answer = await admin_call(admin, "publish", {"channel": "chat:x", "data": 1}, **evil)
    assert status == 403 and answer["error"]["detail"] == (
        "the admin page accepts its own origin only"
    )
    cross_site = same_origin(admin, Cookie=cookie, **{"Sec-Fetch-Site": "cross-site"})
    assert (await admin_call(admin, "info", {}, **cross_site))[0] == 403
    no_origin = {"Cookie": cookie, "Content-Type": "application/json"}
    status, answer = await admin_call(admin, "info", {}, **no_origin)
    assert status == 403 and "Authorization: Bearer <admin_token>" in answer["error"]["detail"]
    # A cross-site form can only send form encodings, which the API refuses.
    form = same_origin(admin, Cookie=cookie, **{"Content-Type": "text/plain"})
    assert (await admin_call(admin, "info", {}, **form))[0] == 415
    evil_login = {**same_origin(admin), "Origin": "http://evil.example"}
    status, _, _ = await http(
        admin.port, "POST", "/admin/login", {"password": PASSWORD}, evil_login
    )
    assert status == 403


async def test_only_the_pages_methods_and_only_post(admin: RunningServer) -> None:
    _, cookie = await login(admin)
    headers = same_origin(admin, Cookie=cookie)
    status, answer = await admin_call(admin, "broadcast", {"channels": ["a"], "data": 1}, **headers)
    assert status == 404 and answer["error"]["code"] == 104
    status, _, _ = await http(admin.port, "GET", "/admin/api/info", None, headers)
    assert status == 405


async def test_publish_and_disconnect_reach_clients(
    admin: RunningServer, ws_client: ClientFactory
) -> None:
    _, cookie = await login(admin)
    headers = same_origin(admin, Cookie=cookie)
    client = await ws_client(admin.ws_url)
    await client.connect(token("bob"))
    await client.subscribe("chat:admin")
    status, answer = await admin_call(
        admin, "publish", {"channel": "chat:admin", "data": {"text": "hi"}}, **headers
    )
    assert status == 200 and answer["result"]["offset"] == 1
    (publication,) = await client.publications("chat:admin", 1)
    assert publication["data"] == {"text": "hi"}
    _, answer = await admin_call(admin, "presence", {"channel": "chat:admin"}, **headers)
    assert [entry["user"] for entry in answer["result"]["presence"].values()] == ["bob"]
    _, answer = await admin_call(admin, "publish", {"channel": "chat:admin"}, **headers)
    assert answer["error"]["detail"] == "data: missing (send data, or b64data)"
    await admin_call(admin, "disconnect", {"user": "bob"}, **headers)
    assert await client.closed() == (3503, "force disconnect")


async def test_logout_clears_the_cookie(admin: RunningServer) -> None:
    status, headers, _ = await http(admin.port, "POST", "/admin/logout", {}, same_origin(admin))
    assert status == 204 and headers["set-cookie"].startswith(
        "tidings_admin=; Path=/admin; Max-Age=0"
    )


def test_sessions_are_signed_and_expire() -> None:
    page = AdminPage(None, Config(admin=True, admin_password=PASSWORD))  # type: ignore[arg-type]
    now = time.time()
    session = page.new_session(now)
    assert page.session_valid(session, now)
    assert not page.session_valid(session, now + SESSION_TTL + 1)
    version, expires, nonce, signature = session.split(".")
    forged = f"{version}.{int(expires) + 3600}.{nonce}.{signature}"
    assert not page.session_valid(forged, now)
    other = AdminPage(None, Config(admin=True, admin_password="another password!"))  # type: ignore[arg-type]
    assert not other.session_valid(session, now)
    for junk in ("", "v1", "a.b.c.d", session + "x"):
        assert not page.session_valid(junk, now)


async def test_failed_logins_are_throttled(admin: RunningServer) -> None:
    for _ in range(10):
        assert (await login(admin, "wrong password!"))[0] == 401
    assert (await login(admin, PASSWORD))[0] == 429
    throttle = LoginThrottle(attempts=2, window=10)
    throttle.failed("ip", now=0)
    throttle.failed("ip", now=1)
    assert not throttle.allowed("ip", now=5) and throttle.allowed("ip", now=11.5)
