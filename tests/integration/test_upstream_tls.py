"""Upstream TLS for real: workloads speak plaintext to the proxy, the proxy speaks SASL_SSL to the broker.

A broker and an appliance of this module's own (not the session's): the embedded broker with its TLS
listeners on 26097 (SASL_SSL), [::1]:26098 (SASL_SSL), 26099 (SASL_SSL demanding a client certificate),
26102 (SSL: the client certificate is the principal, no SASL), 26100 (SASL_SSL with an expired
certificate) and 26103 (SASL_SSL with a certificate for its DNS names only, given to the appliance as
`localhost:26103`), its plaintext listener on 26092 for the test's own
topic set-up, data under /var/lib/appliance-test/upstream-tls-broker and cgroup
appliance-test-tls-broker. The appliance (`appliance serve` on 26190, its own state, bpffs and cgroups)
is restarted with four configurations:

- A: the broker's CA; 127.0.0.1:26097 checked against its IP SAN, [::1]:26098 against the DNS name
  `localhost`; the expired listener; the client-certificate listener without a client certificate; and
  127.0.0.1:26101, a plain TCP listener of this module's that records what the proxy sends it.
- B: as A, with a client certificate, and [::1]:26098 named `kafka.wrong.example`.
- C: another CA.
- D: no SASL at all (`upstream_credentials: null`), the client certificate, for the SSL listener.

Real clients (confluent-kafka and kcat) in enrolled cgroups produce and consume; every failure must be
an audited session close naming the broker and the fault, logged once, with nothing sent in plaintext.
Every client family (tests/integration/clients/families.py: consumers tailing their topic, the Java
consumers and franz-go in incremental fetch sessions) and the Java admin client make their round trip
through the SASL_SSL listener under configuration A, each in a cgroup of its own, checked against the audit.
Nothing here skips: no root, Java, jars or kcat fails the run.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AdminClient, NewTopic

from appliance.broker.certificates import Authority
from appliance.broker.embedded import EmbeddedBroker
from appliance.config import EmbeddedBrokerConfig, EmbeddedTlsConfig, load_config
from appliance.identity import cgroups
from tests.integration.clients.families import (ADMIN_REQUESTS, FAMILIES, admin_failure, java_admin, run_parallel,
                                                tail_round_trip)
from tests.integration.conftest import (CLIENTS, PY, ApplianceProcess, audit, cli, enrol_cgroup, eventually,
                                        traffic_until)

DATA = Path("/var/lib/appliance-test/upstream-tls-broker")
STATE = Path("/var/lib/appliance-test-tls")
BROKER_CGROUP = "appliance-test-tls-broker"
PLAIN = "127.0.0.1:26092"
TLS4, TLS6, MTLS, EXPIRED, CATCHER, CERT = ("127.0.0.1:26097", "[::1]:26098", "127.0.0.1:26099", "127.0.0.1:26100",
                                            "127.0.0.1:26101", "127.0.0.1:26102")
# The listener whose certificate carries only DNS names (as a real cluster's brokers have), given to the appliance
# by name; workloads reach it at the address the name resolves to, which is also what Metadata advertises.
NAMED_BY_NAME, NAMED = "localhost:26103", "127.0.0.1:26103"
IDENTITY = "tls-app"
POLICY = """\
version: 1
rules:
  - name: tls-everything
    identities: [tls-app]
    operations: [produce, consume, describe, create, group]
    topics: ["*"]
    consumer_groups: ["*"]
