"""Tokens verified with keys from a JWKS served over real HTTP, including a key rotation."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jwt
import pytest

from tests.conftest import ClientFactory, StartServer
from tests.support.jwks import JwksServer
from tests.support.keys import EC_KEY, RSA_KEY, rsa_key


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
    new_key, _ = rsa_key()
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
