"""Token verification with an injected clock: no sleeping to make a token expire."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from tests.support.keys import EC_KEY, EC_PUBLIC, RSA_KEY, RSA_PUBLIC
from tidings.auth import TokenError, TokenVerifier, make_token

SECRET = "unit-test-secret-0123456789abcdef0123"
NOW = 1_800_000_000.0


def verifier(**kwargs: object) -> TokenVerifier:
    return TokenVerifier(hmac_secret=SECRET, clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


def sign(claims: dict[str, object], algorithm: str = "HS256", key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def test_connect_token_claims() -> None:
    token = sign(
        {
            "sub": "42",
            "exp": NOW + 60,
            "info": {"name": "Ann"},
            "channels": ["news"],
            "subs": {"chat": {"info": {"r": 1}, "override": {"presence": {"value": False}}}},
            "meta": {"secret": True},
        }
    )
    claims = verifier().verify_connect_token(token)
    assert claims.user == "42" and claims.expire_at == int(NOW + 60)
    assert claims.info == b'{"name":"Ann"}' and claims.channels == ("news",)
    assert claims.subs["chat"].info == b'{"r":1}' and claims.subs["chat"].override.presence is False


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms(algorithm: str) -> None:
    assert verifier().verify_connect_token(sign({"sub": "a"}, algorithm)).user == "a"


def test_algorithm_is_pinned_by_configuration() -> None:
    token = sign({"sub": "a"}, "HS512")
    with pytest.raises(TokenError):
        verifier(algorithms=["HS256"]).verify_connect_token(token)


def test_expiry_and_not_before_use_the_clock() -> None:
    expired = sign({"sub": "a", "exp": NOW - 5})
    with pytest.raises(TokenError) as raised:
        verifier().verify_connect_token(expired)
    assert raised.value.expired
    early = sign({"sub": "a", "nbf": NOW + 60})
    with pytest.raises(TokenError) as raised:
        verifier().verify_connect_token(early)
    assert not raised.value.expired
    assert verifier().verify_connect_token(sign({"sub": "a", "nbf": NOW})).user == "a"


def test_expire_at_replaces_exp_as_connection_expiry() -> None:
    claims = verifier().verify_connect_token(sign({"sub": "a", "exp": NOW + 60, "expire_at": 0}))
    assert claims.expire_at is None


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b64({"alg": "none"}) + "." + b64({"sub": "a"}) + ".", id="alg-none"),
        pytest.param(sign({"sub": "a"}, key="another-key-0123456789abcdef012345"), id="wrong-key"),
        pytest.param(sign({"sub": "a"})[:-2] + "xx", id="tampered"),
        pytest.param("a.b", id="malformed"),
        pytest.param("", id="empty"),
        pytest.param("x" * 20000, id="oversized"),
        pytest.param(sign({"sub": 42}), id="non-string-sub"),
        pytest.param(sign({"sub": "a", "exp": "tomorrow"}), id="non-numeric-exp"),
        pytest.param(sign({"sub": "a", "channel": "x"}), id="subscription-token"),
        pytest.param(sign({"sub": "a", "channels": "x"}), id="channels-not-a-list"),
    ],
)
def test_bad_connect_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verifier().verify_connect_token(token)


def test_audience_and_issuer_when_configured() -> None:
    strict = verifier(audience="tidings", issuer="https://auth.example")
    good = sign({"sub": "a", "aud": "tidings", "iss": "https://auth.example"})
    assert strict.verify_connect_token(good).user == "a"
    for claims in (
        {"sub": "a", "aud": "other", "iss": "https://auth.example"},
        {"sub": "a", "aud": "tidings"},
    ):
        with pytest.raises(TokenError):
            strict.verify_connect_token(sign(claims))


def test_subscription_token() -> None:
    token = make_token(SECRET, user="a", channel="$vip", ttl=60, info={"x": 1}, clock=lambda: NOW)
    claims = verifier().verify_subscription_token(token)
    assert (claims.user, claims.channel, claims.expire_at) == ("a", "$vip", int(NOW + 60))
    assert claims.info == b'{"x":1}'
    with pytest.raises(TokenError):
        verifier().verify_subscription_token(sign({"sub": "a"}))


def test_no_secret_means_no_token_is_valid() -> None:
    with pytest.raises(TokenError):
        TokenVerifier(hmac_secret="").verify_connect_token(sign({"sub": "a"}))


# --------------------------------------------------------------------------- asymmetric keys


ALL = ["HS256", "RS256", "RS384", "RS512", "PS256", "ES256"]


@pytest.mark.parametrize("algorithm", ["RS256", "RS384", "RS512", "PS256"])
def test_rsa_tokens(algorithm: str) -> None:
    checker = verifier(rsa_public_key=RSA_PUBLIC, algorithms=ALL)
    token = jwt.encode({"sub": "r"}, RSA_KEY, algorithm=algorithm)  # type: ignore[arg-type]
    assert checker.verify_connect_token(token).user == "r"


def test_ecdsa_tokens() -> None:
    checker = verifier(ecdsa_public_key=EC_PUBLIC, algorithms=ALL)
    token = jwt.encode({"sub": "e"}, EC_KEY, algorithm="ES256")  # type: ignore[arg-type]
    assert checker.verify_connect_token(token).user == "e"


def test_public_key_from_a_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "rsa.pem"
    path.write_text(RSA_PUBLIC)
    checker = verifier(rsa_public_key=str(path), algorithms=ALL)
    token = jwt.encode({"sub": "f"}, RSA_KEY, algorithm="RS256")  # type: ignore[arg-type]
    assert checker.verify_connect_token(token).user == "f"


def test_hs_rs_key_confusion_is_refused() -> None:
    """HS256 signed with the RSA *public* key as secret must not verify."""
    import base64
    import hashlib
    import hmac

    header = b64({"alg": "HS256", "typ": "JWT"})
    payload = b64({"sub": "mallory"})
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(RSA_PUBLIC.encode(), signing_input, hashlib.sha256).digest()
    forged = f"{header}.{payload}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    checker = TokenVerifier(rsa_public_key=RSA_PUBLIC, algorithms=ALL, clock=lambda: NOW)
    with pytest.raises(TokenError):
        checker.verify_connect_token(forged)


def test_rs_token_is_refused_when_rs_is_not_configured() -> None:
    checker = verifier(rsa_public_key=RSA_PUBLIC, algorithms=["HS256"])
    token = jwt.encode({"sub": "r"}, RSA_KEY, algorithm="RS256")  # type: ignore[arg-type]
    with pytest.raises(TokenError, match="algorithm not allowed"):
        checker.verify_connect_token(token)


def test_ecdsa_token_against_rsa_key_fails() -> None:
    checker = verifier(rsa_public_key=RSA_PUBLIC, algorithms=ALL)
    token = jwt.encode({"sub": "e"}, EC_KEY, algorithm="ES256")  # type: ignore[arg-type]
    with pytest.raises(TokenError):
        checker.verify_connect_token(token)


def jwks_document() -> dict[str, object]:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))  # type: ignore[attr-defined]
    rsa_jwk.update(kid="rsa-1", use="sig")
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))  # type: ignore[attr-defined]
    ec_jwk.update(kid="ec-1")
    return {"keys": [rsa_jwk, ec_jwk, {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}, {"junk": 1}]}


def test_jwks_keys_are_chosen_by_kid() -> None:
    checker = TokenVerifier(algorithms=ALL, clock=lambda: NOW)
    assert checker.set_jwks(jwks_document()) == 2  # the symmetric and the junk entries are ignored
    rsa_token = jwt.encode({"sub": "r"}, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})  # type: ignore[arg-type]
    ec_token = jwt.encode({"sub": "e"}, EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})  # type: ignore[arg-type]
    assert checker.verify_connect_token(rsa_token).user == "r"
    assert checker.verify_connect_token(ec_token).user == "e"
    wrong_family = jwt.encode({"sub": "x"}, EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"})  # type: ignore[arg-type]
    with pytest.raises(TokenError):
        checker.verify_connect_token(wrong_family)
    from tidings.auth import UnknownKeyId

    unknown = jwt.encode({"sub": "x"}, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-2"})  # type: ignore[arg-type]
    with pytest.raises(UnknownKeyId):
        checker.verify_connect_token(unknown)
    symmetric = jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": "sym"})
    with pytest.raises(TokenError):
        checker.verify_connect_token(symmetric)
