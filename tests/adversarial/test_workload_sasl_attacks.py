"""Attacks on the workload's SASL, as a workload with no rights (or with another identity's valid token) makes
them: raw SaslHandshake / SaslAuthenticate frames from tests/adversarial/clients/sasl_attacker.py, against
the real appliance, the real broker and the session's real Keycloak.

Every refusal must reach the client as SASL_AUTHENTICATION_FAILED (or the Kafka-native error: an
unsupported mechanism, an unsupported version) with a message that names what was wrong, be audited (an
`authentications` row and the session's close reason), leave other sessions working and forward nothing to
the broker. Forged tokens are signed here: by a key of our own (under Keycloak's kid, or an unknown one),
with HMAC keyed by Keycloak's public key, or not at all; real ones come from Keycloak by client_credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.request
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.identity.sasl import format_oauthbearer
from tests.adversarial.reconfigured import reconfigured
from tests.integration.fixtures import (BROKER4, CLIENTS, IDP_AUDIENCE, IDP_ISSUER, PY, audit, cli,
                                        eventually)
from tests.json_http import JsonHandler

pytestmark = pytest.mark.integration  # the real appliance, broker, Keycloak and cgroups

ATTACKER = str(Path(__file__).resolve().parent / "clients" / "sasl_attacker.py")
HOST, PORT = BROKER4.split(":")
SUFFIX = secrets.token_hex(3)
OWN_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- tokens ---------------------------------------------------------------------------------------------

def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra) -> dict:
    now = int(time.time())
    return {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": str(uuid.uuid4()), "azp": "orders", "iat": now,
            "exp": now + 300, "groups": ["payments"], **extra}


def keycloak_jwks(keycloak) -> dict:
    with urllib.request.urlopen(keycloak.jwks_uri, timeout=10) as r:
        return json.load(r)


def keycloak_signing_key(keycloak) -> dict:
    return next(k for k in keycloak_jwks(keycloak)["keys"] if k.get("use") == "sig" and k["kty"] == "RSA")


def forged(kid: str, **extra) -> str:
    return jwt.encode(claims(**extra), OWN_KEY, algorithm="RS256", headers={"kid": kid})


def hs256_with_public_key(keycloak) -> str:
    jwk = keycloak_signing_key(keycloak)
    public = jwt.algorithms.RSAAlgorithm.from_jwk(jwk)
    secret = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': jwk['kid']})}.{b64(claims())}"
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def unsigned(keycloak) -> str:
    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': keycloak_signing_key(keycloak)['kid']})}.{b64(claims())}.AAAA"


def oauth(token: str, **kw) -> str:
    return format_oauthbearer(token, **kw).hex()


# --- running the attacker ---------------------------------------------------------------------------------

def attack(cg, cases: list[dict], parallel: bool = False, timeout: float = 120) -> dict:
    result = cg.run([PY, ATTACKER, HOST, PORT], input=json.dumps({"cases": cases, "parallel": parallel}),
                    timeout=timeout)
    return json.loads(result.stdout.strip().splitlines()[-1])


def sessions_of(config_path, cg) -> list[dict]:
    return [s for s in audit(config_path, "sessions") if s["cgroup_path"] == cg.cgroup.path]


def by_port(config_path, cg, results: dict, optional: frozenset = frozenset()) -> dict:
    """Each case's audited session (closed), found by the client port it connected from; a case in
    `optional` may have none (a connection the client closed before the appliance accepted it)."""
    state = {}

    def all_closed():
        rows = {s["client_address"].rsplit(":", 1)[1]: s for s in sessions_of(config_path, cg) if s["ended_at"]}
        found = {name: rows.get(str(r["port"])) for name, r in results.items() if "port" in r}
        state["missing"] = sorted(n for n, v in found.items() if v is None and n not in optional)
        return found if not state["missing"] else None
    try:
        return eventually(all_closed, timeout=20, message="every attack's session closed and audited")
    except AssertionError:
        raise AssertionError(f"no closed session audited for {state['missing'][:10]} "
                             f"({len(state['missing'])} missing)") from None


def authentications_of(config_path, session_ids) -> list[dict]:
    return [a for a in audit(config_path, "authentications") if a["session_id"] in session_ids]


def step_hs(mechanism="OAUTHBEARER", version=1):
    return {"api": "handshake", "mechanism": mechanism, "version": version}


def step_auth(hex_bytes: str | None = None, version=2, text: str | None = None, **kw):
    step = {"api": "authenticate", "version": version, **kw}
    if hex_bytes is not None:
        step["auth_hex"] = hex_bytes
    if text is not None:
        step["auth"] = text
    return step


@pytest.fixture(scope="module")
def steady_topic(direct, sasl_args):
    topic = f"sasl-steady-{SUFFIX}"
    direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    return topic


@pytest.fixture
def steady(enroll, steady_topic):
    """A producer in another cgroup that must keep producing through every attack."""
    cg = enroll("steady")
    proc = cg.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, steady_topic, "--produce", "2000"])
    yield proc
    if proc.poll() is None:
        proc.kill()


def steady_result(proc) -> dict:
    out, err = proc.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


# (name, steps, [(api key, error code, fragment of the message or None)], closed?, close-reason fragment,
#  refused-authentication fragment or None)
def hostile_cases(keycloak) -> list[tuple]:
    ledger = keycloak.token("ledger")
    kid = keycloak_signing_key(keycloak)["kid"]
    failed = "SASL authentication failed: "
    return [
        *[(f"authenticate-before-handshake-v{v}", [step_auth(oauth(ledger), version=v)],
           [(36, 58, "SaslAuthenticate arrived before a SaslHandshake chose a mechanism")], True,
           failed + "SaslAuthenticate arrived before", "before a SaslHandshake") for v in (0, 1, 2)],
        ("plain-handshake-oauthbearer-bytes", [step_hs("PLAIN"), step_auth(oauth(ledger))],
         [(17, 0, None), (36, 58, "authentication failed (PLAIN): PLAIN message")], True, failed + "PLAIN",
         "PLAIN message"),
        ("oauthbearer-handshake-scram-bytes", [step_hs(), step_auth(text="n,,n=legacy-scram,r=abcdefgh")],
         [(17, 0, None), (36, 58, "OAUTHBEARER initial response: the GS2 header must be followed by 0x01")],
         True, failed + "OAUTHBEARER initial response", "OAUTHBEARER initial response"),
        # SaslHandshake v0 would be followed by a raw token the proxy cannot read: not offered, refused.
        ("handshake-v0", [step_hs("OAUTHBEARER", version=0)], [(17, 35, None)], False, None, None),
        ("handshake-v2", [{"api": "raw", "hex": (b"\x00\x11\x00\x02\x00\x00\x00\x01\x00\x00" + b"\x00").hex()}],
         [], True, "SaslHandshake v2 (api key 17) is offered at v0-v1 only", None),
        ("authenticate-v3", [step_hs(), {"api": "raw", "hex": (b"\x00\x24\x00\x03\x00\x00\x00\x02\x00\x00\x00"
                                                                  b"\x00\x01\x00").hex()}],
         [(17, 0, None)], True, "SaslAuthenticate v3 request (correlation id 2) arrived in the middle of a SASL "
                                 "exchange", None),
        ("authenticate-v3-first", [{"api": "raw", "hex": (b"\x00\x24\x00\x03\x00\x00\x00\x01\x00\x00\x00"
                                                          b"\x01\x00").hex()}],
         [], True, "SaslAuthenticate v3 (api key 36) is offered at v0-v2 only", None),
        ("huge-auth-bytes", [step_hs(), step_auth(oauth("a" * 60_000))],
         [(17, 0, None), (36, 58, "more than the")], True, failed, "more than the"),
        ("lying-auth-bytes-length", [step_hs(), step_auth(version=1, lying_length=0x7FFFFFFF)],
         [(17, 0, None)], True, "auth_bytes: length 2147483647 exceeds", None),
        ("empty-auth-bytes", [step_hs(), step_auth("")],
         [(17, 0, None), (36, 58, "GS2 header must start with 'n,'")], True, failed, "GS2 header"),
        ("garbage-gs2", [step_hs(), step_auth(b"x,,\x01auth=Bearer a\x01\x01".hex())],
         [(17, 0, None), (36, 58, "GS2 header must start with 'n,'")], True, failed, "GS2 header"),
        ("gs2-channel-binding", [step_hs(), step_auth(b"p=tls-unique,,\x01auth=Bearer a\x01\x01".hex())],
         [(17, 0, None), (36, 58, "channel binding")], True, failed, "channel binding"),
        # A real token for ledger asking to act as orders (who may do everything here).
        ("authzid-other-than-the-token", [step_hs(), step_auth(oauth(ledger, authzid="orders"))],
         [(17, 0, None), (36, 58, "the authorization id 'orders' in the GS2 header is not the token's identity "
                                  "'ledger'")], True, failed, "authorization id 'orders'"),
        ("extension-with-control-char", [step_hs(), step_auth(oauth(ledger, extensions={"x": "a\x07b"}))],
         [(17, 0, None), (36, 58, "control or non-ASCII character")], True, failed, "control"),
        ("alg-none", [step_hs(), step_auth(oauth(unsigned(keycloak)))],
         [(17, 0, None), (36, 58, "token is unsigned (alg 'none')")], True, failed, "alg 'none'"),
        ("hs256-keyed-by-the-jwks-public-key", [step_hs(), step_auth(oauth(hs256_with_public_key(keycloak)))],
         [(17, 0, None), (36, 58, "HMAC is never accepted")], True, failed, "HMAC"),
        ("unknown-kid", [step_hs(), step_auth(oauth(forged("attacker-" + secrets.token_hex(4))))],
         [(17, 0, None), (36, 58, "is not one of the provider's signing keys")], True, failed, "signing keys"),
        ("forged-with-keycloaks-kid", [step_hs(), step_auth(oauth(forged(kid)))],
         [(17, 0, None), (36, 58, "signature does not verify")], True, failed, "signature does not verify"),
        ("other-issuer", [step_hs(), step_auth(oauth(forged(kid, iss="http://127.0.0.1:1/realms/evil")))],
         [(17, 0, None), (36, 58, "is not a provider the appliance trusts")], True, failed, "trusts"),
        ("unknown-mechanism-then-metadata", [step_hs("GSSAPI"), {"api": "metadata"}],
         [(17, 33, None)], True, "arrived before the workload authenticated", None),
        ("metadata-before-authentication", [{"api": "metadata"}], [], True,
         "Metadata v12 request (correlation id 1) arrived before the workload authenticated", None),
        ("produce-before-authentication", [{"api": "produce", "topic": "idp-anything"}], [], True,
         "Produce v9 request (correlation id 1) arrived before the workload authenticated", None),
        ("produce-pipelined-behind-a-forged-token",
         [step_hs(), step_auth(oauth(forged(kid))), {"api": "produce", "topic": "idp-anything"}],
         [(17, 0, None), (36, 58, "signature does not verify")], True, failed, "signature"),
        ("produce-in-the-middle-of-scram",
         [step_hs("SCRAM-SHA-512"), {"api": "scram-first", "mechanism": "SCRAM-SHA-512", "user": "legacy-scram",
                                     "password": "legacy-scram-pw"}, {"api": "produce", "topic": "idp-x"}],
         [(17, 0, None), (36, 0, None)], True, "arrived in the middle of a SASL exchange", None),
        ("plain-authzid-other-than-the-user", [step_hs("PLAIN"), step_auth(b"orders\0legacy-plain\0legacy-plain-pw".hex())],
         [(17, 0, None), (36, 58, "the authorization id 'orders' is not the username 'legacy-plain'")], True,
         failed, "authorization id"),
        ("plain-with-a-nul-in-the-password", [step_hs("PLAIN"), step_auth(b"\0legacy-plain\0legacy\0plain-pw".hex())],
         [(17, 0, None), (36, 58, "exactly two NUL separators")], True, failed, "NUL"),
        ("plain-wrong-password", [step_hs("PLAIN"), step_auth(b"\0legacy-plain\0guess".hex())],
         [(17, 0, None), (36, 58, "PLAIN credentials for user 'legacy-plain' are not known")], True, failed,
         "unknown static credential"),
        ("scram-tampered-nonce",
         [step_hs("SCRAM-SHA-512"), {"api": "scram-first", "mechanism": "SCRAM-SHA-512", "user": "legacy-scram",
                                     "password": "legacy-scram-pw"},
          {"api": "scram-final", "nonce_suffix": "x", "wait": True}],
         [(17, 0, None), (36, 0, None), (36, 58, "nonce is not the one this exchange started with")], True, failed,
         "nonce"),
        ("scram-honest",  # its client-final is replayed by the next case
         [step_hs("SCRAM-SHA-512"), {"api": "scram-first", "mechanism": "SCRAM-SHA-512", "user": "legacy-scram",
                                     "password": "legacy-scram-pw"}, {"api": "scram-final", "wait": True}],
         [(17, 0, None), (36, 0, None), (36, 0, None)], False, None, None),
        ("scram-replayed-final",
         [step_hs("SCRAM-SHA-512"), {"api": "scram-first", "mechanism": "SCRAM-SHA-512", "user": "legacy-scram",
                                     "password": "legacy-scram-pw"}, {"api": "scram-replay", "of": "scram-honest",
                                                                       "wait": True}],
         [(17, 0, None), (36, 0, None), (36, 58, "nonce is not the one this exchange started with")], True, failed,
         "nonce"),
    ]


def test_each_hostile_sasl_exchange_is_refused_by_name_audited_and_forwards_nothing(appliance, config_path,
                                                                                  keycloak, enroll, steady):
    # auth token, no --accept: the workload must authenticate before anything but ApiVersions.
    pool = enroll("sasl-pool", auth="token")
    cases = hostile_cases(keycloak)
    results = attack(pool, [{"name": name, "send": steps, "read_for": 3 if not closed else 8}
                            for name, steps, _, closed, _, _ in cases])
    assert appliance.proc.poll() is None, appliance.log.read_text()[-3000:]
    for name, _, expected, closed, _, _ in cases:
        got = results[name]
        assert [(a["api"], a["error_code"]) for a in got["answers"]] == [(k, c) for k, c, _ in expected], (name, got)
        for (_, _, fragment), answer in zip(expected, got["answers"]):
            if fragment is not None:
                assert fragment in (answer.get("error_message") or ""), (name, answer)
            assert "eyJ" not in (answer.get("error_message") or ""), (name, answer)  # never the token
        assert got["closed"] == closed, (name, got)

    sessions = by_port(config_path, pool, results)
    auths = authentications_of(config_path, {s["session_id"] for s in sessions.values() if s})
    for name, _, _, closed, reason, refused in cases:
        if not closed:
            continue
        session = sessions[name]
        assert session is not None, (name, "no audited session")
        assert reason in session["close_reason"], (name, session["close_reason"])
        if refused is not None:
            rows = [a for a in auths if a["session_id"] == session["session_id"] and a["outcome"] == "refused"]
            assert rows and refused in rows[0]["reason"], (name, rows)
        assert not [a for a in auths if a["session_id"] == session["session_id"] and a["outcome"] == "ok"], name
    # Nothing reached the broker from the refused sessions: every operation of theirs was answered by the
    # proxy or refused.
    refused_ids = {s["session_id"] for name, s in sessions.items() if s and name != "scram-honest"}
    forwarded = [o for o in audit(config_path, "operations") if o["session_id"] in refused_ids
                 and o["outcome"] not in ("answered-by-proxy", "refused", "unanswered")]
    assert forwarded == [], forwarded
    # The steady producer in another cgroup never noticed.
    summary = steady_result(steady)
    assert summary["produced"] == 2000 and summary["errors"] == [], summary


def test_another_identitys_valid_token_buys_a_rightless_workload_nothing(appliance, config_path, keycloak, enroll):
    # A workload with no rights (cgroup mode, an identity no rule names) presents orders' real token, which
    # may do everything here: a mismatch, refused; the produce pipelined behind it never reaches the broker.
    stranger = enroll("sasl-stranger")
    orders = keycloak.token("orders")
    results = attack(stranger, [{"name": "borrowed", "send": [
        step_hs(), step_auth(oauth(orders)), {"api": "produce", "topic": f"idp-borrowed-{SUFFIX}"}]}])
    got = results["borrowed"]
    assert [(a["api"], a["error_code"]) for a in got["answers"]] == [(17, 0), (36, 58)], got
    assert "identity mismatch: token for 'orders'" in got["answers"][1]["error_message"]
    assert "enrolled as 'sasl-stranger'" in got["answers"][1]["error_message"] and got["closed"]
    [session] = by_port(config_path, stranger, results).values()
    assert not [o for o in audit(config_path, "operations") if o["session_id"] == session["session_id"]
                and o["api_name"] == "Produce"]

    # Token mode: re-authentication as another identity on the same connection is refused and closes it;
    # the metadata pipelined behind the first (valid) authentication is answered only after it, as ledger.
    pool = enroll("sasl-reauth", auth="token")
    ledger = keycloak.token("ledger")
    results = attack(pool, [{"name": "switch", "send": [
        step_hs(), step_auth(oauth(ledger)), {"api": "metadata"},
        {**step_hs(), "wait": True}, step_auth(oauth(orders)), {"api": "metadata"}]}])
    got = results["switch"]
    assert [(a["api"], a["error_code"]) for a in got["answers"]] == [(17, 0), (36, 0), (3, 0), (17, 0), (36, 58)], got
    assert 0 < got["answers"][1]["lifetime_ms"] <= 300_000
    assert "re-authentication as 'orders' on a session of 'ledger'" in got["answers"][4]["error_message"]
    assert got["closed"]
    [session] = by_port(config_path, pool, results).values()
    assert "identity changed" in session["close_reason"]
    ops = [o for o in audit(config_path, "operations") if o["session_id"] == session["session_id"]
           and o["api_name"] == "Metadata"]
    assert len(ops) == 1  # the second metadata, behind the refused re-authentication, was never sent


def test_a_revoked_identity_is_cut_off_where_another_cgroup_accepts_its_tokens(appliance, config_path, keycloak,
                                                                             enroll):
    # cgroup+token, enrolled as sasl-ci and accepting ledger's tokens: its sessions are named sasl-ci.
    ci = enroll("sasl-ci", auth="cgroup+token", accepts=("ledger",))
    cli(config_path, "revoke", "--identity", "ledger", "--reason", "test: ledger's secret leaked")
    time.sleep(1)  # serve reads the revocation file within a quarter of a second
    try:
        results = attack(ci, [{"name": "revoked", "send": [step_hs(), step_auth(oauth(keycloak.token("ledger")))]}])
        got = results["revoked"]
        assert [(a["api"], a["error_code"]) for a in got["answers"]] == [(17, 0), (36, 58)], got
        assert "the credential is revoked: identity 'ledger' revoked by" in got["answers"][1]["error_message"], got
        [session] = by_port(config_path, ci, results).values()
        auths = authentications_of(config_path, {session["session_id"]})
        assert auths and auths[0]["outcome"] == "refused" and "revoked" in auths[0]["reason"], auths
    finally:
        cli(config_path, "revoke", "--identity", "ledger", "--withdraw")


def enroll_in(app, make_cgroup, identity: str, *args: str):
    cg = make_cgroup(identity)
    cli(app.config_path, "enroll", cg.cgroup.path, "--identity", identity, *args)
    eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in (app.status() or {}).get("workloads", [])),
               timeout=5, message=f"enrolment of {identity} applied")
    return cg


class _CountingJwks(JsonHandler):
    """Keycloak's JWKS, forwarded and counted: how often the appliance asks the provider for keys."""

    upstream = ""
    fetches: list[float] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).fetches.append(time.time())
        with urllib.request.urlopen(self.upstream, timeout=10) as r:
            body = r.read()
        self.send_json(body)


