"""Token verification with an injected clock: no sleeping to make a token expire."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

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
