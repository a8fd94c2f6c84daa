"""The identity-provider fixture: one real Keycloak for the whole test session.

Loaded as a plugin beside tests/integration/fixtures.py (tests/conftest.py).
The server is `appliance idp`'s own LocalKeycloak with the demo realm
(appliance/idp/realm.py), on 127.0.0.1:39180 with its own state directory, so
it runs beside a demo provider on the default port. Nothing here skips: a
missing java or distribution, a port in use or a start that fails fails the
run, with Keycloak's log.

    def test_something(keycloak):
        keycloak.issuer, keycloak.token_endpoint, keycloak.jwks_uri
        jwt = keycloak.token("orders")          # a client_credentials access token
        keycloak.secret("orders")               # for clients that fetch tokens themselves
        keycloak.realm                          # the Realm table it serves
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.idp import DEMO_REALM, IdpError, LocalKeycloak, Realm
from appliance.idp.server import DEFAULT_JAR_CACHE

IDP_PORT = 39180
IDP_STATE = Path("/var/lib/appliance-test/idp")
IDP_START_TIMEOUT = 240  # a first start runs Keycloak's build step; a loaded CI machine is slow


@dataclass
class KeycloakFixture:
    """A running local Keycloak and what tests need of it."""

    server: LocalKeycloak
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

    def restart(self) -> None:
        """Stop and start the same server (same state directory, port and realm)."""
        self.server.stop()
        self.start()


@pytest.fixture(scope="session")
def keycloak():
    fixture = KeycloakFixture(LocalKeycloak(IDP_STATE, port=IDP_PORT, realm=DEMO_REALM, jar_cache=DEFAULT_JAR_CACHE))
    fixture.server.stop()  # a server left by an interrupted run holds the port with an older realm
    fixture.start()
    yield fixture
    fixture.server.stop()
