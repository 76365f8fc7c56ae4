"""Tokens verified with keys from a JWKS served over real HTTP, including a key rotation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

from tests.conftest import ClientFactory, StartServer
from tests.unit.test_auth import EC_KEY, RSA_KEY, _rsa


class JwksServer:
    def __init__(self) -> None:
        self.document: dict[str, object] = {"keys": []}
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def jwk(key: object, kid: str, algorithm: type) -> dict[str, object]:
    entry = json.loads(algorithm.to_jwk(key.public_key()))  # type: ignore[attr-defined]
    entry["kid"] = kid
    return entry


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.document = {
        "keys": [
            jwk(RSA_KEY, "rsa-1", jwt.algorithms.RSAAlgorithm),
            jwk(EC_KEY, "ec-1", jwt.algorithms.ECAlgorithm),
        ]
    }
    yield server
    server.close()


async def test_jwks_tokens_and_rotation(
    start_server: StartServer, ws_client: ClientFactory, jwks: JwksServer
) -> None:
    server = await start_server(token_hmac_secret="", token_jwks_url=jwks.url)
    assert server.node.jwks is not None
    server.node.jwks.min_refetch_interval = 0.0
    client = await ws_client(server.ws_url)
    token = jwt.encode({"sub": "rita"}, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})  # type: ignore[arg-type]
    assert (await client.connect(token))["client"]
    ec_client = await ws_client(server.ws_url)
    ec_token = jwt.encode({"sub": "eve"}, EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})  # type: ignore[arg-type]
    assert (await ec_client.connect(ec_token))["client"]

    # The identity provider rotates to a new key: the unknown kid triggers one refetch.
    new_key, _ = _rsa()
    jwks.document = {"keys": [jwk(new_key, "rsa-2", jwt.algorithms.RSAAlgorithm)]}
    before = jwks.requests
    rotated = await ws_client(server.ws_url)
    token = jwt.encode({"sub": "rita"}, new_key, algorithm="RS256", headers={"kid": "rsa-2"})  # type: ignore[arg-type]
    assert (await rotated.connect(token))["client"]
    assert jwks.requests == before + 1

    # A kid nobody knows is refused with 3500, after at most one more fetch.
    stranger = await ws_client(server.ws_url)
    forged = jwt.encode({"sub": "x"}, new_key, algorithm="RS256", headers={"kid": "nope"})  # type: ignore[arg-type]
    await stranger.send({"connect": {"token": forged}, "id": 1})
    assert await stranger.closed() == (3500, "invalid token")
