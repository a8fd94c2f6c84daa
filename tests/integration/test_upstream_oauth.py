"""The appliance's own OAUTHBEARER authentication, against a real Kafka validating real Keycloak tokens.

A broker of this module's own (not the shared session broker): the embedded
broker with its OAUTHBEARER listener, validated by Kafka's
OAuthBearerValidatorCallbackHandler against the session's Keycloak JWKS, on
ports 49092 (SCRAM), 49094-49095 (controller, inter-broker) and 49096
(OAUTHBEARER), data under /var/lib/appliance-test/upstream-oauth-broker and
cgroup appliance-test-oauth-broker. The appliance's token source fetches the
`appliance-upstream` client's token from Keycloak and its UpstreamAuthenticator
presents it, over a plain socket, exactly as the proxy's shell would; then a
Metadata request that creates a topic proves the principal is a super user.

Nothing here skips: no Java, jars or Keycloak fails the run.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import struct
import threading
import time
import urllib.request
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.metadata.v12.response import MetadataResponse
from kio.serial import entity_reader, entity_writer

from appliance.broker.credentials import OAuthBearerCredentials
from appliance.broker.embedded import EmbeddedBroker
from appliance.broker.errors import BrokerError
from appliance.broker.oauth_token import BearerToken, TokenUnavailable
from appliance.broker.token_source import TokenSource
from appliance.config import EmbeddedBrokerConfig, EmbeddedOAuthConfig
from appliance.identity import cgroups
from appliance.kafka.framing import frame
from appliance.proxy.upstream_auth import UpstreamAuthenticator, UpstreamAuthError
from tests.json_http import JsonHandler

DATA = Path("/var/lib/appliance-test/upstream-oauth-broker")
CGROUP = "appliance-test-oauth-broker"
OAUTH_PORT = 49096
JWKS_RELAY_PORT = 49180  # a JWKS copy this module serves, switched on and off
TIMINGS: dict[str, float] = {}
TIMINGS_TEXT: dict[str, str] = {}  # measured facts, printed with -s


def _config(keycloak, **oauth) -> EmbeddedBrokerConfig:
    # The demo realm's service-account tokens carry `"scope": ""`, which Kafka refuses as a scope;
    # scope_claim names a claim they lack, so Kafka reads no scopes (its authorizer uses none).
    settings = {"issuer": keycloak.issuer, "jwks_url": keycloak.jwks_uri, "audience": keycloak.realm.audience,
                "port": OAUTH_PORT, "clock_skew_s": 1, "scope_claim": "kafka_scope", **oauth}
    return EmbeddedBrokerConfig(port4=49092, host6="", controller_port=49094, data_dir=DATA, cgroup=CGROUP,
                                heap="384m", oauth=EmbeddedOAuthConfig(**settings))


@pytest.fixture(scope="module")
def oauth_broker(keycloak, request):
    shutil.rmtree(DATA, ignore_errors=True)  # formatted afresh: a leftover may hold another realm's principal
    broker = EmbeddedBroker(_config(keycloak))
    broker.stop()  # a broker left by an interrupted run
    started = time.monotonic()
    broker.start()
    TIMINGS["broker cold start with the OAUTHBEARER listener"] = time.monotonic() - started
    yield broker
    broker.stop()
    try:
        cgroups.remove(cgroups.resolve(CGROUP))
    except cgroups.CgroupError:
        pass
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for what, seconds in TIMINGS.items():
            reporter.write_line(f"upstream oauth: {what}: {seconds:.2f} s")


def _recv_frame(sock: socket.socket) -> bytes:
    head = _recv_exactly(sock, 4)
    (size,) = struct.unpack(">i", head)
    assert 0 <= size < 1 << 20, f"broker frame of {size} bytes"
    return head + _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"broker closed the connection after {len(data)} of {n} bytes")
        data += chunk
    return data


def authenticate(address, secret) -> tuple[socket.socket, UpstreamAuthenticator]:
    """The proxy's upstream exchange over a blocking socket: the authenticator's frames out, the broker's in."""
    sock = socket.create_connection((address.host, address.port), timeout=10)
    auth = UpstreamAuthenticator(secret)
    try:
        sock.sendall(auth.start())
        while True:
            following = auth.receive(_recv_frame(sock))
            if following is None:
                return sock, auth
            sock.sendall(following)
    except BaseException:
        sock.close()
        raise


