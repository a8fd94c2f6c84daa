"""OIDC authorization-code login with PKCE, the ID token's checks, and the console's roles (pure).

    started = start_login(endpoint, settings, randomness)      # -> Pending (kept in the session) and the URL
    person = finish_login(pending, query, id_token, keys, settings, now)   # -> Person, or LoginRefused

`start_login` makes the three secrets of one login: `state` (ties the
provider's redirect back to this browser's session), `nonce` (ties the ID
token to this login) and the PKCE `code_verifier`, whose S256 challenge goes
in the authorization URL (RFC 7636), so a stolen code is useless without it.

`check_callback` compares the state, `finish_login` checks the ID token:
its signature against the provider's JWKS, issuer, audience (our client id),
expiry, with the workload tokens' own checks (identity/tokens.py), and then
the nonce and `azp`. The roles come from the groups claim: the approver group
reads and votes, the auditor group reads, anyone else is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from appliance.approvals.model import OPERATOR
from appliance.console.settings import ConsoleConfig
from appliance.identity.jwks import KeySet
from appliance.identity.tokens import TokenRejected, TokenRules, validate

AUDITOR, APPROVER = "auditor", "approver"
# A person's name as the audit and the votes carry it: no ':' (operator:root, identity:x are the system's own).
_PERSON = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


@dataclass(frozen=True, slots=True)
class Pending:
    """One login under way, kept in the (signed) session cookie until the provider redirects back."""

    state: str
    nonce: str
    code_verifier: str

    def as_dict(self) -> dict[str, str]:
        return {"state": self.state, "nonce": self.nonce, "code_verifier": self.code_verifier}

    @classmethod
    def from_dict(cls, data: Any) -> "Pending | None":
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k)
                                                 for k in ("state", "nonce", "code_verifier")):
            return None
        return cls(data["state"], data["nonce"], data["code_verifier"])


@dataclass(frozen=True, slots=True)
class Person:
    """Who logged in: the name votes and audit rows carry, their groups, their roles, until when."""

    name: str
    subject: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    until: float

    @property
    def may_vote(self) -> bool:
        return APPROVER in self.roles

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "groups": list(self.groups), "roles": list(self.roles),
                "until": self.until}

    @classmethod
    def from_dict(cls, data: Any, now: float) -> "Person | None":
        """The person a session holds, or None when there is none or it has ended."""
        try:
            person = cls(str(data["name"]), str(data["subject"]), tuple(map(str, data["groups"])),
                         tuple(map(str, data["roles"])), float(data["until"]))
        except (TypeError, KeyError, ValueError):
            return None
        return person if now < person.until and person.roles else None


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """Why a login did not make a session; `status` is the HTTP status the page is shown with."""

    reason: str
    status: int = 400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def code_challenge(verifier: str) -> str:
    """RFC 7636's S256: BASE64URL(SHA-256(ASCII(code_verifier)))."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def start_login(authorization_endpoint: str, settings: ConsoleConfig,
                randomness: Callable[[int], bytes]) -> tuple[Pending, str]:
    """A new login's secrets and the provider's authorization URL to send the browser to."""
    pending = Pending(state=_b64(randomness(24)), nonce=_b64(randomness(24)), code_verifier=_b64(randomness(48)))
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": settings.client_id, "redirect_uri": settings.redirect_uri,
        "scope": "openid", "state": pending.state, "nonce": pending.nonce,
        "code_challenge": code_challenge(pending.code_verifier), "code_challenge_method": "S256"})
    separator = "&" if "?" in authorization_endpoint else "?"
    return pending, f"{authorization_endpoint}{separator}{query}"


def check_callback(pending: Pending | None, query: Mapping[str, str]) -> str | LoginRefused:
    """The authorization code from the provider's redirect, once its state matches this session's login."""
    if query.get("error"):
        text = str(query.get("error_description") or query.get("error"))[:200]
        return LoginRefused(f"the identity provider refused the login: {text}", 403)
    if pending is None:
        return LoginRefused("no login was started in this browser (or its session cookie was lost); start again")
    state = query.get("state") or ""
    if not hmac.compare_digest(state.encode(), pending.state.encode()):
        return LoginRefused("the login's state does not match the one this browser started with: the redirect is "
                            "not the answer to this login; start again")
    code = query.get("code") or ""
    if not code or len(code) > 4096:
        return LoginRefused("the provider's redirect carries no authorization code")
    return code


def roles_of(groups: tuple[str, ...], settings: ConsoleConfig) -> tuple[str, ...]:
    roles = []
    if settings.approver_group in groups:
        roles += [AUDITOR, APPROVER]
    elif settings.auditor_group in groups:
        roles.append(AUDITOR)
    return tuple(roles)


def token_rules(settings: ConsoleConfig) -> TokenRules:
    assert settings.issuer is not None and settings.client_id is not None
    return TokenRules(issuer=settings.issuer, audiences=(settings.client_id,), groups_claim=settings.groups_claim,
                      require=("exp", "iat", "sub", "nonce"))


def finish_login(pending: Pending, id_token: Any, keys: KeySet, settings: ConsoleConfig,
                 now: float) -> Person | LoginRefused:
    """The person the ID token names, once it verifies and is this login's; or why not."""
    if not isinstance(id_token, str) or not id_token:
        return LoginRefused("the token endpoint's answer has no id_token (is 'openid' a scope of the client?)", 502)
    checked = validate(id_token, keys, token_rules(settings), now)
    if isinstance(checked, TokenRejected):
        return LoginRefused(f"the ID token was refused ({checked.kind}): {checked.reason}", 403)
    claims = checked.claims
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), pending.nonce.encode()):
        return LoginRefused("the ID token's nonce is not this login's: it was issued for another login", 403)
    azp = claims.get("azp")
    if azp is not None and azp != settings.client_id:
        return LoginRefused(f"the ID token was issued to client {str(azp)[:64]!r}, not {settings.client_id!r}", 403)
    name = claims.get("preferred_username") or checked.subject
    if not isinstance(name, str) or not _PERSON.fullmatch(name) or name == OPERATOR:
        return LoginRefused(f"the name {str(name)[:64]!r} cannot be a console user's: use 1-128 letters, digits, "
                            "'.', '_', '@', '+' or '-' (no ':')", 403)
    roles = roles_of(checked.groups, settings)
    if not roles:
        return LoginRefused(f"{name} is signed in but is in neither the auditor group ({settings.auditor_group}) "
                            f"nor the approver group ({settings.approver_group}) the console admits; ask for one "
                            "of them at the identity provider", 403)
    return Person(name=name, subject=checked.subject, groups=checked.groups, roles=roles, until=now +
                  settings.session_s)
