"""The realm's signing key in the state directory: generated once, 0600, kept, refused when damaged."""

from __future__ import annotations

import base64
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.idp import IdpError
from appliance.idp.realm import DEMO_REALM, representation
from appliance.idp.signing_key import ensure_signing_key, keycloak_form


def test_key_is_generated_private_and_kept(tmp_path):
    path = tmp_path / "signing-key.pem"
    key = ensure_signing_key(path, "test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_signing_key(path, "test") == key
    certificate = x509.load_pem_x509_certificate(key.certificate_pem.encode())
    private = serialization.load_pem_private_key(key.private_key_pem.encode(), password=None)
    assert private.key_size == 2048
    assert certificate.public_key().public_numbers() == private.public_key().public_numbers()


def test_keycloak_form_is_one_line_of_der_base64(tmp_path):
    key = ensure_signing_key(tmp_path / "k.pem", "test")
    private, certificate = keycloak_form(key)
    assert "\n" not in private and "-----" not in private
    serialization.load_der_private_key(base64.b64decode(private), password=None)
    x509.load_der_x509_certificate(base64.b64decode(certificate))


def test_a_damaged_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "signing-key.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(IdpError, match=f"{path} does not hold a PEM private key"):
        ensure_signing_key(path, "test")


def test_a_certificate_for_another_key_is_refused(tmp_path):
    one = ensure_signing_key(tmp_path / "one.pem", "one")
    two = ensure_signing_key(tmp_path / "two.pem", "two")
    mixed = tmp_path / "mixed.pem"
    mixed.write_text(one.private_key_pem + two.certificate_pem)
    with pytest.raises(IdpError, match="certificate is not for it"):
        ensure_signing_key(mixed, "test")


def test_the_realm_carries_the_key_and_keycloaks_own_internal_keys(tmp_path):
    key = keycloak_form(ensure_signing_key(tmp_path / "k.pem", "test"))
    rep = representation(DEMO_REALM, {c: "s" for c in DEMO_REALM.client_ids}, key)
    providers = {p["providerId"]: p["config"] for p in rep["components"]["org.keycloak.keys.KeyProvider"]}
    assert set(providers) == {"rsa", "hmac-generated", "aes-generated"}
    assert providers["rsa"]["privateKey"] == [key[0]] and providers["rsa"]["certificate"] == [key[1]]
    assert providers["rsa"]["algorithm"] == ["RS256"] and providers["rsa"]["keyUse"] == ["SIG"]
    assert "components" not in representation(DEMO_REALM, {c: "s" for c in DEMO_REALM.client_ids})