def metadata(sock: socket.socket, topic: str) -> MetadataResponse:
    """Metadata v12 for one topic, creating it if it does not exist (CREATE: the super user may)."""
    body = io.BytesIO()
    body.write(struct.pack(">hhih", MetadataRequest.__api_key__, 12, 99, 4) + b"test" + b"\0")
    entity_writer(MetadataRequest)(body, MetadataRequest(
        topics=(MetadataRequestTopic(topic_id=None, name=topic),), allow_auto_topic_creation=True,
        include_topic_authorized_operations=False))
    sock.sendall(frame(body.getvalue()))
    response = _recv_frame(sock)
    assert struct.unpack(">i", response[4:8])[0] == 99
    return entity_reader(MetadataResponse)(response, 9)[0]  # size, correlation id, empty tagged fields


def token_source_token(keycloak) -> tuple[BearerToken, TokenSource, float]:
    """The appliance-upstream client's token, as the appliance's token source fetches it from Keycloak."""
    credentials = OAuthBearerCredentials(keycloak.token_endpoint, "appliance-upstream",
                                         keycloak.secret("appliance-upstream"))

    async def first() -> tuple[BearerToken, TokenSource, float]:
        source = TokenSource(credentials)
        started = time.monotonic()
        source.start()
        token = await source.first_token(10)
        took = time.monotonic() - started
        await source.stop()
        return token, source, took

    token, source, took = asyncio.run(first())
    assert isinstance(token, BearerToken), token
    return token, source, took


def test_the_appliance_authenticates_with_its_keycloak_token_and_acts_as_a_super_user(oauth_broker, keycloak):
    token, source, took = token_source_token(keycloak)
    TIMINGS["first token from Keycloak (client_credentials)"] = took
    assert token.expires_at - token.obtained_at == pytest.approx(keycloak.realm.lifespan_of("appliance-upstream"), abs=2)
    assert source.schedule.wait_s(token.obtained_at) == pytest.approx(0.8 * (token.expires_at - token.obtained_at))
    started = time.monotonic()
    sock, auth = authenticate(oauth_broker.oauth_address, token)
    TIMINGS["OAUTHBEARER exchange with the broker"] = time.monotonic() - started
    with sock:
        assert auth.done
        # Measured: without connections.max.reauth.ms, Kafka still bounds the connection by the token's
        # remaining lifetime (KIP-368's session lifetime), so the appliance learns when it will end.
        assert token.expires_at - time.time() - 5 < auth.session_lifetime_s <= token.expires_at - token.obtained_at
        topic = f"upstream-oauth-{int(time.time() * 1000)}"
        response = metadata(sock, topic)
        assert [b.port for b in response.brokers] == [OAUTH_PORT]
        deadline = time.monotonic() + 15
        while True:  # the first answers say unknown while the broker creates the topic this request asked for
            (described,) = response.topics
            assert described.name == topic
            errors = described.error_code.name.lower()
            assert errors in ("none", "unknown_topic_or_partition", "leader_not_available"), described.error_code
            if errors == "none" and described.partitions:
                break
            assert time.monotonic() < deadline, f"topic {topic} not created: {described.error_code}"
            time.sleep(0.2)
            response = metadata(sock, topic)


def test_another_client_s_valid_token_authenticates_but_has_no_rights(oauth_broker, keycloak):
    """The super user is the appliance's principal (azp appliance-upstream), not whoever holds a token."""
    orders = keycloak.token("orders")
    sock, auth = authenticate(oauth_broker.oauth_address, BearerToken(orders, time.time(), time.time() + 60))
    with sock:
        (described,) = metadata(sock, f"orders-only-{int(time.time() * 1000)}").topics
        assert described.error_code.name.lower() == "topic_authorization_failed"