"""


class _Appliance(ApplianceProcess):
    @property
    def log(self) -> Path:
        return STATE / "serve.log"


class FirstBytes:
    """A plain TCP listener standing in for a broker: records the first bytes of every connection that sends
    any (the appliance's TCP health probe sends none), then closes it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(3)
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if data:
                self.received.append(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def tls_broker(prerequisites):
    config = EmbeddedBrokerConfig(port4=26092, port6=26093, controller_port=26094, data_dir=DATA,
                                  cgroup=BROKER_CGROUP, heap="384m",
                                  tls=EmbeddedTlsConfig(port=26097, port6=26098, mtls_port=26099, cert_port=26102,
                                                        expired_port=26100, named_port=26103))
    broker = EmbeddedBroker(config)
    broker.stop()  # a broker left by an interrupted run
    broker.start()
    yield broker
    broker.stop()
    try:
        cgroups.remove(cgroups.resolve(BROKER_CGROUP))
    except cgroups.CgroupError:
        pass


@pytest.fixture(scope="module")
def catcher(prerequisites):
    listener = FirstBytes(26101)
    yield listener
    listener.close()


class Appliances:
    """The module's one `appliance serve`, restarted when a test wants another configuration."""

    def __init__(self, broker: EmbeddedBroker, other_ca: Path) -> None:
        self.broker = broker
        self.other_ca = other_ca
        self.running: tuple[str, _Appliance] | None = None
        self.config_path = STATE / "appliance.yaml"

    def settings(self, name: str) -> dict:
        files = self.broker.files
        tls = {"ca_file": str(files.ca_cert), "server_names": {TLS6: "localhost"}}
        if name in ("B", "D"):
            tls.update(client_cert=str(files.client_cert), client_key=str(files.client_key),
                       server_names={TLS6: "kafka.wrong.example"})
        if name == "C":
            tls["ca_file"] = str(self.other_ca)
        return {
            "state_dir": str(STATE), "run_dir": "/run/appliance-test-tls", "listen_port": 26190,
            "brokers": [TLS4, TLS6, MTLS, EXPIRED, CATCHER, CERT, NAMED_BY_NAME],
            "bpffs_dir": "/sys/fs/bpf/appliance-test-tls",
            "proxy_cgroup": "appliance-test-tls-proxy", "exempt_cgroups": [BROKER_CGROUP],
            "upstream_credentials": None if name == "D" else str(files.appliance_credentials),
            "policy_file": str(STATE / "policy.yaml"),
            "audit_flush_ms": 50, "connect_timeout_s": 5, "upstream_tls": tls,
        }

    def use(self, name: str) -> _Appliance:
        if self.running is not None and self.running[0] == name:
            return self.running[1]
        self.stop()
        self.config_path.write_text(yaml.safe_dump(self.settings(name)))
        app = _Appliance(self.config_path, load_config(self.config_path))
        try:
            app.start()
        except BaseException:
            if app.proc is not None and app.proc.poll() is None:
                app.stop()  # one that never came up must not outlive the test, holding its port and programs
            raise
        self.running = (name, app)
        return app

    def stop(self) -> None:
        if self.running is not None:
            app = self.running[1]
            assert app.stop() == 0, f"appliance serve exited badly; log:\n{app.log.read_text()[-3000:]}"
            self.running = None


@pytest.fixture(scope="module")
def appliances(tls_broker, catcher, tmp_path_factory):
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    (STATE / "policy.yaml").write_text(POLICY)
    other = tmp_path_factory.mktemp("other-ca") / "ca.pem"
    other.write_bytes(Authority.create("a CA the broker does not use", datetime.datetime.now(datetime.timezone.utc)).cert_pem)
    apps = Appliances(tls_broker, other)
    yield apps
    apps.stop()


@pytest.fixture
def workload(appliances, make_cgroup):
    """A cgroup enrolled as tls-app with the running appliance (enrol after `appliances.use`)."""
    enrolled = []

    def make(app: _Appliance):
        cg = make_cgroup(IDENTITY)
        cli(appliances.config_path, "enroll", cg.cgroup.path, "--identity", IDENTITY)
        eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in (app.status() or {}).get("workloads", [])),
                   timeout=5, message="enrolment applied")
        enrolled.append(cg)
        return cg

    yield make
    for cg in enrolled:
        cli(appliances.config_path, "unenroll", cg.cgroup.path, check=False)


def create_topic(broker: EmbeddedBroker, name: str) -> str:
    """Over the broker's plaintext listener, which no appliance here steers."""
    creds = broker.credentials
    admin = AdminClient({"bootstrap.servers": PLAIN, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanism": creds.mechanism, "sasl.username": creds.username,
                         "sasl.password": creds.password})
    for future in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)]).values():
        future.result(20)
    return name


def sessions_to(config_path: Path, broker: str, cgroup) -> list[dict]:
    return [s for s in audit(config_path, "sessions", "--identity", IDENTITY)
            if s["broker_address"] == broker and s["cgroup_path"] == cgroup.cgroup.path]


def closed_sessions(config_path: Path, broker: str, cgroup) -> list[dict]:
    return eventually(lambda: [s for s in sessions_to(config_path, broker, cgroup) if s["close_reason"]],
                      timeout=15, message=f"a closed session to {broker}")


def round_trip(cg, broker: str, topic: str, n: int) -> dict:
    """confluent-kafka produces `n` records through the proxy to `broker` and consumes them back."""
    result = cg.client("confluent.py", broker, topic, "--produce", str(n), "--consume", str(n))
    assert result["errors"] == [] and result["produced"] == n and result["consumed"] == n, result
    assert sorted(result["values"]) == sorted(f"record-{i}" for i in range(n))
    return result


