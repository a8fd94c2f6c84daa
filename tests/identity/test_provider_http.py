"""The one HTTP client for identity providers, against real local servers: http.server in a thread, plain or
behind TLS with a certificate from a CA generated here (tests/identity/tls_certs.py). No mock of urllib or ssl."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from appliance.identity import strict_json
from appliance.identity.provider_http import CaFileError, ProviderError, ProviderHttp, tls_context
from tests.identity.tls_certs import TestCa


class Server(ThreadingHTTPServer):
    """Answers every request with `answer` = (status, body, headers, delay); records what it was sent."""

    daemon_threads = True

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer: tuple[int, bytes | object, dict, float] = (200, {"ok": True}, {}, 0.0)
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def handle_error(self, request, client_address):
        pass  # a client refusing our certificate aborts the handshake: expected here

    def url(self, path: str = "/doc", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.server_address[1]}{path}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        self.server.requests.append((method, self.path, dict(self.headers), body))
        status, payload, headers, delay = self.server.answer
        time.sleep(delay)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), "Connection": "close",
                     **headers}.items():
            if v is not None:  # None: leave the header out
                self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = TestCa.make("provider-http test CA"), TestCa.make("some other CA")
    ca.write_cert(d / "ca.pem")
    other.write_cert(d / "other-ca.pem")
    ca.issue_server(d / "server.pem", d / "server.key")
    ca.issue_server(d / "elsewhere.pem", d / "elsewhere.key", hosts=("idp.example",))
    return d


@pytest.fixture
def plain():
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def tls(pki):
    server = Server((pki / "server.pem", pki / "server.key"))
    yield server
    server.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fault(call) -> ProviderError:
    with pytest.raises(ProviderError) as e:
        call()
    return e.value


# -- https and the CA --------------------------------------------------------------------------


def test_https_verified_against_the_configured_ca(tls, pki):
    tls.answer = (200, {"keys": []}, {}, 0)
    assert ProviderHttp(ca_file=pki / "ca.pem").get_json(tls.url(), "JWKS at") == {"keys": []}


def test_the_system_store_does_not_trust_a_private_ca(tls):
    e = fault(lambda: ProviderHttp().get_json(tls.url(), "JWKS at"))
    assert e.kind == "tls"
    assert str(e) == (f"JWKS at {tls.url()}: TLS failure: the server's certificate was not accepted (unable to get "
                      "local issuer certificate); trusting the system CA store")


def test_the_wrong_ca_file_fails_closed_naming_the_file(tls, pki):
    e = fault(lambda: ProviderHttp(ca_file=pki / "other-ca.pem").get_json(tls.url(), "JWKS at"))
    assert e.kind == "tls" and str(e).startswith(f"JWKS at {tls.url()}: TLS failure: the server's certificate was not "
                                                 "accepted (unable to get local issuer certificate)")
    assert str(e).endswith(f"trusting only the CAs in {pki / 'other-ca.pem'}")
    assert tls.requests == []  # nothing was sent over a connection that was not verified


def test_a_certificate_for_another_host_is_refused(pki):
    server = Server((pki / "elsewhere.pem", pki / "elsewhere.key"))
    try:
        e = fault(lambda: ProviderHttp(ca_file=pki / "ca.pem").get_json(server.url(), "JWKS at"))
    finally:
        server.stop()
    assert e.kind == "tls" and "(IP address mismatch, certificate is not valid for '127.0.0.1')" in str(e)


def test_https_to_a_plain_http_server_says_so(plain):
    url = plain.url().replace("http://", "https://")
    e = fault(lambda: ProviderHttp().get_json(url, "token endpoint"))
    assert e.kind == "tls" and str(e) == f"token endpoint {url}: TLS failure: WRONG_VERSION_NUMBER (is it an https server?)"


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent.pem", "CA file {} does not exist"),
    (lambda d: d, "CA file {} is a directory; name a PEM file of CA certificates"),
    (lambda d: d / "server.key", "CA file {} holds no PEM certificate the appliance can read"),
])
def test_a_ca_file_that_cannot_be_used_is_refused_naming_it(pki, make, message):
    path = make(pki)
    with pytest.raises(CaFileError) as e:
        tls_context(path)
    assert str(e.value).startswith(message.format(path))
    with pytest.raises(CaFileError):
        ProviderHttp(ca_file=path)


# -- answers -----------------------------------------------------------------------------------


def test_an_error_status_carries_the_status_and_the_body(plain):
    plain.answer = (503, b"<html>down</html>", {}, 0)
    e = fault(lambda: ProviderHttp().get_json(plain.url(), "JWKS at"))
    assert (str(e), e.kind, e.status, e.body) == (f"JWKS at {plain.url()}: HTTP 503", "status", 503,
                                                  b"<html>down</html>")


@pytest.mark.parametrize("body, message", [
    (b"<html>", "not JSON (line 1 column 1: Expecting value)"),
    (b'{"keys": [], "keys": [{"kty": "oct"}]}', "member 'keys' appears twice in one object"),
    (b'{"a": {"b": 1, "b": 2}}', "member 'b' appears twice in one object"),
    (b"[" * 100_000, "not JSON the appliance reads: nested too deeply"),
])
def test_an_answer_that_is_not_strict_json_is_refused(plain, body, message):
    plain.answer = (200, body, {}, 0)
    e = fault(lambda: ProviderHttp().get_json(plain.url(), "OpenID configuration at"))
    assert e.kind == "json" and str(e) == f"OpenID configuration at {plain.url()}: {message}"


def test_an_answer_beyond_the_cap_is_refused_with_or_without_a_length(plain):
    plain.answer = (200, b" " * 5000, {}, 0)
    e = fault(lambda: ProviderHttp(max_bytes=1024).get_json(plain.url(), "JWKS at"))
    assert e.kind == "size" and str(e) == f"JWKS at {plain.url()}: the answer is 5000 bytes, more than the 1024 bytes the appliance reads"
    plain.answer = (200, b" " * (2 << 20), {"Content-Length": None}, 0)
    e = fault(lambda: ProviderHttp().get_json(plain.url(), "JWKS at"))
    assert str(e) == f"JWKS at {plain.url()}: the answer is more than the 1 MiB the appliance reads"


def test_a_redirect_is_refused_not_followed(plain):
    plain.answer = (302, b"", {"Location": "http://elsewhere.example/certs"}, 0)
    e = fault(lambda: ProviderHttp().get_json(plain.url(), "JWKS at"))
    assert e.kind == "redirect" and str(e) == (f"JWKS at {plain.url()}: redirected (HTTP 302) to "
                                               "http://elsewhere.example/certs; configure the final URL")
    assert len(plain.requests) == 1


def test_unreachable_slow_and_dripping_providers(plain):
    url = f"http://127.0.0.1:{_closed_port()}/doc"
    e = fault(lambda: ProviderHttp().get_json(url, "JWKS at"))
    assert e.kind == "unreachable" and str(e) == f"JWKS at {url}: unreachable (Connection refused)"
    plain.answer = (200, {"ok": True}, {}, 1.0)
    started = time.monotonic()
    e = fault(lambda: ProviderHttp(timeout_s=0.2).get_json(plain.url(), "JWKS at"))
    assert e.kind == "timeout" and str(e) == f"JWKS at {plain.url()}: no answer within 0.2 s"
    assert time.monotonic() - started < 0.9


def test_a_provider_dripping_its_answer_is_cut_off_by_the_deadline():
    class Dripping(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dripping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/doc"
    try:
        started = time.monotonic()
        e = fault(lambda: ProviderHttp(timeout_s=0.5, deadline_s=0.6).get_json(url, "JWKS at"))
        assert str(e) == f"JWKS at {url}: the answer did not arrive whole within 0.6 s"
        assert time.monotonic() - started < 1.5
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("url", ["ftp://idp.example/certs", "file:///etc/passwd", "http:///certs", 7])
def test_only_http_and_https_urls_with_a_host(url):
    e = fault(lambda: ProviderHttp().get_json(url, "JWKS at"))
    assert e.kind == "url" and str(e).endswith(": not an http:// or https:// URL with a host")


# -- the client_credentials grant --------------------------------------------------------------


def test_client_credentials_over_https_authenticates_with_basic_and_keeps_the_secret_out_of_errors(tls, pki):
    secret = "s3cret/with:odd%chars"
    tls.answer = (200, {"access_token": "tok", "token_type": "Bearer", "expires_in": 60}, {}, 0)
    http = ProviderHttp(ca_file=pki / "ca.pem")
    answer = http.client_credentials(tls.url("/token"), "appliance-upstream", secret, scope="kafka openid")
    assert answer["access_token"] == "tok"
    method, path, headers, body = tls.requests[-1]
    assert (method, path) == ("POST", "/token")
    assert urllib.parse.parse_qs(body.decode()) == {"grant_type": ["client_credentials"], "scope": ["kafka openid"]}
    user, _, password = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (urllib.parse.unquote(user), urllib.parse.unquote(password)) == ("appliance-upstream", secret)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    tls.answer = (401, {"error": "invalid_client"}, {}, 0)
    e = fault(lambda: http.client_credentials(tls.url("/token"), "appliance-upstream", secret))
    assert e.status == 401 and strict_json.loads(e.body) == {"error": "invalid_client"}
    assert secret not in str(e) and urllib.parse.quote(secret, safe="") not in str(e)