def test_a_garbage_token_is_refused_through_the_error_challenge(oauth_broker):
    with pytest.raises(UpstreamAuthError) as e:
        authenticate(oauth_broker.oauth_address, BearerToken("not.a.jwt", time.time(), time.time() + 60))
    text = str(e.value)
    assert "broker refused the appliance's OAUTHBEARER token: SASL_AUTHENTICATION_FAILED" in text
    assert "its error challenge: status invalid_token" in text, text


def test_a_token_signed_by_another_key_is_refused(oauth_broker, keycloak):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    genuine = jwt.decode(keycloak.token("appliance-upstream"), options={"verify_signature": False})
    header = jwt.get_unverified_header(keycloak.token("appliance-upstream"))
    forged = jwt.encode(genuine, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        algorithm="RS256", headers={"kid": header["kid"]})
    with pytest.raises(UpstreamAuthError, match="status invalid_token"):
        authenticate(oauth_broker.oauth_address, BearerToken(forged, time.time(), time.time() + 60))


def test_an_expired_token_is_refused(oauth_broker, keycloak):
    """Keycloak's `short-lived` client: 30 s tokens; the broker allows 1 s of clock skew here."""
    issued = time.time()
    short = keycloak.token("short-lived")
    claims = __import__("jwt").decode(short, options={"verify_signature": False})
    lifetime = claims["exp"] - claims["iat"]
    sock, auth = authenticate(oauth_broker.oauth_address, BearerToken(short, issued, issued + lifetime))
    assert auth.session_lifetime_s <= lifetime  # valid while fresh: the refusal below is the expiry's
    with sock:
        time.sleep(max(0.0, claims["exp"] + 2.5 - time.time()))
        with pytest.raises(UpstreamAuthError, match="status invalid_token"):
            authenticate(oauth_broker.oauth_address, BearerToken(short, issued, issued + lifetime))
        # The connection authenticated with it while it was valid: the broker ends it at the next request
        # (KIP-368 session expiry), with no connections.max.reauth.ms configured.
        with pytest.raises(ConnectionError):
            metadata(sock, "after-expiry")


def test_a_token_for_another_audience_is_refused(oauth_broker, keycloak):
    """The same broker, restarted expecting another audience, refuses the appliance's genuine token."""
    token, _, _ = token_source_token(keycloak)
    other = EmbeddedBroker(_config(keycloak, audience="not-kafka-appliance"))
    oauth_broker.stop()
    try:
        other.start()
        with pytest.raises(UpstreamAuthError, match="status invalid_token"):
            authenticate(other.oauth_address, token)
    finally:
        other.stop()
        oauth_broker.start()
    sock, auth = authenticate(oauth_broker.oauth_address, token)  # and the configured audience takes it again
    sock.close()
    assert auth.done


class _JwksCopy(JsonHandler):
    def do_GET(self):
        body = self.server.jwks
        self.server.hits += 1
        self.send_json(body)


