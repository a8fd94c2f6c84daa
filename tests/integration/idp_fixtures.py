"""The identity-provider fixture: one real Keycloak for the whole test session.

Loaded as a plugin beside tests/integration/fixtures.py (tests/conftest.py).
The server is `appliance idp`'s own LocalKeycloak with the demo realm
(appliance/idp/realm.py), on 127.0.0.1:39180 with its own state directory, so
it runs beside a demo provider on the default port. The same server also
listens on https at 127.0.0.1:39182 with a certificate from a CA made for
this session (tests/identity/tls_certs.py): `ca_file` names that CA,
`wrong_ca_file` another one. The issuer stays the http one. Nothing here
skips: a missing java or distribution, a port in use or a start that fails
fails the run, with Keycloak's log.

    def test_something(keycloak):
        keycloak.issuer, keycloak.token_endpoint, keycloak.jwks_uri
        jwt = keycloak.token("orders")          # a client_credentials access token
        keycloak.secret("orders")               # for clients that fetch tokens themselves
        keycloak.realm                          # the Realm table it serves
        keycloak.https.token, keycloak.https.jwks, keycloak.ca_file    # the same over verified https
        keycloak.set_client_enabled("short-lived", False)             # Keycloak's admin REST API
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.idp import DEMO_REALM, IdpError, LocalKeycloak, Realm
from appliance.idp.realm import Endpoints
from appliance.idp.server import ADMIN_USER, DEFAULT_JAR_CACHE, HttpsListener
from tests.identity.tls_certs import TestCa

IDP_PORT = 39180
IDP_HTTPS_PORT = 39182
IDP_STATE = Path("/var/lib/appliance-test/idp")
IDP_TLS = IDP_STATE.with_name("idp-tls")  # the session's test CA, the server's certificate, another CA
IDP_START_TIMEOUT = 240  # a first start runs Keycloak's build step; a loaded CI machine is slow


@dataclass
class KeycloakFixture:
    """A running local Keycloak and what tests need of it."""

    server: LocalKeycloak
    ca_file: Path  # the CA that issued the https listener's certificate
    wrong_ca_file: Path  # a CA that did not
    start_seconds: list[float] = field(default_factory=list)  # each start's duration, for the report

    @property
    def realm(self) -> Realm:
        return self.server.realm

    @property
    def issuer(self) -> str:
        return self.server.endpoints.issuer

    @property
    def discovery_url(self) -> str:
        return self.server.endpoints.discovery

    @property
    def token_endpoint(self) -> str:
        return self.server.endpoints.token

    @property
    def jwks_uri(self) -> str:
        return self.server.endpoints.jwks

    @property
    def https(self) -> Endpoints:
        """Discovery, token endpoint and JWKS on the https port; `issuer` is still the http one."""
        return self.server.https_endpoints

    def secret(self, client_id: str) -> str:
        return self.server.client_secret(client_id)

    def token(self, client_id: str) -> str:
        """A fresh client_credentials access token for `client_id`, with its own secret."""
        return self.server.token(client_id)

    def start(self) -> None:
        began = time.monotonic()
        try:
            self.server.start(timeout=IDP_START_TIMEOUT)
        except IdpError as e:
            pytest.fail(f"integration prerequisite missing: the local Keycloak did not start: {e}", pytrace=False)
        self.start_seconds.append(time.monotonic() - began)

    # -- Keycloak's admin REST API (the bootstrap admin of the master realm) -------------------------

    def _admin(self, method: str, path: str, body: object | None = None) -> object:
        form = urllib.parse.urlencode({"grant_type": "password", "client_id": "admin-cli", "username": ADMIN_USER,
                                       "password": self.server.files.admin_password.read_text().strip()}).encode()
        with urllib.request.urlopen(f"{self.server.base_url}/realms/master/protocol/openid-connect/token",
                                    data=form, timeout=10) as answer:
            admin_token = json.load(answer)["access_token"]
        request = urllib.request.Request(
            f"{self.server.base_url}/admin/realms/{self.realm.name}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def set_client_enabled(self, client_id: str, enabled: bool) -> None:
        """Enable or disable a client (and so its service account's token requests) through the admin API."""
        (client,) = self._admin("GET", f"/clients?clientId={urllib.parse.quote(client_id)}")
        self._admin("PUT", f"/clients/{client['id']}", {**client, "enabled": enabled})

    def ensure_browser_client(self, client_id: str, secret: str, redirect_uri: str) -> None:
        """A confidential client for people's browsers (authorization code, PKCE S256), whose ID tokens carry
        preferred_username and plain group names, as the console (docs/console.md) needs."""
        representation = {
            "clientId": client_id, "enabled": True, "protocol": "openid-connect", "publicClient": False,
            "clientAuthenticatorType": "client-secret", "secret": secret, "standardFlowEnabled": True,
            "implicitFlowEnabled": False, "directAccessGrantsEnabled": False, "serviceAccountsEnabled": False,
            "redirectUris": [redirect_uri], "webOrigins": [], "fullScopeAllowed": False,
            "attributes": {"pkce.code.challenge.method": "S256"}, "defaultClientScopes": ["basic"],
            "protocolMappers": [
                {"name": "groups", "protocol": "openid-connect", "protocolMapper": "oidc-group-membership-mapper",
                 "config": {"claim.name": "groups", "full.path": "false", "id.token.claim": "true",
                            "access.token.claim": "false", "userinfo.token.claim": "false"}},
                {"name": "username", "protocol": "openid-connect", "protocolMapper": "oidc-usermodel-property-mapper",
                 "config": {"user.attribute": "username", "claim.name": "preferred_username",
                            "jsonType.label": "String", "id.token.claim": "true", "access.token.claim": "false",
                            "userinfo.token.claim": "false"}},
            ]}
        found = self._admin("GET", f"/clients?clientId={urllib.parse.quote(client_id)}")
        if found:
            self._admin("DELETE", f"/clients/{found[0]['id']}")
        self._admin("POST", "/clients", representation)

    def ensure_person(self, username: str, password: str, groups: tuple[str, ...]) -> None:
        """A person who logs in with a password (made afresh), in `groups` (made when missing)."""
        for user in self._admin("GET", f"/users?username={urllib.parse.quote(username)}&exact=true"):
            self._admin("DELETE", f"/users/{user['id']}")
        self._admin("POST", "/users", {
            "username": username, "enabled": True, "email": f"{username}@example.test", "emailVerified": True,
            "firstName": username.title(), "lastName": "Tester", "requiredActions": [],
            "credentials": [{"type": "password", "value": password, "temporary": False}]})
        (user,) = self._admin("GET", f"/users?username={urllib.parse.quote(username)}&exact=true")
        for group in groups:
            existing = [g for g in self._admin("GET", f"/groups?search={urllib.parse.quote(group)}&exact=true")
                        if g["name"] == group]
            if not existing:
                self._admin("POST", "/groups", {"name": group})
                existing = [g for g in self._admin("GET", f"/groups?search={urllib.parse.quote(group)}&exact=true")
                            if g["name"] == group]
            self._admin("PUT", f"/users/{user['id']}/groups/{existing[0]['id']}")

    def introspect(self, token: str, as_client: str = "appliance-upstream") -> dict:
        """RFC 7662 token introspection, asked by a confidential client of the realm."""
        request = urllib.request.Request(
            f"{self.issuer}/protocol/openid-connect/token/introspect", data=urllib.parse.urlencode(
                {"token": token, "client_id": as_client, "client_secret": self.secret(as_client)}).encode())
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer)

    def restart(self) -> None:
        """Stop and start the same server (same state directory, port and realm)."""
        self.server.stop()
        self.start()


@pytest.fixture(scope="session")
def keycloak():
    ca, other = TestCa.make("appliance integration test CA"), TestCa.make("a CA the provider's certificate is not from")
    cert, key = ca.issue_server(IDP_TLS / "keycloak.pem", IDP_TLS / "keycloak.key")
    https = HttpsListener(IDP_HTTPS_PORT, cert, key)
    server = LocalKeycloak(IDP_STATE, port=IDP_PORT, realm=DEMO_REALM, jar_cache=DEFAULT_JAR_CACHE, https=https)
    fixture = KeycloakFixture(server, ca.write_cert(IDP_TLS / "ca.pem"), other.write_cert(IDP_TLS / "wrong-ca.pem"))
    fixture.server.stop()  # a server left by an interrupted run holds the port with an older realm
    fixture.start()
    yield fixture
    fixture.server.stop()
