"""Client secrets and the admin password in the state directory: generated once, 0600, kept."""

from __future__ import annotations

import json
import stat

import pytest

from appliance.idp import IdpError
from appliance.idp.client_secrets import ensure_admin_password, ensure_secrets, load_secrets


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_generated_private_and_kept(tmp_path):
    path = tmp_path / "client-secrets.json"
    first = ensure_secrets(path, ["orders", "ledger"])
    assert set(first) == {"orders", "ledger"} and first["orders"] != first["ledger"]
    assert len(first["orders"]) >= 40
    assert _mode(path) == 0o600
    assert ensure_secrets(path, ["orders", "ledger"]) == first
    assert load_secrets(path) == first


def test_a_new_client_gets_a_secret_and_the_others_keep_theirs(tmp_path):
    path = tmp_path / "client-secrets.json"
    first = ensure_secrets(path, ["orders"])
    second = ensure_secrets(path, ["orders", "ledger"])
    assert second["orders"] == first["orders"] and "ledger" in second
    # A client dropped from the table keeps its secret in the file, but is not returned.
    assert ensure_secrets(path, ["ledger"]) == {"ledger": second["ledger"]}
    assert set(load_secrets(path)) == {"orders", "ledger"}


def test_loosened_permissions_are_tightened(tmp_path):
    path = tmp_path / "client-secrets.json"
    ensure_secrets(path, ["orders"])
    path.chmod(0o644)
    ensure_secrets(path, ["orders"])
    assert _mode(path) == 0o600


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"orders": ""}', "must be a JSON object"),
    ('{"orders": 5}', "must be a JSON object"),
])
def test_a_damaged_file_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "client-secrets.json"
    path.write_text(content)
    with pytest.raises(IdpError, match=message) as e:
        ensure_secrets(path, ["orders"])
    assert str(path) in str(e.value)


def test_admin_password_is_generated_once_and_private(tmp_path):
    path = tmp_path / "admin-password"
    password = ensure_admin_password(path)
    assert len(password) >= 40 and _mode(path) == 0o600
    assert ensure_admin_password(path) == password
    assert json.dumps(password)  # printable