@pytest.fixture
def counted_jwks(keycloak):
    _CountingJwks.upstream = keycloak.jwks_uri
    _CountingJwks.fetches = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingJwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/certs", _CountingJwks.fetches
    server.shutdown()


def test_a_flood_of_unknown_kids_costs_keycloak_a_fetch_per_interval_and_others_keep_working(
        appliance, keycloak, make_cgroup, counted_jwks, steady_topic):
    jwks_uri, fetches = counted_jwks
    settings = yaml.safe_load(appliance.config_path.read_text())
    identity = dict(settings["identity"])
    identity["providers"] = [{**identity["providers"][0], "jwks_uri": jwks_uri}]
    with reconfigured(appliance, "sasl-jwks", identity=identity) as app:
        flood = enroll_in(app, make_cgroup, "sasl-flood", "--auth=token")
        steady = enroll_in(app, make_cgroup, "steady")
        producer = steady.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, steady_topic, "--produce", "2000"])
        began = time.time()
        kid = keycloak_signing_key(keycloak)["kid"]
        n = 120
        cases = [{"name": f"kid-{i}", "send": [step_hs(), step_auth(oauth(forged(f"kid-{secrets.token_hex(6)}")))]}
                 for i in range(n)]
        # Beside them: sessions that hold a verification and vanish, and one that reads its refusal late.
        cases += [{"name": f"vanish-{i}", "disconnect": True,
                   "send": [step_hs(), step_auth(oauth(forged(f"kid-{secrets.token_hex(6)}")))]} for i in range(20)]
        cases.append({"name": "slow-reader", "sleep_before_read": 2.0,
                      "send": [step_hs(), step_auth(oauth(forged(kid)))]})
        cases.append({"name": "honest", "send": [step_hs(), step_auth(oauth(keycloak.token("ledger"))),
                                                 {"api": "metadata"}], "read_for": 3})
        results = attack(flood, cases, parallel=True, timeout=180)
        second = attack(flood, [{"name": f"again-{i}", "send": [
            step_hs(), step_auth(oauth(forged(f"kid-{secrets.token_hex(6)}")))]} for i in range(60)], parallel=True)
        elapsed = time.time() - began
        assert app.proc.poll() is None, app.log.read_text()[-3000:]
        for name, got in {**results, **second}.items():
            if name.startswith(("kid-", "again-")):
                assert [(a["api"], a["error_code"]) for a in got["answers"]] == [(17, 0), (36, 58)], (name, got)
                assert "is not one of the provider's signing keys" in got["answers"][1]["error_message"]
                assert got["closed"], (name, got)
        slow = results["slow-reader"]
        assert [a["error_code"] for a in slow["answers"]] == [0, 58] and slow["closed"], slow
        assert "signature does not verify" in slow["answers"][1]["error_message"]
        honest = results["honest"]
        assert [(a["api"], a["error_code"]) for a in honest["answers"]] == [(17, 0), (36, 0), (3, 0)], honest
        # One fetch at start-up (or the first token), then at most one per min_refetch_interval_s (10 s).
        during = [t for t in fetches if t >= began]
        assert len(during) <= 1 + int(elapsed // 10) + 1, (len(during), elapsed, during)
        # Every session was closed and audited (those that vanished mid-verification as closed by the
        # client), and none is left live.
        everything = {**results, **second}
        vanished = frozenset(f"vanish-{i}" for i in range(20))
        sessions = by_port(app.config_path, flood, everything, optional=vanished)
        for name in vanished:
            assert sessions[name] is None or "client closed the connection" in sessions[name]["close_reason"], \
                sessions[name]
        ports = {str(r["port"]) for r in everything.values()}
        eventually(lambda: not [s for s in (app.status() or {}).get("sessions", [])
                                if s["client_address"].rsplit(":", 1)[1] in ports],
                   timeout=10, message="no attacking session left live")
        out, err = producer.communicate(timeout=120)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["produced"] == 2000 and summary["errors"] == [], summary
