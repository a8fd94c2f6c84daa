import base64
import os
import textwrap

import pytest
import scramp

from appliance.identity.sasl import SaslError, ScramServerExchange, parse_plain
from appliance.identity.static_credentials import StaticCredentialsError, StaticIdentity, load_static_credentials

ME = os.getuid()


def write(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "static-credentials.yaml"
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def load(path):
    return load_static_credentials(path, owner_uid=ME)


def _kafka_style_keys(mechanism: str, password: str, iterations: int = 8192) -> dict:
    salt, stored, server, i = scramp.ScramMechanism(mechanism).make_auth_info(password, iteration_count=iterations)
    enc = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"salt": enc(salt), "stored_key": enc(stored), "server_key": enc(server), "iterations": i}


GOOD = """\
credentials:
  - mechanism: SCRAM-SHA-512
    username: orders
    password: "orders-secret"
    identity: orders
    groups: [payments, payments]
  - mechanism: PLAIN
    username: legacy
    password: "legacy-secret"
    identity: legacy-batch
"""


def test_plain_and_scram_with_password(tmp_path):
    creds = load(write(tmp_path, GOOD))
    assert len(creds) == 2
    plain = parse_plain(b"\x00legacy\x00legacy-secret")
    assert creds.check_plain(plain.username, plain.password) == StaticIdentity("legacy-batch", (), "PLAIN", "legacy")
    assert creds.check_plain("legacy", "wrong") is None
    assert creds.check_plain("nobody", "legacy-secret") is None

    exchange = ScramServerExchange("SCRAM-SHA-512", creds.scram_lookup("SCRAM-SHA-512"))
    client = scramp.ScramClient(["SCRAM-SHA-512"], "orders", "orders-secret")
    client.set_server_first(exchange.first(client.get_client_first().encode()).decode())
    client.set_server_final(exchange.final(client.get_client_final().encode()).decode())
    assert creds.identity("SCRAM-SHA-512", exchange.username) == StaticIdentity(
        "orders", ("payments",), "SCRAM-SHA-512", "orders"
    )
    assert creds.scram_lookup("SCRAM-SHA-256")("orders") is None  # another mechanism is another entry
    assert "orders-secret" not in repr(creds)


def test_scram_with_stored_keys(tmp_path):
    keys = _kafka_style_keys("SCRAM-SHA-256", "billing-secret")
    lines = "\n".join(f"    {k}: {v!r}" if isinstance(v, str) else f"    {k}: {v}" for k, v in keys.items())
    path = write(tmp_path, f"credentials:\n  - mechanism: SCRAM-SHA-256\n    username: billing\n{lines}\n    identity: billing\n")
    creds = load(path)
    assert creds.scram_lookup("SCRAM-SHA-256")("billing").iterations == 8192

    shape = creds.unknown_user_shape("SCRAM-SHA-256")
    assert (shape.iterations, shape.salt_bytes) == (8192, 32)

    def server_first(user):
        exchange = ScramServerExchange("SCRAM-SHA-256", creds.scram_lookup("SCRAM-SHA-256"), unknown_user_shape=shape)
        fields = exchange.first(scramp.ScramClient(["SCRAM-SHA-256"], user, "x").get_client_first().encode()).decode()
        return dict(part.split("=", 1) for part in fields.split(","))

    known, unknown = server_first("billing"), server_first("nobody")
    assert unknown["i"] == known["i"] == "8192" and len(unknown["s"]) == len(known["s"])
    # The lookup carries the shape, so an exchange given only the lookup gets it too.
    exchange = ScramServerExchange("SCRAM-SHA-256", creds.scram_lookup("SCRAM-SHA-256"))
    first = exchange.first(scramp.ScramClient(["SCRAM-SHA-256"], "nobody", "x").get_client_first().encode()).decode()
    assert ",i=8192" in first

    exchange = ScramServerExchange("SCRAM-SHA-256", creds.scram_lookup("SCRAM-SHA-256"))
    client = scramp.ScramClient(["SCRAM-SHA-256"], "billing", "wrong")
    client.set_server_first(exchange.first(client.get_client_first().encode()).decode())
    with pytest.raises(SaslError) as e:
        exchange.final(client.get_client_final().encode())
    assert e.value.audit_reason == "bad proof (wrong password) for user 'billing'"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_group_or_other_access_is_refused(tmp_path, mode):
    path = write(tmp_path, GOOD, mode)
    with pytest.raises(StaticCredentialsError, match=f"{path}: has mode {mode:04o}.*chmod 600 {path}"):
        load(path)


