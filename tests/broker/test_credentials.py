"""The upstream credentials file in both its forms: passwords and an OAuth client (no broker, no provider)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from appliance.broker.credentials import (
    CredentialsError,
    OAuthBearerCredentials,
    UpstreamCredentials,
    load_credentials,
)

ENDPOINT = "https://idp.example/realms/r/protocol/openid-connect/token"
OAUTH = {"mechanism": "OAUTHBEARER", "token_endpoint": ENDPOINT, "client_id": "appliance-upstream",
         "client_secret": "very-secret-value"}


def _write(path, data, mode=0o600):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    os.chmod(path, mode)
    return path


def test_an_oauthbearer_file_reads_as_the_appliance_s_oauth_client(tmp_path):
    creds = load_credentials(_write(tmp_path / "c.json", {**OAUTH, "scope": "kafka openid"}))
    assert creds == OAuthBearerCredentials(ENDPOINT, "appliance-upstream", "very-secret-value", "kafka openid")
    assert creds.mechanism == "OAUTHBEARER"
    assert load_credentials(_write(tmp_path / "d.json", OAUTH)).scope is None


def test_the_client_secret_is_never_in_repr_or_an_error(tmp_path, caplog):
    creds = load_credentials(_write(tmp_path / "c.json", OAUTH))
    assert "very-secret-value" not in repr(creds) and "appliance-upstream" in repr(creds)
    with pytest.raises(CredentialsError) as e:
        load_credentials(_write(tmp_path / "e.json", {**OAUTH, "client_secret": "secret\nwith newline"}))
    assert "newline" not in str(e.value) and "client_secret" in str(e.value)
    with pytest.raises(CredentialsError) as e:
        load_credentials(_write(tmp_path / "f.json", {**OAUTH, "scope": 'x"y', "client_secret": "s3cr3t-s3cr3t"}))
    assert "s3cr3t-s3cr3t" not in str(e.value)


def test_an_oauthbearer_file_others_can_read_is_refused(tmp_path):
    path = _write(tmp_path / "c.json", OAUTH, mode=0o640)
    with pytest.raises(CredentialsError, match=r"c\.json: mode 0640 lets group or other read"):
        load_credentials(path)


@pytest.mark.parametrize("change, problem", [
    ({"token_endpoint": None}, "key 'token_endpoint' is missing"),
    ({"client_id": None}, "key 'client_id' is missing"),
    ({"client_secret": None}, "key 'client_secret' is missing"),
    ({"token_endpoint": "ftp://idp/token"}, "key 'token_endpoint' must be an http:// or https:// URL"),
    ({"token_endpoint": "https:///token"}, "key 'token_endpoint' must be an http:// or https:// URL"),
    ({"token_endpoint": "https://u:p@idp/token"}, "key 'token_endpoint' must not carry user information"),
    ({"token_endpoint": 7}, "key 'token_endpoint' must be a non-empty string"),
    ({"client_id": ""}, "key 'client_id' must be a non-empty string"),
    ({"client_id": "caf\u00e9"}, "key 'client_id' must be 1-1024 printable ASCII"),
    ({"client_secret": ["x"]}, "key 'client_secret' must be a non-empty string"),
    ({"scope": ""}, "key 'scope' must be space-separated scope names"),
    ({"scope": "a  b"}, "key 'scope' must be space-separated scope names"),
    ({"scope": 3}, "key 'scope' must be space-separated scope names"),
    ({"username": "x"}, "key 'username' is not known for OAUTHBEARER; valid keys are mechanism, token_endpoint"),
])
def test_a_bad_oauthbearer_file_names_the_file_and_the_key(tmp_path, change, problem):
    data = {k: v for k, v in {**OAUTH, **change}.items() if v is not None}
    path = _write(tmp_path / "c.json", data)
    with pytest.raises(CredentialsError) as e:
        load_credentials(path)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)


def test_an_unknown_mechanism_lists_oauthbearer_among_the_supported(tmp_path):
    with pytest.raises(CredentialsError, match="use one of SCRAM-SHA-256, SCRAM-SHA-512, PLAIN, OAUTHBEARER"):
        load_credentials(_write(tmp_path / "c.json", {"mechanism": "GSSAPI", "username": "a", "password": "b"}))


def test_the_password_forms_read_as_before(tmp_path):
    creds = load_credentials(_write(tmp_path / "c.json", {"mechanism": "SCRAM-SHA-512", "username": "appliance",
                                                          "password": "pw"}))
    assert creds == UpstreamCredentials("SCRAM-SHA-512", "appliance", "pw")
    assert creds.current(123.0) is creds  # a password is the same for every connection


def test_the_value_type_checks_itself_too():
    with pytest.raises(CredentialsError, match="key 'token_endpoint'"):
        OAuthBearerCredentials("not a url", "a", "b")


def test_an_oauthbearer_file_may_name_a_ca_file_which_is_loaded_with_it(tmp_path):
    from tests.identity.tls_certs import TestCa

    ca = TestCa.make("credentials test CA").write_cert(tmp_path / "ca.pem")
    assert load_credentials(_write(tmp_path / "c.json", {**OAUTH, "ca_file": str(ca)})).ca_file == ca
    for value, problem in ((str(tmp_path / "none.pem"), f"key 'ca_file': CA file {tmp_path / 'none.pem'} does not exist"),
                           (str(tmp_path / "c.json"), "holds no PEM certificate the appliance can read"),
                           ("ca.pem", "key 'ca_file' must be an absolute path")):
        path = _write(tmp_path / "d.json", {**OAUTH, "ca_file": value})
        with pytest.raises(CredentialsError) as e:
            load_credentials(path)
        assert str(e.value).startswith(f"{path}: ") and problem in str(e.value), str(e.value)