def test_the_broker_needs_the_jwks_at_start_and_keeps_its_keys_when_the_provider_goes_away(oauth_broker, keycloak):
    """What Kafka's JWKS resolver does when the provider is down (docs/configuration.md): measured, not assumed."""
    token, _, _ = token_source_token(keycloak)
    relay_url = f"http://127.0.0.1:{JWKS_RELAY_PORT}/certs"
    late = EmbeddedBroker(_config(keycloak, jwks_url=relay_url))
    oauth_broker.stop()
    server = None
    try:
        started = time.monotonic()
        with pytest.raises(BrokerError) as down:
            late.start(timeout=60)  # nothing listens on the JWKS URL
        TIMINGS["broker start with the JWKS unreachable, until it exits"] = time.monotonic() - started
        assert f"its OAUTHBEARER listener could not load the JWKS at {relay_url}" in str(down.value)
        assert "Connection refused" in str(down.value).splitlines()[0]
        server = ThreadingHTTPServer(("127.0.0.1", JWKS_RELAY_PORT), _JwksCopy)
        server.jwks, server.hits = urllib.request.urlopen(keycloak.jwks_uri, timeout=5).read(), 0
        threading.Thread(target=server.serve_forever, daemon=True).start()
        late.start()
        assert server.hits >= 1
        sock, auth = authenticate(late.oauth_address, token)
        sock.close()
        assert auth.done
        server.shutdown()
        server.server_close()
        server = None
        # The provider gone after start: the keys fetched at start still verify its tokens.
        sock, auth = authenticate(late.oauth_address, token)
        sock.close()
        assert auth.done
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        late.stop()
        oauth_broker.start()


def test_keycloak_s_scope_claim_with_and_without_the_openid_scope(keycloak):
    """A measurement for the docs: what `scope` the demo realm writes into the appliance's token."""
    import jwt

    from appliance.broker.token_source import TokenEndpointClient

    for scope in (None, "openid"):
        credentials = OAuthBearerCredentials(keycloak.token_endpoint, "appliance-upstream",
                                             keycloak.secret("appliance-upstream"), scope)
        claims = jwt.decode(TokenEndpointClient(credentials).fetch().value, options={"verify_signature": False})
        TIMINGS_TEXT[f"scope claim when asking for scope {scope}"] = repr(claims.get("scope"))
    print(json.dumps(TIMINGS_TEXT, indent=1))



def test_appliance_serve_with_oauthbearer_upstream_credentials_carries_a_real_producer(
        oauth_broker, keycloak, appliance, make_cgroup):
    """The whole appliance: its upstream credentials are the Keycloak client, steering points at the
    OAUTHBEARER listener, and kcat in an enrolled cgroup produces and consumes through it."""
    from tests.adversarial.reconfigured import enroll_in, reconfigured
    from tests.integration.conftest import STATE, audit, eventually

    oauth_broker.start()  # idempotent: running already unless a test above left it down
    credentials = STATE / "upstream-oauth-credentials.json"
    credentials.write_text(json.dumps({"mechanism": "OAUTHBEARER", "token_endpoint": keycloak.token_endpoint,
                                       "client_id": "appliance-upstream",
                                       "client_secret": keycloak.secret("appliance-upstream")}))
    credentials.chmod(0o600)
    address = str(oauth_broker.oauth_address)
    settings = yaml_settings(appliance)
    with reconfigured(appliance, "upstream-oauth", brokers=[address], upstream_credentials=str(credentials),
                      exempt_cgroups=[*settings["exempt_cgroups"], CGROUP]) as app:
        status = eventually(lambda: (app.status() or {}).get("upstream_auth"), message="upstream auth status")
        assert status["mechanism"] == "OAUTHBEARER" and status["token_valid"], status
        assert keycloak.secret("appliance-upstream") not in json.dumps(app.status())
        from tests.integration.fixtures import cli
        shown = cli(app.config_path, "status").stdout
        assert "upstream auth: OAUTHBEARER as client 'appliance-upstream', token valid until " in shown, shown
        assert keycloak.secret("appliance-upstream") not in shown
        workload = enroll_in(app, make_cgroup, "kcat-job")
        topic = f"oauth-upstream-{int(time.time() * 1000)}"
        workload.run(["kcat", "-b", address, "-t", topic, "-P"], input="one\ntwo\nthree\n")
        out = workload.run(["kcat", "-b", address, "-t", topic, "-C", "-o", "beginning", "-c", "3", "-e", "-q"],
                           timeout=60).stdout
        assert out.split() == ["one", "two", "three"]

        def produced():
            ops = [o for o in audit(app.config_path, "operations", "--identity", "kcat-job", "--topic", topic)
                   if o["api_name"] == "Produce"]
            return ops if sum(o["records"] for o in ops) >= 3 else None

        ops = eventually(produced, message="3 produced records audited for kcat-job")
        assert all(o["error_code"] == 0 for o in ops), ops
        # This workload's sessions only: earlier tests' kcat-job sessions share the audit.
        sessions = [s for s in audit(app.config_path, "sessions", "--identity", "kcat-job")
                    if s["cgroup_path"] == workload.cgroup.path]
        assert sessions and {s["broker_address"] for s in sessions} == {address}, sessions


