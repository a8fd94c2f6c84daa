"""Test signing keys and a tiny token mint: an OIDC provider in a few lines, for the token tests."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example/realms/kafka"
AUDIENCE = "kafka"


@dataclass(frozen=True)
class TestKey:
    kid: str
    private: Any
    alg: str

    def jwk(self, **extra) -> dict:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            body = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            body = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            body = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**body, "kid": self.kid, "use": "sig", **extra}

    def sign(self, claims: dict, *, alg: str | None = None, headers: dict | None = None, kid: str | None = "own") -> str:
        header = {"kid": self.kid} if kid == "own" else ({"kid": kid} if kid else {})
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers={**header, **(headers or {})})


@cache
def rsa_key(kid: str = "rsa-1", bits: int = 2048) -> TestKey:
    return TestKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits), "RS256")


@cache
def ec_key(kid: str = "ec-1", curve: str = "P-256") -> TestKey:
    curves = {"P-256": (ec.SECP256R1(), "ES256"), "P-384": (ec.SECP384R1(), "ES384"), "P-521": (ec.SECP521R1(), "ES512")}
    c, alg = curves[curve]
    return TestKey(kid, ec.generate_private_key(c), alg)


@cache
def ed_key(kid: str = "ed-1") -> TestKey:
    return TestKey(kid, ed25519.Ed25519PrivateKey.generate(), "EdDSA")


def jwks(*keys: TestKey) -> dict:
    return {"keys": [k.jwk() for k in keys]}


def claims(now: float | None = None, **overrides) -> dict:
    now = time.time() if now is None else now
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "orders-service", "exp": now + 300, "iat": now, "azp": "orders",
            "jti": "j-1", "groups": ["/payments", "audit"]}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