def refused(appliances: Appliances, app: _Appliance, cg, broker: str, reason: str) -> None:
    """A producer to `broker` fails (Kafka's own delivery error); each of its sessions closed with `reason`
    in the audit, and serve logged the fault once however many sessions met it."""
    result = cg.client("confluent.py", broker, "tls-refused", "--produce", "1", "--timeout", "6")
    # the delivery error ("Message timed out"), or, when flush gives up first, the client's own ("brokers are down")
    assert result["produced"] == 0 and (result["errors"] or result["client_errors"]), result
    reasons = {s["close_reason"] for s in closed_sessions(appliances.config_path, broker, cg)}
    assert reasons - {"client closed the connection"} == {reason}, reasons  # a session open when it gave up
    lines = [line for line in app.log.read_text().splitlines()
             if reason in line and "nothing is sent to it in plaintext" in line]
    assert len(lines) == 1, lines


def test_confluent_kafka_and_kcat_produce_and_consume_over_sasl_ssl(appliances, workload, tls_broker):
    app = appliances.use("A")
    cg = workload(app)
    topic = create_topic(tls_broker, f"tls-{int(time.time() * 1000)}")
    result = round_trip(cg, TLS4, topic, 20)
    # over IPv6, verified against the certificate's DNS name `localhost` (server_names)
    cg.run(["kcat", "-b", TLS6, "-t", topic, "-P"], input="one\ntwo\n")
    out = cg.run(["kcat", "-b", TLS6, "-t", topic, "-C", "-o", "beginning", "-c", "22", "-e", "-q"]).stdout
    assert out.split()[-2:] == ["one", "two"] and len(out.split()) == 22
    mine = eventually(lambda: sessions_to(appliances.config_path, TLS4, cg), message="sessions to the TLS listener")
    assert any(s["pid"] == result["pid"] for s in mine)
    assert not [s for s in mine if (s["close_reason"] or "").startswith("TLS")], mine
    produced = [o for o in audit(appliances.config_path, "operations", "--identity", IDENTITY, "--topic", topic)
                if o["api_name"] == "Produce"]
    assert sum(o["records"] or 0 for o in produced) == 22
    assert sessions_to(appliances.config_path, TLS6, cg), "kcat's sessions over IPv6"


FAMILY_N = 5
SUFFIX = f"{int(time.time() * 1000)}"
FAMILY_TOPICS = {cell: f"tls-{cell}-{SUFFIX}" for cell in [*FAMILIES, "java-admin"]}


@pytest.fixture(scope="module")
def family_trips(appliances, tls_broker):
    """Under configuration A, every family's round trip through the SASL_SSL listener at once, then the Java
    admin's calls; each cell in a cgroup of its own, enrolled as tls-app. Yields (cgroups, results) by cell."""
    app = appliances.use("A")
    creds = tls_broker.credentials
    login = f"{creds.mechanism}:{creds.username}:{creds.password}"
    subprocess.run([PY, str(CLIENTS / "create_topics.py"), PLAIN, login, *FAMILY_TOPICS.values()], check=True,
                   timeout=90)
    cgs = {cell: enrol_cgroup(app, appliances.config_path, f"tls-{cell}-{SUFFIX}", IDENTITY) for cell in FAMILY_TOPICS}
    trips = run_parallel({name: (lambda fam=fam: tail_round_trip(fam, cgs[fam.name], TLS4, FAMILY_TOPICS[fam.name],
                                                                 f"tls-g-{fam.name}-{SUFFIX}", n=FAMILY_N,
                                                                 fmt=f"{fam.name}-tls-{{i}}"))
                          for name, fam in FAMILIES.items()})
    trips["java-admin"] = java_admin(cgs["java-admin"], TLS4, timeout=8, allowed=FAMILY_TOPICS["java-admin"],
                                     denied=f"tls-absent-{SUFFIX}", new_topic=f"tls-new-{SUFFIX}",
                                     new_denied=f"tls-new2-{SUFFIX}", group=f"tls-g-java-classic-{SUFFIX}",
                                     denied_group=f"tls-absent-{SUFFIX}").finish()
    yield cgs, trips
    for cg in cgs.values():
        cli(appliances.config_path, "unenroll", cg.cgroup.path, check=False)
        cg.cleanup()


