"""Every client family authenticates to the appliance as a real workload would configure it.

The proxy terminates the workload's SASL (appliance/proxy/workload_sasl.py). Here each family (kcat,
confluent-kafka, kafka-python, aiokafka, franz-go, the Java 4.x producer and consumer with the
classic and the KIP-848 group protocol, and the Java admin) runs unmodified in an enrolled cgroup
and reaches the broker address 127.0.0.1:39092, which the kernel steers to the proxy:

  static        PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 logins from the migration credentials file
                (identity `legacy`, group payments; the cgroup is enrolled as legacy, auth=cgroup):
                produce and consume work, and the audit records a static login of that user name;
  wrong pw      a wrong password is refused, the client says so naming the mechanism, and nothing is
                produced;
  tokens-only   a static login of an identity the policy allows tokens only for is refused;
  oauth         OAUTHBEARER with a token each client fetches itself from the identity provider by
                client_credentials (the realm's `ledger` client, group payments; the cgroup is
                enrolled auth=token): produce and consume work, and the audit records the token's
                subject, client id, token id and expiry;
  re-auth       franz-go and Java consumers whose tokens live 30 s (the realm's `short-lived`
                client) tail a topic for longer than that: they re-authenticate (KIP-368) before
                the session lifetime the proxy gave them runs out, and keep consuming.

Every cell of a kind runs at once, in threads, as in tests/adversarial/test_client_families.py;
the tests read the results. Topics are idp-* (what group payments may use), made up front.
"""

from __future__ import annotations

import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.idp.realm import SHORT_TOKEN_LIFESPAN_S, service_account_id
from tests.integration.clients.families import FAMILIES, OAuth, Sasl, java_admin
from tests.integration.conftest import BROKER4, CLIENTS, PY, WORKLOAD_PARENT, Cgroup, audit, cli, eventually
from tests.integration.fixtures import STATIC_CREDENTIALS

SUFFIX = secrets.token_hex(3)
N = 5
WORKERS = 6
OAUTH_CLIENT = "ledger"  # group payments in the demo realm: the policy gives it idp-* topics and groups
REAUTH_CLIENT = "short-lived"  # group payments, 30 s tokens
REAUTH_FAMILIES = ("franz-go", "java-classic", "java-kip848")


def login(mechanism: str, identity: str = "legacy") -> Sasl:
    for m, username, password, who, _groups in STATIC_CREDENTIALS:
        if m == mechanism and who == identity:
            return Sasl(mechanism, username, password)
    raise LookupError(f"no {mechanism} credential for {identity} in STATIC_CREDENTIALS")


# librdkafka and Java speak all three static mechanisms here; the others SHA-512 and PLAIN.
ALL_STATIC = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
STATIC_MATRIX = [(family, mechanism) for family in FAMILIES
                 for mechanism in (ALL_STATIC if family in ("kcat", "confluent-kafka", "java-classic", "java-kip848")
                                   else ("PLAIN", "SCRAM-SHA-512"))]
WRONG_MECHANISMS = ("PLAIN", "SCRAM-SHA-512")


def slug(*parts: str) -> str:
    return "-".join(p.lower() for p in parts)


TOPICS = {
    **{("static", f, m): f"idp-{slug(f, m)}-{SUFFIX}" for f, m in STATIC_MATRIX},
    **{("oauth", f): f"idp-oauth-{slug(f)}-{SUFFIX}" for f in FAMILIES},
    **{("reauth", f): f"idp-reauth-{slug(f)}-{SUFFIX}" for f in REAUTH_FAMILIES},
    "refused": f"idp-refused-{SUFFIX}",
    "admin": f"idp-admin-{SUFFIX}",
}


def expect(condition, message) -> None:
    """An assertion whose message pytest shows whole: a failing cell must show what the client said."""
    if not condition:
        pytest.fail(str(message))


def parallel(jobs: dict) -> dict:
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


