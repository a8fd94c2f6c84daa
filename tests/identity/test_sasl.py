import json

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.identity.sasl import (
    MECHANISMS_OFFERED, OAuthBearerInitial, PlainCredentials, SaslError, ScramServerExchange, StoredScram,
    format_oauthbearer, oauthbearer_error_challenge, parse_oauthbearer, parse_plain,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


# --- OAUTHBEARER ---------------------------------------------------------------------------------


def test_kafka_client_initial_response():
    parsed = parse_oauthbearer(f"n,,\x01auth=Bearer {TOKEN}\x01\x01".encode())
    assert parsed == OAuthBearerInitial(token=TOKEN, authzid=None, extensions={})
    assert TOKEN not in repr(parsed)


def test_authzid_escapes_scheme_case_and_extensions():
    parsed = parse_oauthbearer(f"n,a=us=2Cer=3D1,\x01host=kafka\x01auth=bEaReR {TOKEN}\x01port=9092\x01\x01".encode())
    assert parsed.authzid == "us,er=1"
    assert parsed.token == TOKEN
    assert parsed.extensions == {"host": "kafka", "port": "9092"}


@pytest.mark.parametrize(
    "message, fault",
    [
        (b"p=tls-unique,,\x01auth=Bearer abc\x01\x01", "channel binding"),
        (b"y,,\x01auth=Bearer abc\x01\x01", "channel binding"),
        (b"x,,\x01auth=Bearer abc\x01\x01", "GS2 header must start with 'n,'"),
        (b"n,", "not terminated"),
        (b"n,b=x,\x01auth=Bearer abc\x01\x01", "'a=<authzid>'"),
        (b"n,a=,\x01auth=Bearer abc\x01\x01", "authorization id after 'a=' is empty"),
        (b"n,a=x=2,\x01auth=Bearer abc\x01\x01", "not followed by '2C' or '3D'"),
        (b"n,a=x=41,\x01auth=Bearer abc\x01\x01", "not followed by '2C' or '3D'"),
        (b"n,,auth=Bearer abc\x01\x01", "followed by 0x01"),
        (b"n,,\x01auth=Bearer abc\x01", "must end with 0x01 0x01"),
        (b"n,,\x01\x01", "must end with 0x01 0x01"),
        (b"n,,\x01host=x\x01\x01", "no 'auth=Bearer <token>'"),
        (b"n,,\x01auth=Bearer abc\x01auth=Bearer abc\x01\x01", "'auth' is given more than once"),
        (b"n,,\x01auth=Bearer abc\x01host=a\x01host=b\x01\x01", "extension 'host' is given more than once"),
        (b"n,,\x01auth=Bearer abc\x01ho-st=a\x01\x01", "keys are ASCII letters only"),
        (b"n,,\x01auth=Bearer abc\x01host\x01\x01", "has no '='"),
        (b"n,,\x01auth=Bearer abc\x01host=a\x02b\x01\x01", "control or non-ASCII"),
        (b"n,,\x01auth=Basic abc\x01\x01", "scheme 'Bearer'"),
        (b"n,,\x01auth=Bearerabc\x01\x01", "scheme 'Bearer'"),
        (b"n,,\x01auth=Bearer \x01\x01", "token is empty"),
        (b"n,,\x01auth=Bearer ab<c\x01\x01", "outside the b64token set at position 2"),
        (b"n,,\x01auth=Bearer ab=c\x01\x01", "'=' before its end"),
        (b"n,,\x01auth=Bearer abc\xff\x01\x01", "not valid UTF-8"),
    ],
)
def test_each_fault_is_named(message, fault):
    with pytest.raises(SaslError, match="OAUTHBEARER initial response: .*" + _re(fault)):
        parse_oauthbearer(message)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_token_size_limit_and_no_echo():
    secret = "s" * 200
    with pytest.raises(SaslError, match="more than the 100 allowed") as e:
        parse_oauthbearer(format_oauthbearer(secret), max_token_bytes=100)
    assert secret not in str(e.value)
    with pytest.raises(SaslError, match="allowed") as e:
        parse_oauthbearer(b"n,,\x01auth=Bearer " + b"a" * 100_000 + b"\x01\x01")
    with pytest.raises(SaslError) as e:
        parse_oauthbearer(f"n,,\x01auth=Bearer {secret}<\x01\x01".encode())
    assert secret not in str(e.value)


def test_error_challenge_is_rfc7628_json():
    assert json.loads(oauthbearer_error_challenge()) == {"status": "invalid_token"}
    body = json.loads(oauthbearer_error_challenge("insufficient_scope", "kafka", "https://idp/.well-known/openid-configuration"))
    assert body == {"status": "insufficient_scope", "scope": "kafka",
                    "openid-configuration": "https://idp/.well-known/openid-configuration"}
    with pytest.raises(ValueError):
        oauthbearer_error_challenge("bad status")


b64token = st.from_regex(r"\A[A-Za-z0-9\-._~+/]{1,200}={0,2}\Z")
saslname = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    lambda s: len(s.encode()) <= 255
)
extension_values = st.from_regex(r"\A[\x21-\x7e \t\r\n]{0,40}\Z")
extension_keys = st.from_regex(r"\A[A-Za-z]{1,12}\Z").filter(lambda k: k != "auth")