def tls_sessions_of(appliances: Appliances, cg) -> list[dict]:
    """The sessions from `cg`: all tls-app's, to the SASL_SSL listener, none closed for a TLS fault."""
    sessions = [s for s in audit(appliances.config_path, "sessions", "--identity", IDENTITY)
                if s["cgroup_id"] == cg.cgroup.id]
    assert sessions, f"no sessions audited from {cg.cgroup.path}"
    assert {(s["cgroup_path"], s["broker_address"]) for s in sessions} == {(cg.cgroup.path, TLS4)}, sessions
    assert not [s for s in sessions if (s["close_reason"] or "").startswith("TLS")], sessions
    return sessions


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_produces_and_consumes_over_sasl_ssl(family, family_trips, appliances):
    cgs, trips = family_trips
    failure = trips[family].failure()
    if failure:
        pytest.fail(failure)
    tls_sessions_of(appliances, cgs[family])
    traffic_until(appliances.config_path, cgs[family], lambda t: t.get("Produce") == FAMILY_N and
                  t.get("Fetch", 0) >= FAMILY_N, f"{family}'s {FAMILY_N} records produced and fetched in the audit",
                  topic=FAMILY_TOPICS[family])


def test_the_java_admin_client_is_answered_over_sasl_ssl(family_trips, appliances):
    cgs, trips = family_trips
    failure = admin_failure(trips["java-admin"], FAMILY_TOPICS["java-admin"])
    if failure:
        pytest.fail(failure)
    tls_sessions_of(appliances, cgs["java-admin"])
    traffic_until(appliances.config_path, cgs["java-admin"], lambda t: ADMIN_REQUESTS <= set(t),
                  "the admin's requests in the audit")


def test_a_broker_given_by_dns_name_is_verified_against_that_name_not_its_address(appliances, workload, tls_broker):
    """Real clusters certify brokers by name. The NAMED listener's certificate carries `localhost` and no IP:
    given in `brokers` as localhost:26103, the proxy's handshake with 127.0.0.1:26103 (what the name resolves
    to, and what the workload connects to) asks for and verifies `localhost`."""
    app = appliances.use("A")
    cg = workload(app)
    topic = create_topic(tls_broker, f"tls-named-{int(time.time() * 1000)}")
    round_trip(cg, NAMED, topic, 3)
    sessions = [s for s in sessions_to(appliances.config_path, NAMED, cg) if s["close_reason"]]
    assert sessions and all(s["close_reason"] == "client closed the connection" for s in sessions), sessions
    assert "IP address mismatch" not in app.log.read_text()


def test_an_expired_broker_certificate_closes_the_session_naming_broker_and_fault(appliances, workload, tls_broker):
    app = appliances.use("A")
    cg = workload(app)
    refused(appliances, app, cg, EXPIRED, f"TLS to broker {EXPIRED} failed: certificate verify failed: certificate "
            "has expired (the broker's certificate has expired)")
    # What the appliance sent that broker was a TLS handshake, not Kafka requests: proved by
    # test_the_first_bytes_the_proxy_sends_a_broker_are_a_tls_client_hello. (The broker's own log line for the
    # failed handshake comes about a minute later, so it cannot be waited for here.)
    # and the good listener keeps working meanwhile
    assert cg.client("confluent.py", TLS4, create_topic(tls_broker, f"tls-ok-{int(time.time() * 1000)}"),
                     "--produce", "1")["produced"] == 1


def test_a_broker_demanding_a_client_certificate_refuses_an_appliance_without_one(appliances, workload):
    app = appliances.use("A")
    cg = workload(app)
    refused(appliances, app, cg, MTLS, f"TLS to broker {MTLS} failed: sslv3 alert bad certificate (the broker "
            "demands a client certificate and the appliance has none; set upstream_tls.client_cert and client_key)")


def test_the_first_bytes_the_proxy_sends_a_broker_are_a_tls_client_hello(appliances, workload, catcher):
    app = appliances.use("A")
    cg = workload(app)
    catcher.received.clear()
    cg.client("confluent.py", CATCHER, "tls-caught", "--produce", "1", "--timeout", "4")
    firsts = eventually(lambda: list(catcher.received), message="bytes at the stand-in broker")
    for data in firsts:
        # a TLS handshake record (0x16, version 3.x) carrying a ClientHello (handshake type 1)
        assert data[0] == 0x16 and data[1] == 0x03 and data[5] == 0x01, data[:16]
        assert b"SCRAM" not in data and b"appliance" not in data  # no SASL exchange in the clear
    reasons = {s["close_reason"] for s in closed_sessions(appliances.config_path, CATCHER, cg)}
    # the client retries every 50 ms until its timeout: the session open when it gives up ends with it
    assert reasons - {"client closed the connection"} == {
        f"TLS to broker {CATCHER} failed: the broker closed the connection during the TLS handshake "
        "(is the port a plaintext listener?)"}, reasons