@pytest.fixture(scope="module")
def enrolled(appliance, config_path):
    """Enrol cgroups for the whole module (the `enroll` fixture is per test; the cells here are shared)."""
    from appliance.identity import cgroups

    made: list[Cgroup] = []

    def enrol(name: str, identity: str, auth: str) -> Cgroup:
        cg = Cgroup(cgroups.ensure(f"{WORKLOAD_PARENT}/{name}-{SUFFIX}"))
        cli(config_path, "enroll", cg.cgroup.path, "--identity", identity, f"--auth={auth}")
        eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in (appliance.status() or {}).get("workloads", [])),
                   timeout=5, message=f"enrolment of {name} applied")
        made.append(cg)
        return cg

    yield enrol
    for cg in made:
        cli(config_path, "unenroll", cg.cgroup.path, check=False)
        cg.cleanup()


@pytest.fixture(scope="module")
def legacy(enrolled):
    """One cgroup per family, enrolled as the migration credentials' identity."""
    return {f: enrolled(f"legacy-{slug(f)}", "legacy", "cgroup") for f in FAMILIES}


@pytest.fixture(scope="module")
def token_workloads(enrolled):
    """One cgroup per family whose sessions are who their token says (auth=token)."""
    return {f: enrolled(f"pool-{slug(f)}", "pool", "token") for f in FAMILIES}


@pytest.fixture(scope="module")
def topics(direct, sasl_args):
    direct.run([PY, str(CLIENTS / "create_topics.py"), BROKER4, sasl_args[1], *TOPICS.values()], timeout=90)
    return TOPICS


def round_trip(fam, cg, topic: str, group: str, auth, value: str):
    produced = fam.produce(cg, BROKER4, topic, n=N, fmt=f"{value}-{{i}}", auth=auth).finish()
    consumed = fam.consume(cg, BROKER4, topic, group, n=N, timeout=40, auth=auth).finish()
    return produced, consumed


def no_auth_errors(consumed) -> None:
    """Nothing the consumer reported was about logging in or being allowed. (Other errors a client
    logs and recovers from, such as kafka-python's "Pre-rebalance offset commit failed" when it
    rejoins its group early on, are not this module's business; the values are.)"""
    about = [e for e in consumed.summary["errors"] if re.search("authenticat|authoriz|sasl", e, re.I)]
    expect(about == [], consumed)


def authentications_of(config_path, cg: Cgroup) -> list[dict]:
    """The audited SASL exchanges of the sessions that came from `cg`."""
    sessions = {s["session_id"] for s in audit(config_path, "sessions") if s.get("cgroup_id") == cg.cgroup.id}
    return [a for a in audit(config_path, "authentications") if a["session_id"] in sessions]


def audited(config_path, cg: Cgroup, matches, what: str) -> list[dict]:
    """The exchanges from `cg` that `matches` accepts, once the audit has them (it is written in batches)."""
    return eventually(lambda: [a for a in authentications_of(config_path, cg) if matches(a)],
                      timeout=10, interval=0.5, message=what)


# --- static logins: a round trip per family and mechanism --------------------------------------------

@pytest.fixture(scope="module")
def static_round_trips(legacy, topics):
    return parallel({(f, m): (lambda f=f, m=m: round_trip(FAMILIES[f], legacy[f], topics[("static", f, m)],
                                                          f"idp-g-{slug(f, m)}-{SUFFIX}", login(m), slug(f, m)))
                     for f, m in STATIC_MATRIX})


@pytest.mark.parametrize("family, mechanism", STATIC_MATRIX)
def test_a_static_login_produces_and_consumes(family, mechanism, static_round_trips, legacy, config_path):
    produced, consumed = static_round_trips[(family, mechanism)]
    expect(produced.summary["acked"] == N and produced.summary["failed"] == 0, produced)
    expect(sorted(consumed.summary["values"]) == [f"{slug(family, mechanism)}-{i}" for i in range(N)], consumed)
    no_auth_errors(consumed)
    username = login(mechanism).username
    rows = audited(config_path, legacy[family],
                   lambda a: a["mechanism"] == mechanism and a["username"] == username and a["outcome"] == "ok",
                   f"an audited {mechanism} login of {username}")
    expect(all(a["method"] == "static" and a["identity"] == "legacy" and a["kind"] == "initial" for a in rows), rows)


# --- a wrong password ----------------------------------------------------------------------------------