REAUTH_UPSTREAM_CLIENT = "short-lived"  # the realm's client with 30 s tokens
TOKEN_LIFETIME_S = 30


def test_a_librdkafka_client_s_connections_outlive_the_appliance_s_short_upstream_tokens(
        oauth_broker, keycloak, appliance, make_cgroup):
    """KIP-368 upstream: the appliance's broker sessions last one 30 s token each; it re-authenticates them
    between the workload's requests, so a producer and consumer working for over two token lifetimes keep
    every connection they opened, and every record goes through.

    The broker is this module's, restarted with the short-lived client as the appliance's super user (its
    OAUTHBEARER principal), and the appliance's upstream credentials name that client."""
    from tests.adversarial.reconfigured import enroll_in, reconfigured
    from tests.integration.conftest import STATE, audit, eventually

    assert keycloak.realm.lifespan_of(REAUTH_UPSTREAM_CLIENT) == TOKEN_LIFETIME_S
    short = EmbeddedBroker(_config(keycloak, principal=REAUTH_UPSTREAM_CLIENT))
    oauth_broker.stop()
    credentials = STATE / "upstream-oauth-short-credentials.json"
    credentials.write_text(json.dumps({"mechanism": "OAUTHBEARER", "token_endpoint": keycloak.token_endpoint,
                                       "client_id": REAUTH_UPSTREAM_CLIENT,
                                       "client_secret": keycloak.secret(REAUTH_UPSTREAM_CLIENT)}))
    credentials.chmod(0o600)
    address = str(short.oauth_address)
    settings = yaml_settings(appliance)
    try:
        short.start()
        with reconfigured(appliance, "upstream-reauth", brokers=[address], upstream_credentials=str(credentials),
                          exempt_cgroups=[*settings["exempt_cgroups"], CGROUP]) as app:
            status = eventually(lambda: (app.status() or {}).get("upstream_auth"), message="upstream auth status")
            assert status["token_valid"] and status["client_id"] == REAUTH_UPSTREAM_CLIENT, status
            workload = enroll_in(app, make_cgroup, "steady")
            topic, group = f"upstream-reauth-{int(time.time() * 1000)}", f"upstream-reauth-g-{int(time.time())}"
            created = workload.client("confluent.py", address, topic, "--create")
            assert not created["errors"], created
            started = time.time()
            seconds = 2 * TOKEN_LIFETIME_S + 12
            summary = workload.client("confluent_steady.py", address, topic, group, "--seconds", str(seconds),
                                      timeout=seconds + 90)
            ended = time.time()
            TIMINGS["steady librdkafka run across upstream re-authentications"] = ended - started

            # Every record acknowledged and read back; no error of any kind, no connection lost.
            assert summary["sent"] >= 2 * seconds - 2, summary
            assert summary["produced"] == summary["sent"] == summary["consumed"], summary
            assert summary["errors"] == [] and summary["client_errors"] == [], summary
            # librdkafka's own count: no connection of either client was lost (its coordinator connection
            # may count a second connect attempt when the coordinator is found; a loss would be a disconnect).
            connections = summary["connections"]
            assert connections and all(c["disconnects"] == 0 for c in connections.values()), connections
            for role in ("producer", "consumer"):
                assert any(name.startswith(role) and c["connects"] == 1 and c["state"] == "UP"
                           for name, c in connections.items()), (role, connections)

            # The appliance's side: every connection the client opened was opened before the first renewal
            # was due and none afterwards (nothing was cut and re-opened), the long-lived ones renewed their
            # broker session at least twice, and each ended only when the client closed it.
            def steady_sessions():
                rows = [s for s in audit(app.config_path, "sessions", "--identity", "steady")
                        if s["cgroup_path"] == workload.cgroup.path and s["started_at"] >= started - 1]
                return rows if rows and all(s["ended_at"] for s in rows) else None

            sessions = eventually(steady_sessions, timeout=15, message="the steady client's sessions closed")
            renewals = [e for e in audit(app.config_path, "events", "--kind", "upstream-reauth",
                                         "--identity", "steady") if e["at"] >= started]
            per_session = {s["session_id"]: 0 for s in sessions}
            for e in renewals:
                if e["session_id"] in per_session:
                    per_session[e["session_id"]] += 1
            facts = [(round(s["started_at"] - started, 1), round(s["ended_at"] - s["started_at"], 1),
                      per_session[s["session_id"]], s["close_reason"]) for s in sessions]
            TIMINGS_TEXT["steady client's sessions (start, length, renewals, close)"] = json.dumps(facts)
            print(json.dumps(TIMINGS_TEXT, indent=1))
            assert all(s["close_reason"].startswith("client closed the connection") for s in sessions), facts
            assert all(s["started_at"] < started + TOKEN_LIFETIME_S - 5 for s in sessions), facts
            whole_run = [s for s in sessions if s["ended_at"] - s["started_at"] >= 2 * TOKEN_LIFETIME_S]
            assert len(whole_run) >= 2, facts  # the producer's and the consumer's broker connections at least
            assert all(per_session[s["session_id"]] >= 2 for s in whole_run), facts
            detail = json.loads(renewals[0]["detail"])
            assert detail["mechanism"] == "OAUTHBEARER" and 0 < detail["session_lifetime_s"] <= TOKEN_LIFETIME_S
            log = app.log.read_text()
            assert "re-authenticated its broker connection (OAUTHBEARER" in log
            assert "upstream re-authentication failed" not in log
    finally:
        short.stop()
        oauth_broker.start()


