"""The token source against a real local HTTP server (http.server on 127.0.0.1), not a mock of urllib."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance.broker.credentials import OAuthBearerCredentials
from appliance.broker.oauth_token import BearerToken, TokenUnavailable
from appliance.broker.token_source import TokenEndpointClient, TokenFetchError, TokenSource

SECRET = "s3cret/with:odd%chars"


class Provider(ThreadingHTTPServer):
    """A token endpoint whose next answers the test chooses: (status, body, headers, delay)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = (200, {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 300}, {}, 0.0)
        self.requests: list[tuple[str, dict, dict]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/realms/r/token"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        self.server.requests.append((self.path, dict(self.headers), form))
        status, body, headers, delay = self.server.answer
        time.sleep(delay)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            if v is not None:  # None: leave the header out
                self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def provider():
    server = Provider()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def creds(provider, scope=None):
    return OAuthBearerCredentials(provider.url, "appliance-upstream", SECRET, scope)


def test_a_client_credentials_request_authenticates_the_client_and_returns_the_token(provider):
    token = TokenEndpointClient(creds(provider, "kafka openid")).fetch(now=1000.0)
    assert token == BearerToken("tok-1", 1000.0, 1300.0)
    path, headers, form = provider.requests[0]
    assert form == {"grant_type": "client_credentials", "scope": "kafka openid"}
    user, _, password = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (urllib.parse.unquote(user), urllib.parse.unquote(password)) == ("appliance-upstream", SECRET)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_a_refusal_names_the_endpoint_the_status_and_the_provider_s_error_never_the_secret(provider):
    provider.answer = (401, {"error": "invalid_client", "error_description": "Invalid client credentials"}, {}, 0)
    with pytest.raises(TokenFetchError) as e:
        TokenEndpointClient(creds(provider)).fetch()
    assert str(e.value) == (f"token endpoint {provider.url}: HTTP 401: invalid_client (Invalid client "
                            "credentials) (the provider refused the appliance's client id or secret)")
    provider.answer = (503, b"<html>down</html>", {}, 0)
    with pytest.raises(TokenFetchError, match=r": HTTP 503$"):
        TokenEndpointClient(creds(provider)).fetch()


def test_an_answer_beyond_the_bound_is_refused(provider):
    provider.answer = (200, {"access_token": "a" * 5000, "token_type": "Bearer", "expires_in": 60}, {}, 0)
    with pytest.raises(TokenFetchError, match="the answer is 5062 bytes, more than the 1024 bytes the appliance reads"):
        TokenEndpointClient(creds(provider), max_bytes=1024).fetch()
    provider.answer = (*provider.answer[:2], {"Content-Length": None}, 0)  # no declared length: read to the bound
    with pytest.raises(TokenFetchError, match="the answer is more than the 1024 bytes the appliance reads"):
        TokenEndpointClient(creds(provider), max_bytes=1024).fetch()


def test_a_bad_body_names_what_is_wrong(provider):
    provider.answer = (200, {"access_token": "tok", "token_type": "Bearer"}, {}, 0)
    with pytest.raises(TokenFetchError, match=r"token endpoint http://127\.0\.0\.1:\d+/realms/r/token: expires_in"):
        TokenEndpointClient(creds(provider)).fetch()


def test_a_redirect_is_not_followed(provider):
    provider.answer = (302, b"", {"Location": "http://elsewhere.example/token"}, 0)
    with pytest.raises(TokenFetchError, match=r"redirected \(HTTP 302\)"):
        TokenEndpointClient(creds(provider)).fetch()
    assert len(provider.requests) == 1


def test_a_silent_provider_times_out(provider):
    provider.answer = (200, {"access_token": "t", "token_type": "Bearer", "expires_in": 60}, {}, 1.5)
    started = time.monotonic()
    with pytest.raises(TokenFetchError, match=r"no answer within 0.3 s"):
        TokenEndpointClient(creds(provider), timeout_s=0.3).fetch()
    assert time.monotonic() - started < 1.4


def test_an_unreachable_provider_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/token"
    with pytest.raises(TokenFetchError, match=rf"token endpoint {url}: unreachable \(Connection refused\)"):
        TokenEndpointClient(OAuthBearerCredentials(url, "a", "b")).fetch()


def test_the_source_fetches_at_start_keeps_its_token_through_failures_and_reports_them(provider):
    async def scenario():
        source = TokenSource(creds(provider))
        assert isinstance(source.current(time.time()), TokenUnavailable)
        source.start()
        first = await source.first_token(5)
        assert isinstance(first, BearerToken) and first.value == "tok-1"
        provider.answer = (500, {"error": "server_error"}, {}, 0)
        source.refresh_now()
        for _ in range(100):
            if source.schedule.failures:
                break
            await asyncio.sleep(0.02)
        assert source.current(time.time()) is first  # still valid: new connections never see the failure
        status = source.status(time.time())
        assert status["token_valid"] and status["consecutive_failures"] == 1
        assert ": HTTP 500: server_error" in status["last_error"]
        assert "tok-1" not in json.dumps(status) and SECRET not in json.dumps(status)
        provider.answer = (200, {"access_token": "tok-2", "token_type": "Bearer", "expires_in": 300}, {}, 0)
        source.refresh_now()
        for _ in range(100):
            if source.current(time.time()).value == "tok-2":
                break
            await asyncio.sleep(0.02)
        assert source.current(time.time()).value == "tok-2" and source.schedule.failures == 0
        await source.stop()

    asyncio.run(scenario())


def test_a_source_whose_provider_refuses_from_the_start_gives_sessions_the_reason(provider):
    provider.answer = (401, {"error": "unauthorized_client"}, {}, 0)

    async def scenario():
        source = TokenSource(creds(provider))
        source.start()
        got = await source.first_token(5)
        await source.stop()
        return got

    got = asyncio.run(scenario())
    assert isinstance(got, TokenUnavailable) and ": HTTP 401: unauthorized_client" in got.reason


class _Dripping(BaseHTTPRequestHandler):
    """Sends a valid status line and headers, then one body byte every 0.2 s."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_a_provider_that_drips_its_answer_is_cut_off_by_the_whole_fetch_s_deadline():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dripping)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/token"
        started = time.monotonic()
        with pytest.raises(TokenFetchError, match="did not arrive whole within 1.5 s"):
            TokenEndpointClient(OAuthBearerCredentials(url, "a", "b"), timeout_s=0.5).fetch()
        assert time.monotonic() - started < 2.5  # 3 x 0.5 s, and one more read
    finally:
        server.shutdown()
        server.server_close()


def test_the_source_stops_waiting_for_a_hung_fetch_and_never_stacks_a_second_one():
    release = threading.Event()

    class Hung:
        timeout_s = 0.1

        def fetch(self):
            release.wait(5)
            raise TokenFetchError("released")

    async def scenario():
        source = TokenSource(OAuthBearerCredentials("http://127.0.0.1:9/token", "a", "b"), client=Hung())
        await source.fetch_once()  # gives up after 3 x 0.1 s
        first = source.schedule.last_error
        await source.fetch_once()  # the first thread is still stuck: no second request
        second = source.schedule.last_error
        release.set()
        return first, second

    first, second = asyncio.run(scenario())
    assert first == "token endpoint http://127.0.0.1:9/token: no complete answer within 0.3 s"
    assert second == "token endpoint http://127.0.0.1:9/token: the previous request has still not finished"
