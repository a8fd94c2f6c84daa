"""An OIDC provider's signing keys: a strict JWKS parser and a fail-closed cache (sans-io).

`KeySet.from_jwks` accepts only public signing keys the appliance can trust:
RSA of at least 2048 bits, EC on P-256/P-384/P-521, and Ed25519. A symmetric
(`oct`) key or any private key material makes the whole document an error: a
provider that publishes either is misconfigured, and HMAC-signed tokens are
never accepted. Keys for another use (`use: enc`, an encryption `alg`) are
skipped and reported.

`JwksCache` decides when to fetch; the I/O shell (`appliance.identity.oidc`)
does the fetching and tells it the outcome. Time is always an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from appliance.identity import strict_json

MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
MIN_RSA_BITS = 2048

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_ALGORITHMS = {"Ed25519": "EdDSA"}
SIGNING_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | frozenset(OKP_ALGORITHMS.values())

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class JwksError(ValueError):
    """A JWKS document that cannot be used, naming the key and what was wrong."""


@dataclass(frozen=True, slots=True)
class Key:
    """One public signing key and the JWS algorithms it may verify."""

    kid: str | None
    kty: str  # RSA, EC or OKP
    curve: str | None  # P-256 / P-384 / P-521 / Ed25519; None for RSA
    algorithms: frozenset[str]
    public_key: Any = field(repr=False, compare=False)  # a cryptography public key object
    bits: int | None = None

    def describe(self) -> str:
        shape = f"RSA {self.bits}" if self.kty == "RSA" else f"{self.kty} {self.curve}"
        kid = "no kid" if self.kid is None else f"kid {self.kid!r}"
        return f"{shape} key ({kid}, verifies {', '.join(sorted(self.algorithms))})"


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[Key, ...]
    ignored: tuple[str, ...] = ()  # one line per key skipped, saying why

    @classmethod
    def from_jwks(cls, body: bytes | dict, *, max_bytes: int = MAX_JWKS_BYTES) -> "KeySet":
        if isinstance(body, (bytes, bytearray)):
            if len(body) > max_bytes:
                raise JwksError(f"JWKS is {len(body)} bytes, more than the {max_bytes} allowed")
            try:
                body = strict_json.loads(bytes(body))
            except strict_json.JsonError as e:
                raise JwksError(f"JWKS is {e}") from None
        if not isinstance(body, dict):
            raise JwksError(f"JWKS must be a JSON object with a 'keys' list, got {type(body).__name__}")
        raw_keys = body.get("keys")
        if not isinstance(raw_keys, list):
            raise JwksError("JWKS has no 'keys' list")
        if len(raw_keys) > MAX_KEYS:
            raise JwksError(f"JWKS has {len(raw_keys)} keys, more than the {MAX_KEYS} allowed")
        keys: list[Key] = []
        ignored: list[str] = []
        seen: set[str] = set()
        for index, jwk in enumerate(raw_keys):
            key_or_reason = _parse_key(jwk, index)
            if isinstance(key_or_reason, str):
                ignored.append(key_or_reason)
                continue
            if key_or_reason.kid is not None:
                if key_or_reason.kid in seen:
                    raise JwksError(f"JWKS key {index}: kid {key_or_reason.kid!r} is used by more than one signing key")
                seen.add(key_or_reason.kid)
            keys.append(key_or_reason)
        return cls(tuple(keys), tuple(ignored))

    def find(self, kid: str | None) -> Key | None:
        """The key a token's kid names; without a kid, the only key, if there is exactly one."""
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        return next((k for k in self.keys if k.kid == kid), None)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self.keys if k.kid is not None)


