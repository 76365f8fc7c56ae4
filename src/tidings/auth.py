"""JWT verification: tokens in, credentials out. Pure: the clock is injected.

PyJWT checks the signature with the algorithms the configuration pins (never
the one a token names); time claims are checked here against the injected
clock, so tests can move time without sleeping. JWKS documents are fetched
elsewhere (:mod:`tidings.jwks`) and handed in with :meth:`TokenVerifier.set_jwks`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import jwt.warnings
import msgspec

from tidings.errors import TidingsError

log = logging.getLogger("tidings.auth")

# PyJWT warns on every call with a short HMAC key; tidings warns once, at start.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)

MIN_HMAC_SECRET_BYTES = 32

MAX_TIME = 253402300799
"""9999-12-31T23:59:59Z: later expiry times are refused (connection) or mean "never" (exp)."""


def _is_time(value: object) -> bool:
    """A JSON number usable as a Unix time: not a bool, not NaN, not infinite."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) <= 1e15
    )


Clock = Callable[[], float]

MAX_TOKEN_LENGTH = 16 * 1024
"""Longer tokens are refused before any parsing."""


class TokenError(TidingsError):
    """A token cannot be used. ``expired`` tells the SDK to fetch a new one (code 109)."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True, slots=True)
class SubscriptionOverride:
    """Per-channel switches a token may force on or off (``override`` claim)."""

    presence: bool | None = None
    join_leave: bool | None = None
    force_push_join_leave: bool | None = None
    force_recovery: bool | None = None
    force_positioning: bool | None = None


@dataclass(frozen=True, slots=True)
class TokenSubscription:
    """One entry of a connection token's ``subs`` claim."""

    info: bytes = b""
    data: bytes = b""
    override: SubscriptionOverride = field(default_factory=SubscriptionOverride)


@dataclass(frozen=True, slots=True)
class ConnectToken:
    user: str
    expire_at: int | None
    """Unix time the connection expires, or ``None`` for never."""
    info: bytes = b""
    channels: tuple[str, ...] = ()
    subs: dict[str, TokenSubscription] = field(default_factory=dict)
    meta: bytes = b""


@dataclass(frozen=True, slots=True)
class SubscriptionToken:
    user: str
    channel: str
    client: str
    expire_at: int | None
    info: bytes = b""
    data: bytes = b""
    override: SubscriptionOverride = field(default_factory=SubscriptionOverride)


def _raw_json(value: Any) -> bytes:
    return b"" if value is None else msgspec.json.encode(value)


def _override(claim: Any) -> SubscriptionOverride:
    if not isinstance(claim, dict):
        return SubscriptionOverride()

    def flag(name: str) -> bool | None:
        entry = claim.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("value"), bool):
            return bool(entry["value"])
        return None

    return SubscriptionOverride(
        presence=flag("presence"),
        join_leave=flag("join_leave"),
        force_push_join_leave=flag("force_push_join_leave"),
        force_recovery=flag("force_recovery"),
        force_positioning=flag("force_positioning"),
    )


HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = frozenset({"ES256", "ES384", "ES512"})
OKP_ALGORITHMS = frozenset({"EdDSA"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | EC_ALGORITHMS | OKP_ALGORITHMS
_JWK_TYPES = {"RSA": RSA_ALGORITHMS, "EC": EC_ALGORITHMS, "OKP": OKP_ALGORITHMS}


class UnknownKeyId(TokenError):
    """The token names a ``kid`` the JWKS does not hold (yet): refresh the set, then retry."""


def load_public_key(pem: str) -> Any:
    """A PEM public key (RSA or EC) from its text or from a file path."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = pem.strip()
    if not text.startswith("-----BEGIN"):
        with open(text, encoding="ascii") as file:
            text = file.read()
    return load_pem_public_key(text.encode())


class TokenVerifier:
    """Verifies connection and subscription JWTs against configured keys.

    The algorithm a token names selects a key *family* only among the
    configured algorithms: HMAC tokens are checked with the shared secret and
    nothing else, RSA/ECDSA tokens with public keys only, so a token signed
    with HS256 over a public key (the classic key-confusion attack) never
    verifies. ``alg: none`` is never accepted. A ``kid`` is used only to look a
    key up in the JWKS.
    """

    def __init__(
        self,
        *,
        hmac_secret: str = "",
        algorithms: list[str] | tuple[str, ...] = ("HS256", "HS384", "HS512"),
        rsa_public_key: str = "",
        ecdsa_public_key: str = "",
        audience: str = "",
        issuer: str = "",
        leeway: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        self._secret = hmac_secret
        if hmac_secret and len(hmac_secret.encode()) < MIN_HMAC_SECRET_BYTES:
            log.warning(
                "the token HMAC secret is shorter than %d bytes: use a longer random secret",
                MIN_HMAC_SECRET_BYTES,
            )
        self._algorithms = frozenset(algorithms) & SUPPORTED_ALGORITHMS
        self._rsa_keys = [load_public_key(rsa_public_key)] if rsa_public_key else []
        self._ec_keys = [load_public_key(ecdsa_public_key)] if ecdsa_public_key else []
        self._jwks: dict[str, tuple[str, Any]] = {}
        self._jwks_unnamed: list[tuple[str, Any]] = []
        self.jwks_configured = False
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._clock = clock

    @property
    def configured(self) -> bool:
        return bool(
            self._algorithms
            and (self._secret or self._rsa_keys or self._ec_keys or self.jwks_configured)
        )

    def set_jwks(self, document: dict[str, Any]) -> int:
        """Replace the JWKS keys; returns how many usable keys it held."""
        keys: dict[str, tuple[str, Any]] = {}
        unnamed: list[tuple[str, Any]] = []
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue
            kty = str(entry.get("kty", ""))
            if kty not in _JWK_TYPES:
                continue
            kid = entry.get("kid")
            if isinstance(kid, str) and kid:
                keys[kid] = (kty, jwk.key)
            else:
                unnamed.append((kty, jwk.key))
        self._jwks = keys
        self._jwks_unnamed = unnamed
        self.jwks_configured = True
        return len(keys) + len(unnamed)

    def _keys_for(self, algorithm: str, kid: str | None) -> list[Any]:
        if algorithm in HMAC_ALGORITHMS:
            return [self._secret] if self._secret else []
        family = next(kty for kty, algs in _JWK_TYPES.items() if algorithm in algs)
        if kid is not None and self.jwks_configured:
            entry = self._jwks.get(kid)
            if entry is None:
                raise UnknownKeyId(f"unknown kid {kid[:64]!r}")
            return [entry[1]] if entry[0] == family else []
        keys = list(self._rsa_keys if family == "RSA" else self._ec_keys if family == "EC" else [])
        keys += [key for kty, key in self._jwks_unnamed if kty == family]
        keys += [key for kty, key in self._jwks.values() if kty == family]
        return keys

    def _decode(self, token: str) -> dict[str, Any]:
        if not self.configured:
            raise TokenError("no token key configured")
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token empty or too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token ({exc.__class__.__name__})") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise TokenError("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("kid is not a string")
        keys = self._keys_for(algorithm, kid)
        if not keys:
            raise TokenError(f"no key for {algorithm}")
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    options={
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                    },
                )
                break
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # not this key (another curve or size): try the next one
            except jwt.PyJWTError as exc:
                raise TokenError(f"invalid token ({exc.__class__.__name__})") from None
        if claims is None:
            raise TokenError("invalid signature")
        now = self._clock()
        exp = claims.get("exp")
        if exp is not None:
            if not _is_time(exp):
                raise TokenError("exp is not a finite number")
            if exp + self._leeway <= now:
                raise TokenError("token expired", expired=True)
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_time(nbf):
                raise TokenError("nbf is not a finite number")
            if nbf - self._leeway > now:
                raise TokenError("token not yet valid")
        if self._audience:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if self._audience not in audiences:
                raise TokenError("audience mismatch")
        if self._issuer and claims.get("iss") != self._issuer:
            raise TokenError("issuer mismatch")
        sub = claims.get("sub", "")
        if not isinstance(sub, str):
            raise TokenError("sub is not a string")
        return claims

    @staticmethod
    def _expire_at(claims: dict[str, Any]) -> int | None:
        if "expire_at" in claims:
            value = claims["expire_at"]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TokenError("expire_at is not a non-negative integer")
            if value > MAX_TIME:
                raise TokenError("expire_at is too far in the future")
            return value or None
        exp = claims.get("exp")
        if exp is None or exp > MAX_TIME:
            return None  # beyond any ttl the protocol can carry: never expires
        return int(exp)

    def verify_connect_token(self, token: str) -> ConnectToken:
        claims = self._decode(token)
        if "channel" in claims:
            raise TokenError("a subscription token was used to connect")
        channels = claims.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise TokenError("channels is not a list of strings")
        subs_claim = claims.get("subs", {})
        if not isinstance(subs_claim, dict):
            raise TokenError("subs is not an object")
        subs = {}
        for channel, options in subs_claim.items():
            options = options if isinstance(options, dict) else {}
            subs[str(channel)] = TokenSubscription(
                info=_raw_json(options.get("info")),
                data=_raw_json(options.get("data")),
                override=_override(options.get("override")),
            )
        return ConnectToken(
            user=claims.get("sub", ""),
            expire_at=self._expire_at(claims),
            info=_raw_json(claims.get("info")),
            channels=tuple(channels),
            subs=subs,
            meta=_raw_json(claims.get("meta")),
        )

    def verify_subscription_token(self, token: str) -> SubscriptionToken:
        claims = self._decode(token)
        channel = claims.get("channel")
        if not isinstance(channel, str) or not channel:
            raise TokenError("subscription token without a channel")
        client = claims.get("client", "")
        if not isinstance(client, str):
            raise TokenError("client is not a string")
        return SubscriptionToken(
            user=claims.get("sub", ""),
            channel=channel,
            client=client,
            expire_at=self._expire_at(claims),
            info=_raw_json(claims.get("info")),
            data=_raw_json(claims.get("data")),
            override=_override(claims.get("override")),
        )


def make_token(
    secret: str,
    *,
    user: str,
    ttl: float | None = None,
    channels: list[str] | None = None,
    info: Any = None,
    channel: str | None = None,
    algorithm: str = "HS256",
    clock: Clock = time.time,
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign a connection token (or, with ``channel``, a subscription token)."""
    now = int(clock())
    claims: dict[str, Any] = {"sub": user, "iat": now}
    if ttl is not None:
        claims["exp"] = now + int(ttl)
    if channels:
        claims["channels"] = channels
    if info is not None:
        claims["info"] = info
    if channel is not None:
        claims["channel"] = channel
    if extra:
        claims.update(extra)
    return jwt.encode(claims, secret, algorithm=algorithm)
