"""The console serving TLS, as a real `appliance console` process on loopback (no identity provider needed:
it is asked at login, not at start). A verified client gets the console; the certificate is the configured
one; plain HTTP and TLS below 1.2 get nothing; the session cookie it sets is Secure."""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import threading
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from appliance.broker.certificates import Authority
from tests.json_http import JsonHandler

ROOT = Path(__file__).resolve().parents[2]
PORT = 39163


@pytest.fixture
def provider():
    """A local stand-in for the identity provider's discovery document (the login only reads it here)."""
    class Discovery(JsonHandler):
        def do_GET(self):
            base = f"http://127.0.0.1:{server.server_port}/realms/r"
            body = json.dumps({"issuer": base, "authorization_endpoint": f"{base}/auth",
                               "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/certs",
                               "code_challenge_methods_supported": ["S256"]}).encode()
            self.send_json(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/realms/r"
    server.shutdown()


@pytest.fixture
def tls_console(tmp_path, provider):
    if os.geteuid() != 0:
        pytest.fail("the console's secret files must be root's: run the tests as root", pytrace=False)
    now = datetime.datetime.now(datetime.timezone.utc)
    authority = Authority.create("console test CA", now)
    leaf = authority.issue("console", now, hosts=("127.0.0.1",))
    files = {"ca.pem": authority.cert_pem, "console.pem": leaf.cert_pem, "console.key": leaf.key_pem,
             "client-secret": b"s3cret\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        os.chmod(tmp_path / name, 0o600)
    (tmp_path / "appliance.yaml").write_text(yaml.safe_dump({"state_dir": str(tmp_path), "console": {
        "enabled": True, "listen": f"127.0.0.1:{PORT}", "issuer": provider,
        "client_id": "appliance-console", "client_secret_file": str(tmp_path / "client-secret"),
        "redirect_uri": f"https://127.0.0.1:{PORT}/callback",
        "tls": {"cert": str(tmp_path / "console.pem"), "key": str(tmp_path / "console.key")}}}))
    log = (tmp_path / "console.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "--config", str(tmp_path / "appliance.yaml"),
                             "console"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, (tmp_path / "console.log").read_text()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", PORT)) == 0:
                break
        assert time.monotonic() < deadline, "appliance console did not listen"
        time.sleep(0.1)
    yield tmp_path, leaf
    proc.terminate()
    proc.wait(10)
    log.close()


def state_provider(state: Path) -> str:
    return yaml.safe_load((state / "appliance.yaml").read_text())["console"]["issuer"]


def _get(context: ssl.SSLContext, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection("127.0.0.1", PORT, context=context, timeout=10)
    connection.request("GET", path)
    return connection.getresponse()


def test_the_console_serves_tls_with_its_certificate_and_nothing_in_the_clear(tls_console):
    state, leaf = tls_console
    verified = ssl.create_default_context(cafile=str(state / "ca.pem"))
    answer = _get(verified, "/")
    assert (answer.status, answer.getheader("Location")) == (303, "/login")
    assert answer.getheader("Strict-Transport-Security") == "max-age=31536000"
    # The login goes to the provider with the session it started: a cookie only TLS carries.
    login = _get(verified, "/login")
    assert login.status == 303 and login.getheader("Location").startswith(f"{state_provider(state)}/auth?")
    cookie = login.getheader("Set-Cookie").lower()
    assert "appliance_console=" in cookie and "; secure" in cookie and "; httponly" in cookie, cookie

    with socket.create_connection(("127.0.0.1", PORT), timeout=10) as raw, \
            verified.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        presented = tls.getpeercert(binary_form=True)
    assert ssl.DER_cert_to_PEM_cert(presented).encode().strip() == leaf.cert_pem.strip()

    plain = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        plain.request("GET", "/")
        plain.getresponse().read()

    old = ssl.create_default_context(cafile=str(state / "ca.pem"))
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.warns(DeprecationWarning):
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _get(old, "/")
