"""JWT verification: tokens in, credentials out. Pure: the clock is injected.

PyJWT checks the signature with the algorithms the configuration pins (never
the one a token names); time claims are checked here against the injected
clock, so tests can move time without sleeping.
"""

from __future__ import annotations

import logging
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


class TokenVerifier:
    """Verifies connection and subscription JWTs against configured keys."""

    def __init__(
        self,
        *,
        hmac_secret: str = "",
        algorithms: list[str] | tuple[str, ...] = ("HS256", "HS384", "HS512"),
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
        self._algorithms = [a for a in algorithms if a.startswith("HS")]
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._clock = clock

    @property
    def configured(self) -> bool:
        return bool(self._secret and self._algorithms)

    def _decode(self, token: str) -> dict[str, Any]:
        if not self.configured:
            raise TokenError("no token key configured")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token too long")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token ({exc.__class__.__name__})") from None
        now = self._clock()
        exp = claims.get("exp")
        if exp is not None:
            if not isinstance(exp, int | float) or isinstance(exp, bool):
                raise TokenError("exp is not a number")
            if exp + self._leeway <= now:
                raise TokenError("token expired", expired=True)
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                raise TokenError("nbf is not a number")
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
            return value or None
        exp = claims.get("exp")
        return int(exp) if exp is not None else None

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
