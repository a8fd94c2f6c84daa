"""Validating a workload's OIDC token (a JWS-signed JWT) against a provider's keys (sans-io).

PyJWT checks the signature; everything around it is checked here first, so
that each refusal says exactly what was wrong: the token's shape and size,
its header (`alg` against the allow-list and against the key the `kid`
names), then the claims, against a clock that is an argument.

HMAC (`HS*`) and `none` cannot be allowed at all: with public keys in play,
allowing HMAC lets anyone sign with the public key as the "secret".
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import jwt

from appliance.identity import strict_json
from appliance.identity.jwks import SIGNING_ALGORITHMS, Key, KeySet

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
MAX_HEADER_BYTES = 2048
MAX_CLAIM_CHARS = 256
MAX_GROUPS = 256
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# In the order the checks run; docs/workload-authentication.md has a row for each.
REJECTION_KINDS = (
    "oversized", "malformed", "alg-not-allowed", "bad-header", "unknown-kid", "bad-signature", "missing-claim",
    "wrong-issuer", "wrong-audience", "expired", "not-yet-valid", "bad-claim", "keys-unavailable",
    "inactive", "introspection-failed",  # the provider's introspection endpoint (identity/introspection.py)
)


class TokenRulesError(ValueError):
    """Token validation settings that cannot be used, naming the setting."""


@dataclass(frozen=True, slots=True)
class TokenRules:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_s: float = 30
    subject_claim: str = "sub"
    groups_claim: str = "groups"  # Entra app roles: "roles"
    client_id_claim: str = "azp"
    max_token_bytes: int = 16384
    require: tuple[str, ...] = ("exp", "iat", "sub")

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise TokenRulesError("token rules: issuer must be the provider's issuer URL, not empty")
        if isinstance(self.audiences, str) or not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise TokenRulesError("token rules: audiences must be a non-empty tuple of non-empty strings")
        if isinstance(self.algorithms, str) or not self.algorithms:
            raise TokenRulesError("token rules: algorithms must be a non-empty tuple")
        for alg in self.algorithms:
            if not isinstance(alg, str) or alg.lower() == "none":
                raise TokenRulesError("token rules: algorithm 'none' (unsigned tokens) can never be allowed")
            if alg.upper().startswith("HS"):
                raise TokenRulesError(
                    f"token rules: HMAC algorithm {alg!r} can never be allowed: tokens are verified with the "
                    "provider's public keys, and HMAC would let anyone holding a public key sign tokens"
                )
            if alg not in SIGNING_ALGORITHMS:
                raise TokenRulesError(
                    f"token rules: algorithm {alg!r} is not supported; use some of {', '.join(sorted(SIGNING_ALGORITHMS))}"
                )
        if not (isinstance(self.leeway_s, (int, float)) and math.isfinite(self.leeway_s) and 0 <= self.leeway_s <= 300):
            raise TokenRulesError(f"token rules: leeway_s must be between 0 and 300 seconds, got {self.leeway_s!r}")
        if not (isinstance(self.max_token_bytes, int) and 256 <= self.max_token_bytes <= 1 << 20):
            raise TokenRulesError(f"token rules: max_token_bytes must be 256..1048576, got {self.max_token_bytes!r}")
        for name in ("subject_claim", "groups_claim", "client_id_claim"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TokenRulesError(f"token rules: {name} must be a claim name")
        if isinstance(self.require, str) or not all(isinstance(c, str) and c for c in self.require):
            raise TokenRulesError("token rules: require must be a tuple of claim names")


@dataclass(frozen=True, slots=True)
class ValidToken:
    subject: str
    groups: tuple[str, ...]
    issuer: str
    client_id: str | None
    jti: str | None
    issued_at: float | None
    expires_at: float | None
    not_before: float | None
    key_id: str | None
    claims: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TokenRejected:
    reason: str
    kind: str  # one of REJECTION_KINDS


class _Reject(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _shown(value: Any, limit: int = 64) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _when(ts: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return f"{ts!r}"


def _b64url_json(segment: str, what: str) -> dict:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _Reject("malformed", f"token {what} is not valid base64url") from None
    try:
        value = strict_json.loads(raw)
    except strict_json.NotUtf8 as e:  # RFC 7519: UTF-8 only, or one token has two readings
        raise _Reject("malformed", f"token {what} is not UTF-8 JSON ({e.where})") from None
    except strict_json.DuplicateMember as e:  # two readings of one token are refused
        raise _Reject("malformed", f"token {what}: {e}") from None
    except strict_json.TooDeep:
        raise _Reject("malformed", f"token {what} is nested too deeply") from None
    except strict_json.JsonError:
        raise _Reject("malformed", f"token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise _Reject("malformed", f"token {what} must be a JSON object, got {type(value).__name__}")
    return value


def _segments(token: Any, max_bytes: int) -> list[str]:
    if not isinstance(token, str):
        raise _Reject("malformed", f"token must be text, got {type(token).__name__}")
    if len(token) > max_bytes:
        raise _Reject("oversized", f"token is {len(token)} bytes, more than the {max_bytes} allowed")
    parts = token.split(".")
    if len(parts) == 5:
        raise _Reject("malformed", "token is an encrypted JWT (JWE, five parts); send the signed access token (JWS)")
    if len(parts) != 3:
        raise _Reject("malformed", f"token has {len(parts)} dot-separated parts; a signed JWT has three")
    names = ("header", "payload", "signature")
    for name, part in zip(names, parts):
        if not part or not _SEGMENT.fullmatch(part):
            raise _Reject("malformed", f"token {name} is empty or not base64url")
    return parts


def _header(parts: list[str]) -> dict:
    if len(parts[0]) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise _Reject("oversized", f"token header is longer than {MAX_HEADER_BYTES} bytes")
    return _b64url_json(parts[0], "header")


def peek_header(token: str, *, max_token_bytes: int = 16384) -> dict:
    """The token's JOSE header, unverified, bounded (for the kid, before a key is chosen).

    Raises ValueError naming what was wrong.
    """
    try:
        return _header(_segments(token, max_token_bytes))
    except _Reject as e:
        raise ValueError(e.reason) from None


def _check_header(header: dict, rules: TokenRules) -> tuple[str, str | None]:
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise _Reject("malformed", "token header has no 'alg'")
    if alg.lower() == "none":
        raise _Reject("alg-not-allowed", "token is unsigned (alg 'none'); only signed tokens are accepted")
    if alg not in rules.algorithms:
        hint = " (HMAC is never accepted)" if alg.upper().startswith("HS") else ""
        raise _Reject("alg-not-allowed", f"token alg {_shown(alg, 16)} is not allowed{hint}; allowed: {', '.join(rules.algorithms)}")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
        raise _Reject("bad-header", "token header 'kid' must be a string of 1-256 characters")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise _Reject("bad-header", f"token typ {_shown(typ, 32)} is not an access token (expected JWT or at+jwt)")
    if "crit" in header or "b64" in header:
        raise _Reject("bad-header", "token header has critical extensions ('crit'/'b64'), which are not supported")
    for member in ("jku", "x5u", "jwk", "x5c"):
        # Keys named by the token itself are never trusted; only the provider's JWKS is.
        if member in header:
            raise _Reject("bad-header", f"token header carries its own key reference {member!r}; only the provider's JWKS is trusted")
    return alg, kid


def _choose_key(keys: KeySet, kid: str | None, alg: str) -> Key:
    key = keys.find(kid)
    if key is None:
        if kid is None:
            raise _Reject(
                "unknown-kid",
                f"token has no kid and the provider publishes {len(keys.keys)} signing keys; "
                "a token without kid is accepted only when there is exactly one",
            )
        known = ", ".join(repr(k) for k in keys.kids) or "none"
        raise _Reject("unknown-kid", f"token kid {_shown(kid)} is not one of the provider's signing keys (known: {known})")
    if alg not in key.algorithms:
        raise _Reject("alg-not-allowed", f"token alg {alg!r} does not match the {key.describe()}")
    return key


def _number(claims: dict, name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1e12 < value < 1e12:
        # Also refuses NaN, infinities and integers too large for a float.
        raise _Reject("bad-claim", f"token claim {name!r} must be a number of seconds since the epoch")
    return float(value)


def _text(claims: dict, name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Reject("bad-claim", f"token claim {name!r} must be a non-empty string, got {type(value).__name__}")
    if len(value) > MAX_CLAIM_CHARS:
        raise _Reject("bad-claim", f"token claim {name!r} is longer than {MAX_CLAIM_CHARS} characters")
    if _CONTROL.search(value):
        raise _Reject("bad-claim", f"token claim {name!r} contains control characters")
    return value


def _groups(claims: dict, name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _Reject("bad-claim", f"token claim {name!r} must be a list of strings or a string, got {type(value).__name__}")
    if len(value) > MAX_GROUPS:
        raise _Reject("bad-claim", f"token claim {name!r} has {len(value)} entries, more than the {MAX_GROUPS} allowed")
    groups: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _Reject("bad-claim", f"token claim {name!r} entry {index} must be a string, got {type(item).__name__}")
        group = item[1:] if item.startswith("/") else item  # Keycloak group paths: "/team" is "team"
        if not group or len(group) > MAX_CLAIM_CHARS or _CONTROL.search(group):
            raise _Reject("bad-claim", f"token claim {name!r} entry {index} must be 1-{MAX_CLAIM_CHARS} printable characters")
        if group not in groups:
            groups.append(group)
    return tuple(groups)


def _check_claims(claims: dict, rules: TokenRules, now: float, kid: str | None) -> ValidToken:
    for name in rules.require:
        if claims.get(name) is None:
            raise _Reject("missing-claim", f"token has no {name!r} claim, which is required")
    if claims.get(rules.subject_claim) is None:
        raise _Reject("missing-claim", f"token has no {rules.subject_claim!r} claim (the workload's subject)")

    issuer = claims.get("iss")
    if issuer is None:
        raise _Reject("missing-claim", "token has no 'iss' claim")
    if issuer != rules.issuer:
        raise _Reject("wrong-issuer", f"token issuer {_shown(issuer)} is not the configured {rules.issuer!r}")

    audience = claims.get("aud")
    if audience is None:
        raise _Reject("missing-claim", "token has no 'aud' claim")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise _Reject("bad-claim", "token claim 'aud' must be a string or a list of strings")
    if len(audiences) > MAX_GROUPS:
        raise _Reject("bad-claim", f"token claim 'aud' has {len(audiences)} entries, more than the {MAX_GROUPS} allowed")
    if not set(audiences) & set(rules.audiences):
        shown = ", ".join(_shown(a, 48) for a in audiences[:5]) or "none"
        raise _Reject("wrong-audience", f"token audience ({shown}) includes none of {', '.join(map(repr, rules.audiences))}")

    leeway = rules.leeway_s
    expires_at = _number(claims, "exp")
    not_before = _number(claims, "nbf")
    issued_at = _number(claims, "iat")
    if expires_at is not None and now > expires_at + leeway:
        raise _Reject("expired", f"token expired at {_when(expires_at)} ({now - expires_at:.0f} s ago; leeway {leeway:g} s)")
    if not_before is not None and now + leeway < not_before:
        raise _Reject("not-yet-valid", f"token is not valid before {_when(not_before)} ({not_before - now:.0f} s from now; leeway {leeway:g} s)")
    if issued_at is not None and now + leeway < issued_at:
        raise _Reject("not-yet-valid", f"token was issued in the future, at {_when(issued_at)} ({issued_at - now:.0f} s from now; is a clock wrong?)")

    subject = _text(claims, rules.subject_claim)
    if rules.subject_claim != "sub":
        # `sub` is also read (the audit's subject, revocation by subject, --accept patterns) when another
        # claim names the workload: it must be as clean as the identity claim, or absent.
        _text(claims, "sub")
    return ValidToken(
        subject=subject,
        groups=_groups(claims, rules.groups_claim),
        issuer=issuer,
        client_id=_text(claims, rules.client_id_claim),
        jti=_text(claims, "jti"),
        issued_at=issued_at,
        expires_at=expires_at,
        not_before=not_before,
        key_id=kid,
        claims=MappingProxyType(claims),
    )


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    alg: str
    kid: str | None


def read_header(token: str, rules: TokenRules) -> HeaderFacts | TokenRejected:
    """The token's shape and header checked, before any key is needed (so garbage never causes a key fetch)."""
    try:
        alg, kid = _check_header(_header(_segments(token, rules.max_token_bytes)), rules)
        return HeaderFacts(alg, kid)
    except _Reject as e:
        return TokenRejected(reason=e.reason, kind=e.kind)
    except Exception as e:  # total, as validate
        return TokenRejected(reason=f"token could not be checked ({type(e).__name__})", kind="malformed")


def validate(token: str, keys: KeySet, rules: TokenRules, now: float) -> ValidToken | TokenRejected:
    """The token's verified identity, or the one reason it is refused. Never raises."""
    try:
        parts = _segments(token, rules.max_token_bytes)
        header = _header(parts)
        alg, kid = _check_header(header, rules)
        key = _choose_key(keys, kid, alg)
        verifier = jwt.PyJWS(algorithms=[alg], options={"enforce_minimum_key_length": True})
        try:
            verifier.decode_complete(token, key=key.public_key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            raise _Reject("bad-signature", f"token signature does not verify with the {key.describe()}") from None
        except jwt.InvalidAlgorithmError as e:
            raise _Reject("alg-not-allowed", f"token alg {alg!r} refused: {e}") from None
        except jwt.PyJWTError as e:
            raise _Reject("malformed", f"token could not be decoded: {str(e)[:120]}") from None
        claims = _b64url_json(parts[1], "payload")
        return _check_claims(claims, rules, now, kid)
    except _Reject as e:
        return TokenRejected(reason=e.reason, kind=e.kind)
    except Exception as e:  # total: a fault in a library must refuse the token, not escape
        return TokenRejected(reason=f"token could not be checked ({type(e).__name__})", kind="malformed")
