"""The realm table and the Keycloak JSON it becomes: pure, no Keycloak."""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.idp import KEYCLOAK_VERSION
from appliance.idp.realm import (
    DEMO_REALM,
    Endpoints,
    Realm,
    RealmError,
    ServiceClient,
    representation,
    service_account_id,
    service_account_username,
)

REPO = Path(__file__).resolve().parents[2]
EMBEDDED_POLICY = REPO / "appliance" / "policy" / "embedded.yaml"


def _secrets(realm: Realm) -> dict[str, str]:
    return {c: f"secret-of-{c}" for c in realm.client_ids}


def _client(rep: dict, client_id: str) -> dict:
    (client,) = [c for c in rep["clients"] if c["clientId"] == client_id]
    return client


def _mapper(client: dict, kind: str) -> dict:
    (mapper,) = [m for m in client["protocolMappers"] if m["protocolMapper"] == kind]
    return mapper


def test_pom_and_code_name_one_keycloak_version():
    pom = (REPO / "scripts" / "keycloak" / "pom.xml").read_text()
    assert re.search(r"<keycloak\.version>(.+?)</keycloak\.version>", pom).group(1) == KEYCLOAK_VERSION


def test_demo_realm_has_the_demo_identities_and_their_groups():
    realm = DEMO_REALM
    assert realm.name == "appliance" and realm.audience == "kafka-appliance"
    assert {c.client_id: c.groups for c in realm.clients} == {
        "orders": ("payments",),
        "ledger": ("payments",),
        "platform-reader": ("platform",),
        "short-lived": ("payments",),
        "appliance-upstream": (),
    }
    assert realm.lifespan_of("short-lived") == 30
    assert realm.lifespan_of("orders") == realm.token_lifespan_s == 300


def test_demo_identities_and_groups_are_the_ones_the_demo_policy_names():
    policy = EMBEDDED_POLICY.read_text()
    for name in ("orders", "ledger", "payments", "platform"):
        assert re.search(rf"\b{name}\b", policy), f"{name} is not in {EMBEDDED_POLICY}"


def test_every_client_is_confidential_with_a_service_account_and_client_credentials_only():
    rep = representation(DEMO_REALM, _secrets(DEMO_REALM))
    assert [c["clientId"] for c in rep["clients"]] == list(DEMO_REALM.client_ids)
    for client in rep["clients"]:
        assert client["publicClient"] is False and client["serviceAccountsEnabled"] is True
        assert client["clientAuthenticatorType"] == "client-secret"
        assert client["secret"] == f"secret-of-{client['clientId']}"
        assert not client["standardFlowEnabled"] and not client["directAccessGrantsEnabled"]
        assert not client["implicitFlowEnabled"]
        assert client["defaultClientScopes"] == ["basic"]  # no `account` audience or role claims


def test_audience_and_groups_mappers_put_plain_claims_in_access_tokens():
    realm = dataclasses.replace(DEMO_REALM, audience="api://kafka")
    client = _client(representation(realm, _secrets(realm)), "orders")
    audience = _mapper(client, "oidc-audience-mapper")["config"]
    assert audience["included.custom.audience"] == "api://kafka" and audience["access.token.claim"] == "true"
    groups = _mapper(client, "oidc-group-membership-mapper")["config"]
    assert groups["claim.name"] == "groups" and groups["full.path"] == "false"
    assert groups["access.token.claim"] == "true"


def test_token_lifespan_is_set_only_where_a_client_overrides_it():
    rep = representation(DEMO_REALM, _secrets(DEMO_REALM))
    assert rep["accessTokenLifespan"] == 300
    assert _client(rep, "short-lived")["attributes"]["access.token.lifespan"] == "30"
    assert "access.token.lifespan" not in _client(rep, "orders")["attributes"]


def test_service_account_users_have_fixed_ids_and_their_groups():
    rep = representation(DEMO_REALM, _secrets(DEMO_REALM))
    users = {u["serviceAccountClientId"]: u for u in rep["users"]}
    assert set(users) == set(DEMO_REALM.client_ids)
    assert users["orders"]["id"] == service_account_id("appliance", "orders")
    assert users["orders"]["username"] == "service-account-orders"
    assert users["orders"]["groups"] == ["/payments"]
    assert users["appliance-upstream"]["groups"] == []
    assert {g["name"] for g in rep["groups"]} == {"payments", "platform"}