def _parse_key(jwk: Any, index: int) -> Key | str:
    """A usable key, or a line saying why this entry is skipped; a JwksError for a dangerous one."""
    where = f"JWKS key {index}"
    if not isinstance(jwk, dict):
        raise JwksError(f"{where}: must be a JSON object, got {type(jwk).__name__}")
    kid = jwk.get("kid")
    if kid is not None:
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise JwksError(f"{where}: 'kid' must be a string of 1-256 characters")
        where += f" (kid {kid!r})"
    kty = jwk.get("kty")
    if kty == "oct":
        raise JwksError(
            f"{where}: kty 'oct' is a symmetric secret; a JWKS publishes public keys only, "
            "and HMAC-signed tokens are never accepted"
        )
    private = [m for m in _PRIVATE_MEMBERS if m in jwk]
    if private:
        raise JwksError(f"{where}: holds private key material ({', '.join(private)}); publish the public key only")
    use = jwk.get("use")
    if use is not None and use != "sig":
        return f"{where}: skipped, use {use!r} is not 'sig'"
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return f"{where}: skipped, key_ops does not include 'verify'"
    alg = jwk.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise JwksError(f"{where}: 'alg' must be a string")
    if alg is not None and alg.upper().startswith("HS"):
        raise JwksError(f"{where}: alg {alg!r} is HMAC; HMAC-signed tokens are never accepted")
    if alg is not None and alg not in SIGNING_ALGORITHMS:
        return f"{where}: skipped, alg {alg!r} is not a supported signing algorithm"
    try:
        if kty == "RSA":
            public = RSAAlgorithm.from_jwk(jwk)
            if not isinstance(public, rsa.RSAPublicKey):
                raise JwksError(f"{where}: not an RSA public key")
            if public.key_size < MIN_RSA_BITS:
                raise JwksError(f"{where}: RSA key of {public.key_size} bits is weaker than the {MIN_RSA_BITS} required")
            algorithms, curve, bits = RSA_ALGORITHMS, None, public.key_size
        elif kty == "EC":
            curve = jwk.get("crv")
            if curve not in EC_ALGORITHMS:
                raise JwksError(f"{where}: EC curve {curve!r} is not supported; use P-256, P-384 or P-521")
            public = ECAlgorithm.from_jwk(jwk)
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise JwksError(f"{where}: not an EC public key")
            algorithms, bits = frozenset({EC_ALGORITHMS[curve]}), None
        elif kty == "OKP":
            curve = jwk.get("crv")
            if curve not in OKP_ALGORITHMS:
                raise JwksError(f"{where}: OKP curve {curve!r} is not supported; use Ed25519")
            public = OKPAlgorithm.from_jwk(jwk)
            if not isinstance(public, ed25519.Ed25519PublicKey):
                raise JwksError(f"{where}: not an Ed25519 public key")
            algorithms, bits = frozenset({OKP_ALGORITHMS[curve]}), None
        else:
            raise JwksError(f"{where}: kty {kty!r} is not supported; use RSA, EC or OKP")
    except JwksError:
        raise
    except Exception as e:  # PyJWT and cryptography raise several types for one bad key
        raise JwksError(f"{where}: not a valid {kty} public key ({type(e).__name__}: {str(e)[:120]})") from None
    if alg is not None:
        if alg not in algorithms:
            raise JwksError(f"{where}: alg {alg!r} cannot be used with a {kty} {curve or ''} key".replace("  ", " "))
        algorithms = frozenset({alg})
    return Key(kid=kid, kty=kty, curve=curve, algorithms=frozenset(algorithms), public_key=public, bits=bits)


# --- the cache ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchNeeded:
    """Fetch the JWKS now (and look up again after `fetched` or `failed`)."""

    reason: str


@dataclass(frozen=True, slots=True)
class KeysUnavailable:
    """No key can be trusted now: nothing validates (fail closed)."""

    reason: str


@dataclass(frozen=True, slots=True)
class KeyNotFound:
    """The keys are current and none is the one the token names."""

    reason: str