def yaml_settings(appliance) -> dict:
    import yaml

    return yaml.safe_load(appliance.config_path.read_text())


def test_over_https_with_a_ca_file_the_appliance_verifies_workload_tokens_and_gets_its_own_and_a_wrong_ca_fails_closed(
        oauth_broker, keycloak, appliance, make_cgroup):
    """Both of the appliance's conversations with the provider over https, verified against the session's test CA
    (tests/integration/idp_fixtures.py): the JWKS that a workload's token is checked with, and its own upstream
    token. Then a CA that did not issue Keycloak's certificate: for the provider, the whole appliance refuses the
    workload naming the TLS failure and the broker sees no request; for the upstream token, the token source
    (the same code `serve` runs) gets no token and says why."""
    from tests.adversarial.reconfigured import reconfigured
    from tests.integration.conftest import STATE, audit, cli, eventually

    oauth_broker.start()  # idempotent: running already unless a test above left it down
    address = str(oauth_broker.oauth_address)
    settings = yaml_settings(appliance)
    https = keycloak.https

    def configured(name: str, provider_ca: Path, upstream_ca: Path):
        credentials = STATE / f"upstream-oauth-credentials-{name}.json"
        credentials.write_text(json.dumps({"mechanism": "OAUTHBEARER", "token_endpoint": https.token,
                                           "client_id": "appliance-upstream", "ca_file": str(upstream_ca),
                                           "client_secret": keycloak.secret("appliance-upstream")}))
        credentials.chmod(0o600)
        provider = {"issuer": keycloak.issuer, "audiences": [keycloak.realm.audience], "identity_claim": "azp",
                    "jwks_uri": https.jwks, "ca_file": str(provider_ca)}
        return reconfigured(appliance, name, brokers=[address], upstream_credentials=str(credentials),
                            exempt_cgroups=[*settings["exempt_cgroups"], CGROUP],
                            identity={**settings["identity"], "providers": [provider]})

    def token_workload(app, name: str):
        cg = make_cgroup(name)
        cli(app.config_path, "enroll", cg.cgroup.path, "--identity", name, "--auth=token")
        eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in (app.status() or {}).get("workloads", [])),
                   timeout=5, message=f"enrolment of {name} applied")
        return cg

    def sessions_of(app, cg):
        return [s for s in audit(app.config_path, "sessions") if s["cgroup_path"] == cg.cgroup.path]

    def authentications(app, sessions):
        ids = {s["session_id"] for s in sessions}
        return [a for a in audit(app.config_path, "authentications") if a["session_id"] in ids]

    oauth = ["--oauth", f"ledger:{keycloak.secret('ledger')}@{keycloak.token_endpoint}"]
    topic = f"idp-https-{int(time.time() * 1000)}"
    started = time.monotonic()
    with configured("https-idp", keycloak.ca_file, keycloak.ca_file) as app:
        status = eventually(lambda: (app.status() or {}).get("upstream_auth"), message="upstream auth status")
        assert status["token_endpoint"] == https.token and status["token_valid"], status
        workload = token_workload(app, "https-pool")
        out = workload.client("confluent.py", address, topic, "--create", "--produce", "2", "--timeout", "20", *oauth,
                              timeout=60)
        assert out["produced"] == 2 and out["errors"] == [] and out["client_errors"] == [], out
        sessions = eventually(lambda: [s for s in sessions_of(app, workload) if s["auth_method"] == "token"],
                              message="token sessions audited")
        auths = authentications(app, sessions)
        assert auths and all(a["outcome"] == "ok" and a["issuer"] == keycloak.issuer for a in auths), auths
        assert {s["identity"] for s in sessions} == {"ledger"} and {s["broker_address"] for s in sessions} == {address}
    TIMINGS["https, right CA: appliance up, a token workload produces through it, appliance back"] = \
        time.monotonic() - started

    tls_failure = ("TLS failure: the server's certificate was not accepted (unable to get local issuer "
                   f"certificate); trusting only the CAs in {keycloak.wrong_ca_file}")
    started = time.monotonic()
    with configured("https-idp-wrong-ca", keycloak.wrong_ca_file, keycloak.ca_file) as app:
        workload = token_workload(app, "https-wrong-ca")
        out = workload.client("confluent.py", address, topic, "--produce", "1", "--timeout", "8", *oauth, timeout=60)
        assert out["produced"] == 0, out
        assert any(f"JWKS at {https.jwks}: {tls_failure}" in e for e in out["client_errors"]), out  # told why
        sessions = eventually(lambda: sessions_of(app, workload), message="refused sessions audited")
        refused = eventually(lambda: [a for a in authentications(app, sessions) if a["outcome"] == "refused"],
                             message="refused authentication audited")
        assert all(f"JWKS at {https.jwks}: {tls_failure}" in a["reason"] for a in refused), refused
        assert not [a for a in authentications(app, sessions) if a["outcome"] == "ok"]
        ids = {s["session_id"] for s in sessions}
        assert not [o for o in audit(app.config_path, "operations", "--topic", topic) if o["session_id"] in ids]
    TIMINGS["https, wrong CA for the JWKS: appliance up, a refused token workload, appliance back"] = \
        time.monotonic() - started

    wrong = OAuthBearerCredentials(https.token, "appliance-upstream", keycloak.secret("appliance-upstream"),
                                   ca_file=keycloak.wrong_ca_file)

    async def first() -> object:
        source = TokenSource(wrong)
        source.start()
        try:
            return await source.first_token(10)
        finally:
            await source.stop()

    got = asyncio.run(first())
    assert got == TokenUnavailable(f"token endpoint {https.token}: {tls_failure}"), got
