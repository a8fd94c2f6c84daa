"""HTTP to identity providers: the one client the appliance asks an OIDC / OAuth 2 provider anything with.

    http = ProviderHttp(ca_file=None, timeout_s=5, max_bytes=1 << 20)
    http.get_json("https://idp/realms/r/protocol/openid-connect/certs", "JWKS")
    http.client_credentials("https://idp/.../token", "appliance-upstream", secret, scope=None)

Its users: identity/oidc.py (discovery and the JWKS that workload tokens are
verified with), broker/token_source.py (the appliance's own token towards
brokers) and idp/tokens.py (tokens from the local Keycloak). What it owns, so
that none of them does it differently:

- **URLs**: http:// and https:// only. Redirects are refused: the configured
  URL must be the real one, a redirect could downgrade https to http, and
  following one would send a client's credentials wherever it points.
- **TLS**: the certificate chain and the host name are verified, against the
  system CA store by default, or against only the CAs in `ca_file` (PEM) when
  one is configured. A provider with a private CA is trusted by naming that
  CA, never by turning verification off: there is no option to.
- **Bounds**: each connect and read waits at most `timeout_s`, the whole
  answer must arrive within `deadline_s` (a provider dripping a byte every few
  seconds would otherwise hold a fetch for ever), and at most `max_bytes` are
  read, checked against Content-Length before reading and while reading.
- **JSON**: decoded strictly (strict_json): a member named twice in one
  object is refused.
- **Errors**: one type, ProviderError, reading `<what> <url>: <fault>` (what
  the caller asked for, e.g. `JWKS at`, `token endpoint`):
  `HTTP 503`, `not JSON (...)`, `the answer is N bytes, more than the 1 MiB
  the appliance reads`, `TLS failure: the certificate was not accepted
  (...); trusting only the CAs in /etc/...`, `unreachable (Connection
  refused)`, `no answer within 5 s`, `redirected (HTTP 302) to ...`. An
  error status also carries the status and the (bounded) body, so a caller
  can quote the provider's OAuth error. No secret and no token is ever in a
  message.

Blocking urllib: call it from a thread (asyncio.to_thread), never the event loop.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.identity import strict_json

MAX_BYTES = 1 << 20  # discovery documents, JWKS and token answers are a few KiB
TIMEOUT_S = 5.0
DEADLINE_TIMEOUTS = 3  # the whole answer, in timeouts


class ProviderError(RuntimeError):
    """The provider could not be asked or gave an unusable answer: names what was asked, the URL and the fault."""

    def __init__(self, what: str, url: str, fault: str, *, kind: str = "answer", status: int | None = None,
                 body: bytes = b"") -> None:
        super().__init__(f"{what} {url}: {fault}")
        self.what, self.url, self.fault, self.kind = what, url, fault, kind
        self.status = status  # the HTTP status of an error answer (kind "status")
        self.body = body  # its body, at most max_bytes, for the provider's own error text


class CaFileError(ValueError):
    """A configured CA file that cannot be used, naming the file and why."""


def tls_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """A client context that verifies chains and host names: the system store, or only the CAs in `ca_file`."""
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file)
    try:
        return ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise CaFileError(f"CA file {path} does not exist") from None
    except IsADirectoryError:
        raise CaFileError(f"CA file {path} is a directory; name a PEM file of CA certificates") from None
    except ssl.SSLError as e:
        raise CaFileError(f"CA file {path} holds no PEM certificate the appliance can read ({e.reason or e})") from None
    except OSError as e:
        raise CaFileError(f"CA file {path} cannot be read: {e.strerror}") from None


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def _checked_url(url: Any, what: str) -> str:
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderError(what, str(url)[:200], "not an http:// or https:// URL with a host", kind="url")
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ProviderError(req.what, req.full_url, f"redirected (HTTP {code}) to {str(newurl)[:200]}; "
                            "configure the final URL", kind="redirect")


class _Request(urllib.request.Request):
    what = ""


class ProviderHttp:
    """Blocking JSON requests to identity providers, verified, bounded and strict; one per trust setting."""

    def __init__(self, *, ca_file: Path | str | None = None, timeout_s: float = TIMEOUT_S,
                 max_bytes: int = MAX_BYTES, deadline_s: float | None = None) -> None:
        self.ca_file = None if ca_file is None else Path(ca_file)
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.deadline_s = DEADLINE_TIMEOUTS * timeout_s if deadline_s is None else deadline_s
        self._opener = urllib.request.build_opener(
            _NoRedirects(), urllib.request.HTTPSHandler(context=tls_context(self.ca_file)))

    @property
    def trust(self) -> str:
        return f"trusting only the CAs in {self.ca_file}" if self.ca_file else "trusting the system CA store"

    # `what` names what is asked for, as the error's first words before the URL: "JWKS at", "token endpoint".

    def get_json(self, url: str, what: str) -> Any:
        """GET `url` and decode its JSON (any value: the caller checks the shape)."""
        return self._json(self._request(url, what), what)

    def post_form_json(self, url: str, form: Mapping[str, str], what: str, *,
                       basic: tuple[str, str] | None = None) -> Any:
        """POST an application/x-www-form-urlencoded body, optionally with HTTP Basic; decode the JSON answer."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic is not None:
            # RFC 6749 2.3.1: id and secret are form-encoded before they are joined and base64-encoded.
            joined = ":".join(urllib.parse.quote(v, safe="") for v in basic)
            headers["Authorization"] = "Basic " + base64.b64encode(joined.encode()).decode()
        request = self._request(url, what, data=urllib.parse.urlencode(form).encode(), headers=headers)
        return self._json(request, what)

    def client_credentials(self, token_endpoint: str, client_id: str, client_secret: str, *,
                           scope: str | None = None, what: str = "token endpoint") -> Any:
        """The token endpoint's JSON answer to a client_credentials grant (RFC 6749 4.4), the client
        authenticated with HTTP Basic (client_secret_basic, 2.3.1). The caller checks the answer's shape."""
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        return self.post_form_json(token_endpoint, form, what, basic=(client_id, client_secret))

    def post_json(self, url: str, document: Any, what: str) -> bytes:
        """POST a JSON document; the answer's body as it came (a webhook answers `ok`, not JSON)."""
        import json

        request = self._request(url, what, data=json.dumps(document).encode(),
                                headers={"Content-Type": "application/json"})
        return self._exchange(request, what)

    # -- the exchange ------------------------------------------------------------------------

    def _request(self, url: str, what: str, *, data: bytes | None = None,
                 headers: Mapping[str, str] = {}) -> _Request:
        request = _Request(_checked_url(url, what), data=data, method="POST" if data is not None else "GET",
                           headers={"Accept": "application/json", "User-Agent": "appliance", **headers})
        request.what = what
        return request

    def _json(self, request: _Request, what: str) -> Any:
        body = self._exchange(request, what)
        try:
            return strict_json.loads(body)
        except strict_json.JsonError as e:
            raise ProviderError(what, request.full_url, str(e), kind="json") from None

    def _exchange(self, request: _Request, what: str) -> bytes:
        url = request.full_url
        deadline = time.monotonic() + self.deadline_s
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return self._read(response, what, url, deadline)
        except ProviderError:
            raise
        except urllib.error.HTTPError as e:
            try:
                body = self._read(e, what, url, deadline)
            except (ProviderError, OSError, http.client.HTTPException):
                body = b""
            finally:
                e.close()
            raise ProviderError(what, url, f"HTTP {e.code}", kind="status", status=e.code, body=body) from None
        except urllib.error.URLError as e:
            raise self._failure(what, url, e.reason) from None
        except (OSError, ValueError, http.client.HTTPException) as e:  # TLS, a reset or a timeout mid-body, a bad status line
            raise self._failure(what, url, e) from None

    def _failure(self, what: str, url: str, reason: Any) -> ProviderError:
        if isinstance(reason, ssl.SSLCertVerificationError):
            detail = str(reason.verify_message or reason.reason or reason).rstrip(".")
            return ProviderError(what, url, f"TLS failure: the server's certificate was not accepted ({detail}); "
                                 f"{self.trust}", kind="tls")
        if isinstance(reason, ssl.SSLError):
            detail = reason.reason or str(reason)
            hint = " (is it an https server?)" if detail in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE") else ""
            return ProviderError(what, url, f"TLS failure: {detail}{hint}", kind="tls")
        if isinstance(reason, TimeoutError):
            return ProviderError(what, url, f"no answer within {self.timeout_s:g} s", kind="timeout")
        if isinstance(reason, str):
            return ProviderError(what, url, f"unreachable ({reason})", kind="unreachable")
        if isinstance(reason, (ConnectionRefusedError, OSError)) and getattr(reason, "strerror", None) \
                and not isinstance(reason, (ConnectionResetError, BrokenPipeError)):
            return ProviderError(what, url, f"unreachable ({reason.strerror})", kind="unreachable")
        return ProviderError(what, url, f"{type(reason).__name__}: {str(reason)[:120]}", kind="protocol")

    def _read(self, response, what: str, url: str, deadline: float) -> bytes:
        """At most max_bytes of the body, and all of it by `deadline` (monotonic): the socket timeout alone
        bounds each read, not the whole answer."""
        limit = self.max_bytes
        declared = response.headers.get("Content-Length") if response.headers is not None else None
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProviderError(what, url, f"the answer is {declared} bytes, more than the {_size_text(limit)} "
                                "the appliance reads", kind="size")
        chunks, size = [], 0
        while size <= limit:
            if time.monotonic() > deadline:
                raise ProviderError(what, url, f"the answer did not arrive whole within {self.deadline_s:g} s",
                                    kind="timeout")
            want = min(64 * 1024, limit + 1 - size)
            chunk = response.read1(want) if hasattr(response, "read1") else response.read(want)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ProviderError(what, url, f"the answer is more than the {_size_text(limit)} the appliance reads",
                                kind="size")
        return b"".join(chunks)
