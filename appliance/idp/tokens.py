"""Asking an OIDC provider over HTTP: its discovery document, and client_credentials tokens.

Plain urllib: two small requests do not warrant an HTTP library. Responses are
hostile like any other input: sizes are capped and the JSON's shape is checked
before anything is taken from it.
"""

from __future__ import annotations

import json
from base64 import b64encode
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from appliance.idp.errors import IdpError

_MAX_RESPONSE = 1 << 20  # discovery documents and tokens are a few KiB


class TokenRefused(IdpError):
    """The provider answered a token request with an OAuth error (wrong secret, unknown client, ...)."""

    def __init__(self, status: int, error: str, description: str):
        self.status, self.error, self.description = status, error, description
        super().__init__(f"token request refused: HTTP {status} {error}" + (f": {description}" if description else ""))


def _read_json(response, url: str) -> Any:
    body = response.read(_MAX_RESPONSE + 1)
    if len(body) > _MAX_RESPONSE:
        raise IdpError(f"{url} answered more than {_MAX_RESPONSE} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise IdpError(f"{url} answered something that is not JSON: {body[:200]!r}") from None


def get_json(url: str, timeout: float = 5) -> Any:
    """GET `url` and decode its JSON; IdpError naming the URL on any failure."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"}),
                                    timeout=timeout) as response:
            return _read_json(response, url)
    except urllib.error.HTTPError as e:
        raise IdpError(f"{url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise IdpError(f"cannot reach {url}: {reason}") from None


def client_credentials_token(token_endpoint: str, client_id: str, client_secret: str, *,
                             scope: str | None = None, timeout: float = 10) -> dict[str, Any]:
    """The provider's token response (`access_token`, `expires_in`, ...) for a client_credentials grant.

    The client authenticates with HTTP Basic (client_secret_basic), as RFC 6749 asks providers to support.
    Raises TokenRefused when the provider says no, IdpError when it cannot be asked.
    """
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    request = urllib.request.Request(
        token_endpoint,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        method="POST",
    )
    # RFC 6749 2.3.1: id and secret are form-urlencoded before they are joined for Basic.
    credentials = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(client_secret, safe='')}"
    request.add_header("Authorization", "Basic " + b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = _read_json(response, token_endpoint)
    except urllib.error.HTTPError as e:
        try:
            detail = _read_json(e, token_endpoint)
        except IdpError:
            detail = {}
        detail = detail if isinstance(detail, dict) else {}
        raise TokenRefused(e.code, str(detail.get("error", "")), str(detail.get("error_description", ""))) from None
    except (urllib.error.URLError, OSError) as e:
        raise IdpError(f"cannot reach the token endpoint {token_endpoint}: {getattr(e, 'reason', e)}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise IdpError(f"{token_endpoint} answered a token response without an access_token: {str(answer)[:200]}")
    return answer
