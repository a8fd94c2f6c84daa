"""The configured token providers, by issuer: which one verifies a workload's token (the shell's side).

A token names its issuer (`iss`); the provider configured with exactly that
issuer verifies it (`appliance.identity.oidc.TokenVerifier`: signature
against the provider's keys, audience, expiry, claims). The unverified `iss`
only picks the provider; it is checked again as part of the verification. A provider configured with
an introspection endpoint then also asks it whether the token is still
active (`appliance.identity.introspection`).
"""

from __future__ import annotations

import jwt

from appliance.config import TokenProviderConfig
from appliance.identity.introspection import Introspector, read_client_secret
from appliance.identity.jwks import JwksCache
from appliance.identity.oidc import ProviderClient, TokenVerifier
from appliance.identity.provider_http import ProviderHttp
from appliance.identity.tokens import TokenRejected, TokenRules, ValidToken, peek_header


def rules_for(provider: TokenProviderConfig) -> TokenRules:
    return TokenRules(issuer=provider.issuer, audiences=provider.audiences, algorithms=provider.algorithms,
                      leeway_s=provider.leeway_s, subject_claim=provider.identity_claim,
                      groups_claim=provider.groups_claim, client_id_claim=provider.client_id_claim,
                      require=("exp", "iat", provider.identity_claim))


def introspector_for(provider: TokenProviderConfig, http: ProviderHttp, *, owner_uid: int = 0) -> Introspector | None:
    """The provider's introspector, its client secret read now (IntrospectionError naming the file), or None."""
    if provider.introspection_endpoint is None:
        return None
    assert provider.introspection_client_id is not None and provider.introspection_client_secret_file is not None
    secret = read_client_secret(provider.introspection_client_secret_file, owner_uid=owner_uid)
    return Introspector(http, provider.introspection_endpoint, provider.introspection_client_id, secret,
                        cache_s=provider.introspection_cache_s)


class TokenProviders:
    def __init__(self, providers: tuple[TokenProviderConfig, ...], *, owner_uid: int = 0) -> None:
        self._verifiers = {}
        for p in providers:
            client = ProviderClient(p.issuer, jwks_uri=p.jwks_uri, ca_file=p.ca_file)
            self._verifiers[p.issuer] = TokenVerifier(rules_for(p), client, JwksCache(),
                                                      introspector_for(p, client.http, owner_uid=owner_uid))

    @property
    def configured(self) -> bool:
        return bool(self._verifiers)

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._verifiers)

    async def verify(self, token: str, now: float) -> ValidToken | TokenRejected:
        try:
            peek_header(token)  # bounded and well-formed before anything else reads it
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except (ValueError, jwt.PyJWTError) as e:
            return TokenRejected(f"the token is not a JWT: {str(e)[:120]}", "malformed")
        verifier = self._verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            shown = repr(issuer)[:120]
            return TokenRejected(f"its issuer {shown} is not a provider the appliance trusts (trusted: "
                                 f"{', '.join(self._verifiers) or 'none'})", "wrong-issuer")
        return await verifier.verify(token, now)