class JwksCache:
    """When to fetch a provider's keys and which to trust, given the time.

    - Periodic refresh: `due(now)` once the keys are `max_age_s` old.
    - Rotation: an unknown kid asks for a fetch, at most once per
      `min_refetch_interval_s`, so random kids cannot make it hammer the provider.
    - Failure: fetches back off exponentially from `backoff_initial_s` to
      `backoff_max_s`; cached keys stay trusted until `keys_valid_for_s` after the
      last successful fetch, then nothing validates, and every lookup names the
      last error.
    """

    def __init__(
        self,
        max_age_s: float = 300,
        keys_valid_for_s: float = 3600,
        min_refetch_interval_s: float = 10,
        backoff_initial_s: float = 1,
        backoff_max_s: float = 60,
    ) -> None:
        for name, value in (("max_age_s", max_age_s), ("keys_valid_for_s", keys_valid_for_s),
                            ("min_refetch_interval_s", min_refetch_interval_s),
                            ("backoff_initial_s", backoff_initial_s), ("backoff_max_s", backoff_max_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"JWKS cache {name} must be a finite number >= 0, got {value!r}")
        if keys_valid_for_s < max_age_s:
            raise ValueError(f"JWKS cache keys_valid_for_s ({keys_valid_for_s}) must be at least max_age_s ({max_age_s})")
        self.max_age_s = max_age_s
        self.keys_valid_for_s = keys_valid_for_s
        self.min_refetch_interval_s = min_refetch_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.keyset: KeySet | None = None
        self.fetched_at: float | None = None
        self.last_error: str | None = None
        self.failures = 0  # consecutive
        self._next_attempt_at = -math.inf

    def _may_fetch(self, now: float) -> bool:
        return now >= self._next_attempt_at

    def _trusted(self, now: float) -> bool:
        return self.keyset is not None and self.fetched_at is not None and now - self.fetched_at <= self.keys_valid_for_s

    def _unavailable(self, now: float) -> KeysUnavailable:
        error = f"; last error: {self.last_error}" if self.last_error else ""
        if self.keyset is None:
            return KeysUnavailable(f"no signing keys have been fetched from the provider yet{error}")
        age = now - (self.fetched_at or now)
        return KeysUnavailable(
            f"signing keys were last fetched {age:.0f} s ago, longer than the {self.keys_valid_for_s:.0f} s "
            f"they are trusted without a refresh{error}"
        )

    def due(self, now: float) -> bool:
        """A periodic (or first, or retried) fetch is due now."""
        if not self._may_fetch(now):
            return False
        return self.fetched_at is None or now - self.fetched_at >= self.max_age_s

    def lookup(self, kid: str | None, now: float) -> Key | FetchNeeded | KeysUnavailable | KeyNotFound:
        if not self._trusted(now):
            if self._may_fetch(now):
                return FetchNeeded("no current signing keys")
            return self._unavailable(now)
        key = self.keyset.find(kid)
        if key is not None:
            return key
        if self._may_fetch(now):
            return FetchNeeded(f"kid {kid!r} is not among the cached keys" if kid else "token has no kid")
        # After a failed refetch the key may exist at the provider: say so.
        error = f"; the last refetch failed: {self.last_error}" if self.last_error else ""
        if kid is None:
            return KeyNotFound(
                f"the token has no kid and the provider publishes {len(self.keyset.keys)} signing keys; "
                f"a token without kid is accepted only when there is exactly one{error}"
            )
        known = ", ".join(repr(k) for k in self.keyset.kids) or "none"
        shown = kid if len(kid) <= 64 else kid[:64] + "..."
        return KeyNotFound(f"kid {shown!r} is not one of the provider's signing keys (known: {known}){error}")

    def fetched(self, keyset: KeySet, now: float) -> None:
        self.keyset = keyset
        self.fetched_at = now
        self.last_error = None
        self.failures = 0
        self._next_attempt_at = now + self.min_refetch_interval_s

    def failed(self, reason: str, now: float) -> None:
        self.last_error = reason
        self.failures += 1
        backoff = min(self.backoff_initial_s * 2 ** min(self.failures - 1, 62), self.backoff_max_s)
        self._next_attempt_at = now + backoff

    @property
    def next_attempt_at(self) -> float:
        return self._next_attempt_at
