"""Asymmetric signing keys for token tests, made once per test process.

Generating an RSA key takes a noticeable moment, so the suites share
:data:`RSA_KEY` and :data:`EC_KEY`; a test that needs a key nobody else knows
(a rotation) makes one with :func:`rsa_key`.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def public_pem(key: Any) -> str:
    """The PEM (SubjectPublicKeyInfo) of a private key's public half."""
    public: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


def rsa_key() -> tuple[Any, str]:
    """A fresh 2048-bit RSA private key and its public PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, public_pem(key)


def ec_key() -> tuple[Any, str]:
    """A fresh P-256 private key and its public PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, public_pem(key)


RSA_KEY, RSA_PUBLIC = rsa_key()
EC_KEY, EC_PUBLIC = ec_key()