WRONG_MATRIX = [(f, m) for f in FAMILIES for m in WRONG_MECHANISMS]


@pytest.fixture(scope="module")
def wrong_passwords(legacy, topics):
    def attempt(f, m):
        right = login(m)
        return FAMILIES[f].produce(legacy[f], BROKER4, topics["refused"], n=3, fmt="never-{i}", timeout=10,
                                   auth=Sasl(m, right.username, right.password + "-wrong")).finish()

    return parallel({(f, m): (lambda f=f, m=m: attempt(f, m)) for f, m in WRONG_MATRIX})


def refusal_named(mechanism: str, errors: list[str]) -> bool:
    """An error that says authentication failed and names the mechanism."""
    return any(re.search("authenticat", e, re.I) and mechanism in e for e in errors)


# kafka-python 3.0.12 drops what it read when the same read also finds the connection closed
# (kafka/net/transport.py, _sock_recv: the data and the EOF come back together and the caller
# aborts without handing the data on). The proxy closes as soon as it has answered a refused
# SaslAuthenticate, so when the answer and the FIN arrive together, as they do on a loaded machine,
# kafka-python reports only "socket disconnected" and retries. Kafka's broker delays that close
# (connection.failed.authentication.delay.ms, 100 ms by default), so kafka-python sees the error there.
KAFKA_PYTHON_LOST_ANSWER = ("kafka-python lost the proxy's SaslAuthenticate error: it arrived with the "
                            "connection's close, which the proxy does not delay as Kafka's broker does")


def client_reports_refusal(family: str, mechanism: str, result) -> None:
    if refusal_named(mechanism, result.summary["errors"]):
        return
    if family == "kafka-python" and any("socket disconnected" in e or "gave up" in e
                                        for e in result.summary["errors"] + [result.stderr]):
        pytest.xfail(KAFKA_PYTHON_LOST_ANSWER)
    expect(False, f"the client did not report a refused {mechanism} login{result}")


@pytest.mark.parametrize("family, mechanism", WRONG_MATRIX)
def test_b_a_wrong_password_is_refused_naming_the_mechanism(family, mechanism, wrong_passwords, legacy,
                                                           config_path):
    result = wrong_passwords[(family, mechanism)]
    expect(result.summary["acked"] == 0, result)
    username = login(mechanism).username
    audited(config_path, legacy[family], lambda a: a["mechanism"] == mechanism and a["outcome"] == "refused",
            f"an audited refusal of {mechanism} for {username}")
    client_reports_refusal(family, mechanism, result)


# --- static credentials of an identity that may use tokens only -----------------------------------------

@pytest.fixture(scope="module")
def tokens_only(enrolled, topics):
    workloads = {f: enrolled(f"tokens-only-{slug(f)}", "tokens-only", "cgroup") for f in FAMILIES}
    auth = login("PLAIN", identity="tokens-only")
    return workloads, parallel({f: (lambda f=f: FAMILIES[f].produce(workloads[f], BROKER4, topics["refused"], n=3,
                                                                    fmt="never-{i}", timeout=10, auth=auth).finish())
                                for f in FAMILIES})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_c_static_login_of_a_tokens_only_identity_is_refused(family, tokens_only, config_path):
    workloads, results = tokens_only
    result = results[family]
    expect(result.summary["acked"] == 0, result)
    rows = audited(config_path, workloads[family], lambda a: a["outcome"] == "refused",
                   "an audited refusal of the tokens-only login")
    expect(any("not accepted for identity 'tokens-only'" in a["reason"] for a in rows), rows)
    client_reports_refusal(family, "PLAIN", result)


# --- OAUTHBEARER with a token each client fetches itself ---------------------------------------------------

# Kafka's Java login module refuses a token whose scope claim is empty ("scope value must be
# non-empty"), and the demo realm's client_credentials tokens carry `"scope": ""`; asking for the
# `openid` scope gives them one. The other families take the token as the realm issues it.
JAVA_SCOPE = "openid"


@pytest.fixture(scope="module")
def oauth(keycloak):
    def for_family(family: str, client: str = OAUTH_CLIENT) -> OAuth:
        return OAuth(keycloak.token_endpoint, client, keycloak.secret(client),
                     scope=JAVA_SCOPE if family.startswith("java") else None)

    return for_family