@given(token=b64token, authzid=st.none() | saslname, extensions=st.dictionaries(extension_keys, extension_values, max_size=5))
@settings(max_examples=200, deadline=None)
def test_well_formed_messages_round_trip(token, authzid, extensions):
    parsed = parse_oauthbearer(format_oauthbearer(token, authzid, extensions))
    assert parsed == OAuthBearerInitial(token=token, authzid=authzid, extensions=extensions)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_oauthbearer_only_ever_raises_sasl_error(data):
    try:
        parse_oauthbearer(data)
    except SaslError:
        pass


@given(st.lists(st.sampled_from([b"n,", b"a=", b",", b"=2C", b"=3D", b"=", b"\x01", b"auth=", b"Bearer ", b"x", b"host=",
                                 b"\x00", b"\xc3", b" ", b"p=", b"y,"]), max_size=20))
@settings(max_examples=500, deadline=None)
def test_oauthbearer_structured_garbage_only_raises_sasl_error(pieces):
    try:
        parse_oauthbearer(b"".join(pieces))
    except SaslError:
        pass


# --- PLAIN ---------------------------------------------------------------------------------------


def test_plain():
    assert parse_plain(b"\x00alice\x00s3cret") == PlainCredentials(None, "alice", "s3cret")
    assert parse_plain("admin\x00alice\x00pässword".encode()) == PlainCredentials("admin", "alice", "pässword")
    assert "s3cret" not in repr(parse_plain(b"\x00alice\x00s3cret"))


@pytest.mark.parametrize(
    "data, fault",
    [
        (b"alice\x00s3cret", "exactly two NUL separators"),
        (b"\x00alice\x00s3\x00cret", "exactly two NUL separators"),
        (b"\x00\x00s3cret", "the username is empty"),
        (b"\x00alice\x00", "the password is empty"),
        (b"\x00al\xffice\x00pw", "the username is not valid UTF-8"),
        (b"\x00" + b"u" * 256 + b"\x00pw", "the username is 256 bytes"),
        (b"\x00u\x00" + b"p" * 800, "more than the 767 allowed"),
    ],
)
def test_plain_faults_are_named(data, fault):
    with pytest.raises(SaslError, match="PLAIN message: .*" + _re(fault)):
        parse_plain(data)


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_plain_only_ever_raises_sasl_error(data):
    try:
        parse_plain(data)
    except SaslError:
        pass


plain_field = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(
    lambda s: len(s.encode()) <= 255
)


@given(authzid=st.none() | plain_field, username=plain_field, password=plain_field)
@settings(max_examples=200, deadline=None)
def test_plain_round_trip(authzid, username, password):
    message = f"{authzid or ''}\x00{username}\x00{password}".encode()
    assert parse_plain(message) == PlainCredentials(authzid, username, password)


# --- SCRAM ---------------------------------------------------------------------------------------


def _store(mechanism, **users):
    m = scramp.ScramMechanism(mechanism)
    db = {}
    for name, password in users.items():
        salt, stored, server, iterations = m.make_auth_info(password)
        db[name] = StoredScram(salt, stored, server, iterations)
    return db


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_exchange_against_scramp_client(mechanism):
    exchange = ScramServerExchange(mechanism, _store(mechanism, alice="pw").get)
    client = scramp.ScramClient([mechanism], "alice", "pw")
    client.set_server_first(exchange.first(client.get_client_first().encode()).decode())
    client.set_server_final(exchange.final(client.get_client_final().encode()).decode())  # verifies the server too
    assert exchange.username == "alice"


def _run(exchange, user, password, mechanism="SCRAM-SHA-256", tamper=None):
    client = scramp.ScramClient([mechanism], user, password)
    server_first = exchange.first(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    final = client.get_client_final()
    if tamper:
        final = tamper(final)
    return server_first, exchange.final(final.encode())


def test_wrong_password_and_unknown_user_look_alike():
    db = _store("SCRAM-SHA-256", alice="pw")
    wrong = ScramServerExchange("SCRAM-SHA-256", db.get)
    with pytest.raises(SaslError) as wrong_error:
        _run(wrong, "alice", "nope")
    unknown = ScramServerExchange("SCRAM-SHA-256", db.get)
    with pytest.raises(SaslError) as unknown_error:
        _run(unknown, "mallory", "pw")
    assert str(wrong_error.value) == str(unknown_error.value)
    assert "invalid credentials" in str(wrong_error.value)
    assert wrong_error.value.audit_reason == "bad proof (wrong password) for user 'alice'"
    assert unknown_error.value.audit_reason == "unknown user 'mallory'"
    assert wrong.username is None and unknown.username is None


def test_unknown_user_gets_a_stable_real_looking_salt():
    db = _store("SCRAM-SHA-256", alice="pw")

    def server_first(user):
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, "x")
        text = ScramServerExchange("SCRAM-SHA-256", db.get).first(client.get_client_first().encode()).decode()
        return dict(part.split("=", 1) for part in text.split(","))

    real, fake, fake_again = server_first("alice"), server_first("mallory"), server_first("mallory")
    assert fake["s"] == fake_again["s"] and fake["i"] == real["i"] == "4096"
    assert len(fake["s"]) == len(real["s"])


