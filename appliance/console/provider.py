"""The console's I/O towards its OIDC provider: discovery, the token endpoint, the JWKS.

All through the appliance's one provider client (identity/provider_http.py:
verified TLS, no redirects, bounded answers, strict JSON, errors naming the
URL). Blocking: the console calls it in a thread (Starlette's
run_in_threadpool), never on its event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from appliance.identity.jwks import JwksError, KeySet
from appliance.identity.oidc import discovery_url, read_discovery
from appliance.identity.provider_http import ProviderError, ProviderHttp
from appliance.identity.tokens import peek_header

@dataclass(frozen=True, slots=True)
class ProviderEndpoints:
    authorization: str
    token: str
    jwks: str


class ConsoleProvider:
    def __init__(self, issuer: str, client_id: str, client_secret: str, redirect_uri: str, *,
                 ca_file=None, timeout_s: float = 5.0) -> None:
        self.issuer, self.client_id, self.redirect_uri = issuer, client_id, redirect_uri
        self._secret = client_secret
        self.http = ProviderHttp(ca_file=ca_file, timeout_s=timeout_s)
        self._lock = threading.Lock()
        self._endpoints: ProviderEndpoints | None = None
        self._keys: KeySet | None = None

    def endpoints(self) -> ProviderEndpoints:
        with self._lock:
            if self._endpoints is None:
                self._endpoints = self._discover()
            return self._endpoints

    def _discover(self) -> ProviderEndpoints:
        config, found = read_discovery(self.http, self.issuer, ("authorization_endpoint", "token_endpoint", "jwks_uri"))
        methods = config.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ProviderError("OpenID configuration at", discovery_url(self.issuer),
                                "the provider does not offer PKCE with S256")
        return ProviderEndpoints(found["authorization_endpoint"], found["token_endpoint"], found["jwks_uri"])

    def exchange(self, code: str, code_verifier: str) -> dict:
        """The token endpoint's answer to the authorization code, with the PKCE verifier (RFC 6749 4.1.3)."""
        endpoint = self.endpoints().token
        answer = self.http.post_form_json(endpoint, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
            "code_verifier": code_verifier}, "token endpoint", basic=(self.client_id, self._secret))
        if not isinstance(answer, dict):
            raise ProviderError("token endpoint", endpoint, "not a JSON object")
        return answer

    def keys_for(self, id_token: str) -> KeySet:
        """The provider's keys, fetched again when the token names a key id the cached set lacks (a rotation)."""
        try:
            kid = peek_header(id_token).get("kid")
        except Exception:  # a malformed token is refused by its validation, with the reason
            kid = None
        with self._lock:
            if self._keys is None or (kid is not None and self._keys.find(kid) is None):
                url = (self._endpoints or self._discover()).jwks
                try:
                    self._keys = KeySet.from_jwks(self.http.get_json(url, "JWKS at"))
                except JwksError as e:
                    raise ProviderError("JWKS at", url, str(e)) from None
            return self._keys