@pytest.fixture(scope="module")
def oauth_round_trips(token_workloads, topics, oauth):
    return parallel({f: (lambda f=f: round_trip(FAMILIES[f], token_workloads[f], topics[("oauth", f)],
                                                f"idp-g-oauth-{slug(f)}-{SUFFIX}", oauth(f), f"oauth-{slug(f)}"))
                     for f in FAMILIES})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_d_oauthbearer_with_a_self_fetched_token_produces_and_consumes(family, oauth_round_trips, token_workloads,
                                                                      keycloak, config_path):
    produced, consumed = oauth_round_trips[family]
    expect(produced.summary["acked"] == N and produced.summary["failed"] == 0, produced)
    expect(sorted(consumed.summary["values"]) == [f"oauth-{slug(family)}-{i}" for i in range(N)], consumed)
    no_auth_errors(consumed)
    sub = service_account_id(keycloak.realm.name, OAUTH_CLIENT)
    rows = audited(config_path, token_workloads[family],
                   lambda a: a["mechanism"] == "OAUTHBEARER" and a["outcome"] == "ok", "an audited token login")
    for a in rows:
        expect(a["method"] == "token" and a["identity"] == OAUTH_CLIENT and a["subject"] == sub
               and a["client_id"] == OAUTH_CLIENT and a["issuer"] == keycloak.issuer and a["jti"]
               and a["expires_at"] and a["expires_at"] > a["at"], a)


# --- the Java admin client ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admins(legacy, token_workloads, topics, oauth):
    def run(cg, auth, tag):
        return java_admin(cg, BROKER4, timeout=8, auth=auth, allowed=topics["admin"], denied=f"other-{SUFFIX}",
                          new_topic=f"idp-admin-new-{tag}-{SUFFIX}", new_denied=f"other-new-{tag}-{SUFFIX}",
                          group=f"idp-g-admin-{SUFFIX}", denied_group=f"other-{SUFFIX}").finish()

    return parallel({"SCRAM-SHA-512": lambda: run(legacy["java-classic"], login("SCRAM-SHA-512"), "scram"),
                     "OAUTHBEARER": lambda: run(token_workloads["java-classic"], oauth("java-classic"), "oauth")})


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "OAUTHBEARER"])
def test_e_java_admin_authenticates_and_is_held_to_the_policy(mechanism, admins):
    result = admins[mechanism]
    expect("calls" in result.summary, result)
    calls = result.summary["calls"]
    for name in ("createTopics", "describeTopics", "listTopics", "describeCluster"):
        expect(calls.get(name, {}).get("ok"), f"{name}: {calls.get(name)}{result}")
    expect(calls["createTopics.denied"]["error"].endswith("TopicAuthorizationException"), result)


# --- re-authentication before the session lifetime runs out (KIP-368) --------------------------------------

@pytest.fixture(scope="module")
def reauthentications(enrolled, topics, oauth):
    """Each consumer is tailing before anything is produced; half the records come before its token
    expires, half after, so the second half reaches it only over re-authenticated connections."""
    workloads = {f: enrolled(f"reauth-{slug(f)}", "pool", "token") for f in REAUTH_FAMILIES}
    auth = {f: oauth(f, REAUTH_CLIENT) for f in REAUTH_FAMILIES}
    consumers = {f: FAMILIES[f].consume(workloads[f], BROKER4, topics[("reauth", f)],
                                        f"idp-g-reauth-{slug(f)}-{SUFFIX}", n=2 * N,
                                        timeout=SHORT_TOKEN_LIFESPAN_S * 2 + 30, auth=auth[f])
                 for f in REAUTH_FAMILIES}
    ready = {f: c.wait_ready(40) for f, c in consumers.items()}

    def produce(fmt: str) -> dict:
        return parallel({f: (lambda f=f: FAMILIES[f].produce(workloads[f], BROKER4, topics[("reauth", f)], n=N,
                                                             fmt=fmt, auth=auth[f]).finish())
                         for f in REAUTH_FAMILIES})

    before = produce("before-{i}")
    time.sleep(SHORT_TOKEN_LIFESPAN_S + 5)
    after = produce("after-{i}")
    return workloads, {f: (ready[f], before[f], after[f], consumers[f].finish()) for f in REAUTH_FAMILIES}


