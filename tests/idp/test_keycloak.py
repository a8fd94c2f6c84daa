"""The local identity provider, for real: Keycloak from the jar cache, tokens by client_credentials.

Uses the session's `keycloak` fixture (tests/integration/idp_fixtures.py,
127.0.0.1:39180) for the tokens, and starts a second server on 39181 in its
own state directory for `appliance idp start|status|stop` as a command. Every
token is verified the way the appliance will verify one: PyJWT, the realm's
JWKS, RS256 only, the issuer and the audience.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from appliance.idp import IdpError, TokenRefused, service_account_id
from appliance.idp.tokens import client_credentials_token, get_json
from tests.integration.idp_fixtures import IDP_STATE

pytestmark = pytest.mark.integration

CLI_PORT = 39181
CLI_STATE = IDP_STATE.with_name("idp-cli")
PY = sys.executable
REPO = Path(__file__).resolve().parents[2]

EXPECTED = {  # client id -> (groups claim, lifespan), as the demo realm declares them
    "orders": (["payments"], 300),
    "ledger": (["payments"], 300),
    "platform-reader": (["platform"], 300),
    "short-lived": (["payments"], 30),
    "appliance-upstream": ([], 300),
}


def _verified(keycloak, token: str) -> dict:
    key = jwt.PyJWKClient(keycloak.jwks_uri).get_signing_key_from_jwt(token)
    return jwt.decode(token, key, algorithms=["RS256"], audience=keycloak.realm.audience, issuer=keycloak.issuer,
                      options={"require": ["exp", "iat", "iss", "aud", "sub"]})


def test_discovery_names_the_issuer_and_its_endpoints(keycloak):
    discovery = get_json(keycloak.discovery_url)
    assert discovery["issuer"] == keycloak.issuer == "http://127.0.0.1:39180/realms/appliance"
    assert discovery["token_endpoint"] == keycloak.token_endpoint
    assert discovery["jwks_uri"] == keycloak.jwks_uri
    assert "client_credentials" in discovery["grant_types_supported"]


def test_jwks_has_an_rs256_signing_key(keycloak):
    keys = get_json(keycloak.jwks_uri)["keys"]
    signing = [k for k in keys if k.get("use") == "sig" and k.get("alg") == "RS256"]
    assert signing and signing[0]["kty"] == "RSA" and signing[0]["kid"]
    assert all("d" not in k for k in keys), "the JWKS must carry public keys only"


def test_demo_realm_is_the_one_the_test_expects(keycloak):
    assert set(EXPECTED) == set(keycloak.realm.client_ids)


@pytest.mark.parametrize("client_id", sorted(EXPECTED))
def test_each_demo_client_gets_a_token_with_its_identity_audience_and_groups(keycloak, client_id):
    groups, lifespan = EXPECTED[client_id]
    before = int(time.time())
    token = keycloak.token(client_id)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"]
    claims = _verified(keycloak, token)
    assert claims["iss"] == keycloak.issuer
    assert claims["aud"] in ("kafka-appliance", ["kafka-appliance"]), "only the appliance's audience, no `account`"
    assert claims["azp"] == client_id
    assert claims["sub"] == service_account_id("appliance", client_id)
    assert claims.get("groups", []) == groups
    assert claims["exp"] - claims["iat"] == lifespan
    assert before - 2 <= claims["iat"] <= time.time() + 2
    assert "realm_access" not in claims and "resource_access" not in claims


def test_short_lived_tokens_expire_after_30_seconds(keycloak):
    response = keycloak.server.token_response("short-lived")
    assert response["expires_in"] == 30
    claims = _verified(keycloak, response["access_token"])
    assert claims["exp"] - claims["iat"] == 30
    assert abs(claims["exp"] - (time.time() + 30)) <= 3


def test_a_wrong_secret_is_refused(keycloak):
    with pytest.raises(TokenRefused) as e:
        client_credentials_token(keycloak.token_endpoint, "orders", keycloak.secret("orders") + "x")
    assert e.value.status == 401 and e.value.error == "unauthorized_client"


def test_another_clients_secret_is_refused(keycloak):
    with pytest.raises(TokenRefused) as e:
        client_credentials_token(keycloak.token_endpoint, "orders", keycloak.secret("ledger"))
    assert e.value.status == 401


def test_an_unknown_client_is_refused(keycloak):
    with pytest.raises(TokenRefused) as e:
        client_credentials_token(keycloak.token_endpoint, "intruder", "whatever")
    assert e.value.status in (400, 401) and e.value.error in ("invalid_client", "unauthorized_client")


def test_the_same_server_serves_discovery_tokens_and_keys_over_https_with_the_http_issuer(keycloak):
    """The https listener (a certificate from the session's test CA): verified against that CA only."""
    https = keycloak.https
    discovery = get_json(https.discovery, ca_file=keycloak.ca_file)
    assert discovery["issuer"] == keycloak.issuer  # the issuer is fixed: a token's iss is the same on either port
    assert (discovery["token_endpoint"], discovery["jwks_uri"]) == (https.token, https.jwks)
    assert https.token.startswith("https://127.0.0.1:39182/") and https.jwks.startswith("https://127.0.0.1:39182/")
    assert get_json(https.jwks, ca_file=keycloak.ca_file) == get_json(keycloak.jwks_uri)
    token = client_credentials_token(https.token, "orders", keycloak.secret("orders"), ca_file=keycloak.ca_file)
    assert _verified(keycloak, token["access_token"])["iss"] == keycloak.issuer
    with pytest.raises(IdpError, match=rf"GET {https.jwks}: TLS failure: the server's certificate was not accepted "
                                       rf"\(unable to get local issuer certificate\); trusting only the CAs in "
                                       rf"{keycloak.wrong_ca_file}"):
        get_json(https.jwks, ca_file=keycloak.wrong_ca_file)
    with pytest.raises(IdpError, match="trusting the system CA store"):
        client_credentials_token(https.token, "orders", keycloak.secret("orders"))


def test_sub_secrets_and_signing_key_survive_a_restart(keycloak):
    before = {c: _verified(keycloak, keycloak.token(c))["sub"] for c in ("orders", "platform-reader")}
    secret = keycloak.secret("orders")
    jwks = get_json(keycloak.jwks_uri)
    issued_before = keycloak.token("ledger")
    keycloak.restart()
    after = {c: _verified(keycloak, keycloak.token(c))["sub"] for c in ("orders", "platform-reader")}
    assert after == before
    assert keycloak.secret("orders") == secret
    assert get_json(keycloak.jwks_uri) == jwks
    assert _verified(keycloak, issued_before)["azp"] == "ledger", "a token from before the restart still verifies"
    print(f"\nlocal Keycloak start times (s): {[round(s, 1) for s in keycloak.start_seconds]}")


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "appliance", "idp", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def _rss_kib(pid: int) -> int:
    """RSS of the process and its children (kc.sh's java is the same pid after exec)."""
    out = subprocess.run(["ps", "-o", "rss=", "--pid", str(pid), "--ppid", str(pid)], capture_output=True, text=True)
    return sum(int(x) for x in out.stdout.split())


def test_appliance_idp_start_status_stop_as_commands(keycloak):
    _cli("stop", "--state-dir", str(CLI_STATE))
    began = time.monotonic()
    started = _cli("start", "--port", str(CLI_PORT), "--state-dir", str(CLI_STATE), "--timeout", "240", timeout=300)
    took = time.monotonic() - began
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        issuer = f"http://127.0.0.1:{CLI_PORT}/realms/appliance"
        assert f"issuer {issuer}" in started.stdout

        status = _cli("status", "--state-dir", str(CLI_STATE))
        assert status.returncode == 0, status.stdout + status.stderr
        for expected in (f"issuer: {issuer}", f"token endpoint: {issuer}/protocol/openid-connect/token",
                         f"JWKS URI: {issuer}/protocol/openid-connect/certs",
                         "client: short-lived  groups payments", "token lifespan 30 s",
                         f"client secrets: {CLI_STATE}/client-secrets.json"):
            assert expected in status.stdout, status.stdout

        report = json.loads(_cli("status", "--json", "--state-dir", str(CLI_STATE)).stdout)
        secrets = json.loads((CLI_STATE / "client-secrets.json").read_text())
        token = client_credentials_token(report["token_endpoint"], "orders", secrets["orders"])["access_token"]
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == issuer
        print(f"\nappliance idp start took {took:.1f} s; RSS {_rss_kib(report['pid']) / 1024:.0f} MiB")

        again = _cli("start", "--port", str(CLI_PORT), "--state-dir", str(CLI_STATE))
        assert again.returncode == 0 and f"pid {report['pid']}" in again.stdout, "a second start is a no-op"
        other_state = CLI_STATE.with_name("idp-cli-other")
        busy = _cli("start", "--port", str(CLI_PORT), "--state-dir", str(other_state))
        shutil.rmtree(other_state, ignore_errors=True)
        assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{CLI_PORT}" in busy.stderr
    finally:
        stopped = _cli("stop", "--state-dir", str(CLI_STATE))
    assert stopped.returncode == 0 and "identity provider stopped" in stopped.stdout
    down = _cli("status", "--state-dir", str(CLI_STATE))
    assert down.returncode == 3 and "not running" in down.stdout
