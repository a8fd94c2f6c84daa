"""Asking an OIDC provider over HTTP: its discovery document, and client_credentials tokens.

Both go through the appliance's one client for providers
(appliance/identity/provider_http.py: http/https, TLS verified against the
system store or `ca_file`, a timeout, a size cap, no redirects, strict JSON);
this module turns its errors into the local provider's IdpError, and an OAuth
refusal into TokenRefused, and checks the token answer's shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.identity import strict_json
from appliance.identity.provider_http import ProviderError, ProviderHttp
from appliance.idp.errors import IdpError


class TokenRefused(IdpError):
    """The provider answered a token request with an OAuth error (wrong secret, unknown client, ...)."""

    def __init__(self, status: int, error: str, description: str):
        self.status, self.error, self.description = status, error, description
        super().__init__(f"token request refused: HTTP {status} {error}" + (f": {description}" if description else ""))


def get_json(url: str, timeout: float = 5, *, ca_file: Path | str | None = None) -> Any:
    """GET `url` and decode its JSON; IdpError naming the URL on any failure."""
    try:
        return ProviderHttp(ca_file=ca_file, timeout_s=timeout).get_json(url, "GET")
    except ProviderError as e:
        raise IdpError(str(e)) from None


def client_credentials_token(token_endpoint: str, client_id: str, client_secret: str, *,
                             scope: str | None = None, timeout: float = 10,
                             ca_file: Path | str | None = None) -> dict[str, Any]:
    """The provider's token response (`access_token`, `expires_in`, ...) for a client_credentials grant.

    The client authenticates with HTTP Basic (client_secret_basic), as RFC 6749 asks providers to support.
    Raises TokenRefused when the provider says no, IdpError when it cannot be asked.
    """
    http = ProviderHttp(ca_file=ca_file, timeout_s=timeout)
    try:
        answer = http.client_credentials(token_endpoint, client_id, client_secret, scope=scope)
    except ProviderError as e:
        if e.status is None:
            raise IdpError(str(e)) from None
        try:
            detail = strict_json.loads(e.body)
        except strict_json.JsonError:
            detail = None
        detail = detail if isinstance(detail, dict) else {}
        raise TokenRefused(e.status, str(detail.get("error", "")), str(detail.get("error_description", ""))) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise IdpError(f"token endpoint {token_endpoint}: an answer without an access_token: {str(answer)[:200]}")
    return answer