@pytest.mark.parametrize("family", REAUTH_FAMILIES)
def test_f_a_consumer_re_authenticates_before_its_session_expires(family, reauthentications, config_path):
    workloads, results = reauthentications
    ready, before, after, consumed = results[family]
    expect(ready, f"the consumer never became ready{consumed}")
    expect(before.summary["acked"] == N and after.summary["acked"] == N, f"{before}{after}")
    expect(sorted(consumed.summary["values"]) == sorted([f"before-{i}" for i in range(N)] +
                                                         [f"after-{i}" for i in range(N)]), consumed)
    no_auth_errors(consumed)
    rows = audited(config_path, workloads[family], lambda a: a["kind"] == "reauth", "an audited re-authentication")
    expect(all(a["outcome"] == "ok" and a["client_id"] == REAUTH_CLIENT for a in rows), rows)


# --- the harness's own translation of credentials (no broker needed) -----------------------------------------

def test_g_each_family_is_configured_with_its_own_settings():
    from tests.integration.clients.families import java_client_config, java_system_properties, librdkafka_config

    scram = Sasl("SCRAM-SHA-512", "u", 'p"w\\')
    assert librdkafka_config(scram) == {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
                                        "sasl.username": "u", "sasl.password": 'p"w\\'}
    # JAAS values are quoted strings read by a StreamTokenizer: quotes and backslashes are escaped.
    assert java_client_config(scram)["sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="u" password="p\\"w\\\\";')
    token = OAuth("http://idp.example/token", "orders", "s3cret", scope="openid")
    java = java_client_config(token)
    assert java["sasl.login.callback.handler.class"].endswith("OAuthBearerLoginCallbackHandler")
    assert java["sasl.oauthbearer.token.endpoint.url"] == "http://idp.example/token"
    assert java["sasl.oauthbearer.scope"] == "openid"
    assert java_system_properties(token) == {"org.apache.kafka.sasl.oauthbearer.allowed.urls":
                                             "http://idp.example/token"}
    assert librdkafka_config(token)["sasl.oauthbearer.method"] == "oidc"
    with pytest.raises(ValueError, match="OAUTHBEARER is OAuth"):
        Sasl("OAUTHBEARER", "u", "p")


def test_g_a_failing_command_is_printed_without_its_secrets():
    from tests.integration.clients.families import _redacted

    argv = FAMILIES["confluent-kafka"].produce_argv(BROKER4, "t", 1, "{i}", 5, Sasl("PLAIN", "u", "hunter2"))
    assert "hunter2" in argv and "hunter2" not in " ".join(_redacted(argv, ("hunter2",)))
    assert repr(Sasl("PLAIN", "u", "hunter2")).count("hunter2") == 0


def test_g_the_python_token_source_fetches_once_and_again_near_expiry():
    """pyfamily.ClientCredentials against a local token endpoint: one request per token life."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tests.integration.clients.pyfamily import ClientCredentials, TokenError

    seen: list[tuple[str, str]] = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen.append((self.headers["Authorization"], body))
            ok = self.headers["Authorization"] == "Basic b3JkZXJzOnMlM0FjcmV0"  # orders:s%3Acret
            answer = ({"access_token": f"jwt-{len(seen)}", "expires_in": 1} if ok else
                      {"error": "unauthorized_client", "error_description": "Invalid client secret"})
            data = json.dumps(answer).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/token"
    try:
        source = ClientCredentials(url, "orders", "s:cret", scope="openid")
        assert source.token() == "jwt-1" and source.token() == "jwt-1"
        time.sleep(0.9)  # past 80% of the token's one second
        assert source.token() == "jwt-2"
        assert len(seen) == 2 and seen[0][1] == "grant_type=client_credentials&scope=openid"
        with pytest.raises(TokenError, match=r"refused \(HTTP 401\): unauthorized_client Invalid client secret"):
            ClientCredentials(url, "orders", "wrong").token()
    finally:
        server.shutdown()