def test_mutual_tls_works_with_the_client_certificate_and_a_wrong_server_name_is_refused(appliances, workload,
                                                                                         tls_broker):
    app = appliances.use("B")
    cg = workload(app)
    topic = create_topic(tls_broker, f"tls-mtls-{int(time.time() * 1000)}")
    round_trip(cg, MTLS, topic, 5)
    refused(appliances, app, cg, TLS6, f"TLS to broker {TLS6} failed: certificate verify failed: Hostname mismatch, "
            "certificate is not valid for 'kafka.wrong.example' (the broker's certificate does not carry the name "
            "'kafka.wrong.example'; set upstream_tls.server_names for this broker to a name it carries)")


def test_a_broker_certificate_from_another_ca_is_refused(appliances, workload):
    app = appliances.use("C")
    cg = workload(app)
    refused(appliances, app, cg, TLS4, f"TLS to broker {TLS4} failed: certificate verify failed: unable to get local "
            f"issuer certificate (the broker's certificate is not signed by a CA in {appliances.other_ca}; set "
            "upstream_tls.ca_file to its CA)")


def test_without_sasl_the_client_certificate_is_the_principal_on_an_ssl_listener(appliances, workload, tls_broker):
    app = appliances.use("D")
    cg = workload(app)
    topic = create_topic(tls_broker, f"tls-cert-{int(time.time() * 1000)}")
    result = round_trip(cg, CERT, topic, 5)
    mine = eventually(lambda: sessions_to(appliances.config_path, CERT, cg), message="sessions to the SSL listener")
    assert any(s["pid"] == result["pid"] for s in mine)
    assert "upstream TLS to every broker (SSL, no SASL)" in app.log.read_text()
    # a SASL_SSL listener wants the SASL exchange the appliance no longer makes: the broker drops the
    # session's first (workload) request as an unauthenticated one, and the workload fails
    refused_topic = cg.client("confluent.py", TLS4, topic, "--produce", "1", "--timeout", "6")
    assert refused_topic["produced"] == 0, refused_topic


def test_serve_refuses_a_configuration_whose_tls_files_are_wrong(appliances, tls_broker):
    bad = STATE / "bad.yaml"
    settings = appliances.settings("B")
    settings["upstream_tls"]["client_key"] = str(tls_broker.files.ca_key)  # a key, but not the certificate's
    bad.write_text(yaml.safe_dump(settings))
    done = cli(bad, "serve", check=False, timeout=30)
    assert done.returncode != 0
    assert (f"{bad}: key 'upstream_tls': key 'client_key': {tls_broker.files.ca_key}: this private key does not "
            f"belong to the certificate in {tls_broker.files.client_cert}") in done.stderr + done.stdout


def test_doctor_makes_the_handshake_serve_makes_and_names_the_same_fault(appliances, tls_broker):
    """doctor's broker checks with upstream_tls: one real handshake per broker, as the proxy makes it."""
    import json

    path = STATE / "doctor.yaml"
    for name, broker, status, detail in (
        ("A", TLS4, "ok", "TLS handshake in "),
        ("A", EXPIRED, "FAIL", f"TLS to broker {EXPIRED} failed: certificate verify failed: certificate has expired"),
        ("C", TLS4, "FAIL", f"TLS to broker {TLS4} failed: certificate verify failed: unable to get local issuer"),
    ):
        settings = appliances.settings(name)
        settings.update(brokers=[broker], listen_port=26191, bpffs_dir="/sys/fs/bpf/appliance-test-tls-doctor")
        settings["upstream_tls"]["server_names"] = {}  # these brokers are verified by their IP SAN
        path.write_text(yaml.safe_dump(settings))
        done = cli(path, "doctor", "--json", check=False, timeout=60)
        assert done.stdout.startswith("["), (done.returncode, done.stdout, done.stderr)
        findings = {f["check"]: f for f in json.loads(done.stdout)}
        found = findings[f"broker {broker}"]
        assert found["status"] == status and detail in found["detail"], (name, broker, found)
        if status == "FAIL":
            assert done.returncode == 1
