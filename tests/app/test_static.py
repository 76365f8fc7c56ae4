"""``rt.static(prefix, directory)``: an application's pages on the standalone server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import StartApp, make_config
from tests.support.http import http
from tidings import Tidings


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<h1>chat</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / ".secret").write_text("hidden")
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "site.css").write_text("body{}")
    (tmp_path.parent / "outside.txt").write_text("nope")
    return tmp_path


async def test_static_files_are_served_and_nothing_else(site: Path, start_app: StartApp) -> None:
    rt = Tidings(make_config(demo="on"))
    rt.static("/", site)
    server = await start_app(rt)
    status, headers, body = await http(server.port, "GET", "/")
    assert (status, body) == (200, b"<h1>chat</h1>")  # the application's page, not the demo
    assert headers["content-type"].startswith("text/html")
    status, headers, body = await http(server.port, "GET", "/app.js")
    assert status == 200 and "javascript" in headers["content-type"]
    assert (await http(server.port, "GET", "/css/site.css"))[2] == b"body{}"
    for path in ("/.secret", "/../outside.txt", "/css/../../outside.txt", "/missing.js"):
        assert (await http(server.port, "GET", path))[0] == 404, path
    assert (await http(server.port, "POST", "/app.js", b"x"))[0] == 405
    assert (await http(server.port, "GET", "/health"))[0] == 200  # built-in routes still win


def test_static_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        Tidings(make_config()).static("/", tmp_path / "nowhere")