def test_owner_must_be_root(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(StaticCredentialsError, match=f"{path}: is owned by uid {ME}.*must be owned by uid {ME + 1}"):
        load_static_credentials(path, owner_uid=ME + 1)
    if ME != 0:
        with pytest.raises(StaticCredentialsError, match="must be owned by root"):
            load_static_credentials(path)


def test_symlinks_and_missing_files(tmp_path):
    path = write(tmp_path, GOOD)
    link = tmp_path / "link.yaml"
    link.symlink_to(path)
    with pytest.raises(StaticCredentialsError, match="symlink is refused"):
        load(link)
    with pytest.raises(StaticCredentialsError, match="does not exist"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("credentials: [\n", "YAML error at line 2"),
        ("users: []\n", "exactly one key, 'credentials'"),
        ("credentials: {}\n", "'credentials' must be a list"),
        ("credentials: [1]\n", r"credentials\[0\]: must be a mapping"),
        ("credentials:\n  - {mechanism: GSSAPI, username: a, password: b, identity: a}\n", "key 'mechanism' is 'GSSAPI'"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, password: b, identity: a, passwd: c}\n", "unknown key 'passwd' for PLAIN"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, salt: AAAA, identity: a}\n", "unknown key 'salt' for PLAIN"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, identity: a}\n", "key 'password' is missing"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, password: 123456, identity: a}\n", "'password' must be a string, got int \\(quote it\\)"),
        ("credentials:\n  - {mechanism: PLAIN, username: '', password: b, identity: a}\n", "key 'username' must be 1-255 bytes"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, password: b, identity: 'bad name'}\n", "key 'identity': identity 'bad name' is not valid"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, password: b, identity: a, groups: x}\n", "key 'groups' must be a list"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, password: b, identity: a, groups: ['a b']}\n", "key 'groups': 'a b' is not a valid group"),
        ("credentials:\n  - {mechanism: PLAIN, username: a, password: b, identity: a}\n"
         "  - {mechanism: PLAIN, username: a, password: c, identity: b}\n", r"credentials\[1\]: PLAIN user 'a' is already defined by credentials\[0\]"),
        ("credentials:\n  - {mechanism: SCRAM-SHA-256, username: a, password: b, salt: AAAA, identity: a}\n", "either 'password' or the stored keys"),
        ("credentials:\n  - {mechanism: SCRAM-SHA-256, username: a, salt: AAAAAAAAAAA=, identity: a}\n", "key 'stored_key' is missing"),
        ("credentials:\n  - {mechanism: SCRAM-SHA-256, username: a, salt: '!!', stored_key: a, server_key: a, iterations: 4096, identity: a}\n",
         "key 'salt' is not valid base64"),
        ("credentials:\n  - {mechanism: SCRAM-SHA-256, username: a, salt: AAAAAAAAAAA=, stored_key: AAAA, server_key: AAAA, iterations: 4096, identity: a}\n",
         "key 'stored_key' must decode to 32 bytes for SCRAM-SHA-256, got 3"),
    ],
)
def test_faults_name_the_file_entry_and_key(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(StaticCredentialsError, match=fragment) as e:
        load(path)
    assert str(e.value).startswith(str(path))


def test_iterations_are_bounded(tmp_path):
    keys = _kafka_style_keys("SCRAM-SHA-256", "x")
    for bad in (1000, True, "4096", 10**9):
        entry = {**keys, "iterations": bad}
        body = ", ".join(f"{k}: {v!r}" for k, v in entry.items())
        path = write(tmp_path, f"credentials:\n  - {{mechanism: SCRAM-SHA-256, username: a, identity: a, {body}}}\n")
        with pytest.raises(StaticCredentialsError, match="key 'iterations' must be a whole number from 4096"):
            load(path)


def test_empty_file_has_no_credentials(tmp_path):
    assert len(load(write(tmp_path, ""))) == 0