def test_tampered_nonce_is_malformed():
    exchange = ScramServerExchange("SCRAM-SHA-256", _store("SCRAM-SHA-256", alice="pw").get)

    def tamper(final):
        parts = final.split(",")
        parts[1] = parts[1][:-2] + ("AA" if not parts[1].endswith("AA") else "BB")
        return ",".join(parts)

    with pytest.raises(SaslError, match="nonce is not the one this exchange started with") as e:
        _run(exchange, "alice", "pw", tamper=tamper)
    assert e.value.audit_reason.startswith("malformed SCRAM-SHA-256 client-final message from user 'alice'")


def test_tampered_proof_is_bad_proof():
    exchange = ScramServerExchange("SCRAM-SHA-256", _store("SCRAM-SHA-256", alice="pw").get)

    def tamper(final):
        head, proof = final.rsplit(",p=", 1)
        return head + ",p=" + ("A" if proof[0] != "A" else "B") + proof[1:]

    with pytest.raises(SaslError) as e:
        _run(exchange, "alice", "pw", tamper=tamper)
    assert "bad proof" in e.value.audit_reason


@pytest.mark.parametrize(
    "client_first, fault",
    [
        (b"p=tls-unique,,n=alice,r=abc", "channel binding"),
        (b"n,,n=alice", "Malformed"),
        (b"n,,r=abc,n=alice", "Malformed"),
        (b"n,,n=al=ice,r=abc", "'='"),
        (b"n,a=bob,n=alice,r=abc", "an authorization id ('a=' in the GS2 header) is not supported"),
        (b"n,a=alice,n=alice,r=abc", "an authorization id ('a=' in the GS2 header) is not supported"),
        (b"n,,n=alice,r=abc,tokenauth=true", "delegation tokens"),
        (b"\xff", "not valid UTF-8"),
        (b"n,,n=alice,r=" + b"a" * 3000, "more than the 2048 allowed"),
    ],
)
def test_malformed_client_first(client_first, fault):
    exchange = ScramServerExchange("SCRAM-SHA-256", _store("SCRAM-SHA-256", alice="pw").get)
    with pytest.raises(SaslError, match=_re(fault)):
        exchange.first(client_first)
    with pytest.raises(SaslError, match="after the exchange ended"):
        exchange.final(b"c=biws,r=abc,p=AAAA")


def test_stages_are_enforced():
    exchange = ScramServerExchange("SCRAM-SHA-256", _store("SCRAM-SHA-256", alice="pw").get)
    with pytest.raises(SaslError, match="before the client-first"):
        exchange.final(b"c=biws,r=abc,p=AAAA")
    exchange = ScramServerExchange("SCRAM-SHA-256", _store("SCRAM-SHA-256", alice="pw").get)
    exchange.first(b"n,,n=alice,r=abc")
    with pytest.raises(SaslError, match="sent twice"):
        exchange.first(b"n,,n=alice,r=abc")


def test_a_failing_lookup_is_not_the_clients_fault():
    def lookup(user):
        raise OSError("disk")

    with pytest.raises(SaslError) as e:
        _run(ScramServerExchange("SCRAM-SHA-256", lookup), "alice", "pw")
    assert e.value.audit_reason == "credential lookup failed: OSError for user 'alice'"


@given(first=st.binary(max_size=200), final=st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_scram_only_ever_raises_sasl_error(first, final):
    exchange = ScramServerExchange("SCRAM-SHA-256", _store_cached().get)
    for step, data in ((exchange.first, b"n,,n=alice,r=" + first), (exchange.final, final)):
        try:
            step(data)
        except SaslError:
            return


_CACHED: dict = {}


def _store_cached():
    if not _CACHED:
        _CACHED.update(_store("SCRAM-SHA-256", alice="pw"))
    return _CACHED


def test_mechanisms_offered():
    assert MECHANISMS_OFFERED == ("OAUTHBEARER", "SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
    with pytest.raises(ValueError, match="not supported"):
        ScramServerExchange("SCRAM-SHA-1", {}.get)


def test_unknown_user_shape_can_follow_the_real_users():
    from appliance.identity.sasl import ScramShape

    exchange = ScramServerExchange("SCRAM-SHA-512", {}.get, unknown_user_shape=ScramShape(iterations=10000, salt_bytes=80))
    fields = dict(p.split("=", 1) for p in exchange.first(b"n,,n=nobody,r=abc").decode().split(","))
    assert fields["i"] == "10000"
    import base64

    assert len(base64.b64decode(fields["s"])) == 80