def test_service_account_ids_are_stable_distinct_uuids():
    a = service_account_id("appliance", "orders")
    assert a == service_account_id("appliance", "orders")  # same on every run and machine
    assert uuid.UUID(a).version == 5
    assert a != service_account_id("appliance", "ledger")
    assert a != service_account_id("other", "orders")
    # Pinned: a change here changes every demo workload's `sub`.
    assert a == str(uuid.uuid5(uuid.UUID("5b0c8f0e-7a55-4d59-9a7e-0c1d2b3a4e5f"), "appliance/orders"))


def test_service_account_username_is_keycloaks_own_lowercase_form():
    assert service_account_username("Platform-Reader") == "service-account-platform-reader"


def test_representation_refuses_a_client_without_secret():
    with pytest.raises(RealmError, match="no client secret for ledger"):
        representation(DEMO_REALM, {c: "x" for c in DEMO_REALM.client_ids if c != "ledger"})


def test_tests_can_declare_their_own_realm():
    realm = Realm("test-realm", audience="test-aud",
                  clients=[ServiceClient("a", groups=["g1", "g2"]), ServiceClient("b", token_lifespan_s=10)],
                  token_lifespan_s=60)
    assert realm.clients[0].groups == ("g1", "g2") and realm.groups == ("g1", "g2")
    rep = representation(realm, _secrets(realm))
    assert rep["realm"] == "test-realm"
    assert _client(rep, "b")["attributes"]["access.token.lifespan"] == "10"
    assert realm.lifespan_of("a") == 60
    with pytest.raises(KeyError, match="has no client 'c'"):
        realm.client("c")


@pytest.mark.parametrize("make, message", [
    (lambda: Realm("master"), "administration realm"),
    (lambda: Realm("bad name"), "realm name 'bad name' is not a valid name"),
    (lambda: Realm("r", audience="has space"), "audience 'has space'"),
    (lambda: Realm("r", audience=""), "audience ''"),
    (lambda: Realm("r", clients=[ServiceClient("a"), ServiceClient("a")]), "client id 'a' appears twice"),
    (lambda: Realm("r", token_lifespan_s=0), "token_lifespan_s is 0"),
    (lambda: Realm("r", token_lifespan_s=True), "token_lifespan_s is True"),
    (lambda: ServiceClient("../etc"), "client id '../etc'"),
    (lambda: ServiceClient("a", groups="payments"), "not the string 'payments'"),
    (lambda: ServiceClient("a", groups=["/payments"]), "group '/payments'"),
    (lambda: ServiceClient("a", groups=["g", "g"]), "name a group twice"),
    (lambda: ServiceClient("a", token_lifespan_s=1), "token_lifespan_s is 1"),
    (lambda: ServiceClient("a", token_lifespan_s=100000), "token_lifespan_s is 100000"),
])
def test_bad_tables_are_refused_naming_the_field(make, message):
    with pytest.raises(RealmError, match=re.escape(message)):
        make()


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True))
def test_any_valid_client_name_round_trips_into_the_representation(client_id):
    realm = Realm("r", clients=[ServiceClient(client_id, groups=["g"])])
    rep = representation(realm, {client_id: "s"})
    assert rep["clients"][0]["clientId"] == client_id
    assert rep["users"][0]["serviceAccountClientId"] == client_id
    assert rep["users"][0]["id"] == service_account_id("r", client_id)


def test_endpoints_follow_keycloaks_layout():
    e = Endpoints.of("http://127.0.0.1:18080/", "appliance")
    assert e.issuer == "http://127.0.0.1:18080/realms/appliance"
    assert e.discovery == "http://127.0.0.1:18080/realms/appliance/.well-known/openid-configuration"
    assert e.token == "http://127.0.0.1:18080/realms/appliance/protocol/openid-connect/token"
    assert e.jwks == "http://127.0.0.1:18080/realms/appliance/protocol/openid-connect/certs"


def test_docs_list_every_demo_client():
    doc = (REPO / "docs" / "identity.md").read_text()
    section = doc[doc.index("## The local identity provider (Keycloak)"):]
    for client in DEMO_REALM.clients:
        assert f"| `{client.client_id}` |" in section, f"docs/identity.md does not list client {client.client_id}"
