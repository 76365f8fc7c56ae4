"""The centrifuge-js bundle inside the package is the npm package's file, byte for byte."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tidings.server.app import find_centrifuge_js

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO / "src" / "tidings" / "demo" / "vendor"


def vendored_version() -> str:
    match = re.match(r"centrifuge (\S+)\n", (VENDOR / "VERSION").read_text())
    assert match, "VERSION must start with 'centrifuge <version>'"
    return match.group(1)


def test_version_note_matches_the_version_the_lock_file_pins() -> None:
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/centrifuge"]["version"] == vendored_version()


def test_version_note_carries_the_file_hash_and_the_licence() -> None:
    bundle = (VENDOR / "centrifuge.js").read_bytes()
    note = (VENDOR / "VERSION").read_text()
    assert f"sha256: {hashlib.sha256(bundle).hexdigest()}\n" in note
    licence = (VENDOR / "LICENSE").read_text()
    assert "The MIT License" in licence and "Centrifugal Labs" in licence


def test_the_server_serves_the_packaged_file() -> None:
    assert find_centrifuge_js() == VENDOR / "centrifuge.js"


@pytest.mark.node
def test_byte_identical_to_the_npm_package_of_that_version() -> None:
    installed = REPO / "node_modules" / "centrifuge"
    if not (installed / "package.json").is_file():
        pytest.skip("npm packages are not installed (make test runs npm ci)")
    version = json.loads((installed / "package.json").read_text())["version"]
    assert version == vendored_version(), (
        f"node_modules has centrifuge {version}, the vendored bundle is {vendored_version()}: "
        "copy node_modules/centrifuge/dist/centrifuge.js into src/tidings/demo/vendor and "
        "update its VERSION note"
    )
    npm_file = (installed / "dist" / "centrifuge.js").read_bytes()
    assert (VENDOR / "centrifuge.js").read_bytes() == npm_file
