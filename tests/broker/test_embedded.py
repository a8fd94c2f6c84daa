"""The embedded broker, for real: a Kafka JVM on 127.0.0.1:29092 and [::1]:29093, confluent-kafka clients.

Ports 29092-29095 keep clear of a broker on the defaults (19092-19095), which
steering may be watching, and of the integration suite's (39092-39095). The
broker runs once for the module in a temporary data directory; a missing java
or jar cache fails the run (BrokerError), it never skips.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, AdminClient, NewTopic
from confluent_kafka.admin import ResourcePatternType, ResourceType
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.request_header.v2.header import RequestHeader
from kio.serial import entity_writer
from kio.static.primitive import i32

from appliance.broker import BrokerError, CredentialsError, EmbeddedBroker, load_credentials
from appliance.broker.credentials import UpstreamCredentials, write_credentials
from appliance.broker.properties import BrokerFiles, server_properties
from appliance.cli.broker import broker as broker_cli
from appliance.config import Config, EmbeddedBrokerConfig
from appliance.identity import cgroups

pytestmark = pytest.mark.integration

CGROUP = "appliance-broker-test"
NETNS = "appl-broker-test"
VETH_HOST, VETH_PEER = "applbt-h", "applbt-p"
NETNS_HOST, NETNS_PEER = "10.231.9.1", "10.231.9.2"
TIMINGS: dict[str, float] = {}


def _config(data_dir: Path, base: int = 29092, **overrides) -> EmbeddedBrokerConfig:
    return EmbeddedBrokerConfig(port4=base, port6=base + 1, controller_port=base + 2, data_dir=data_dir,
                                cgroup=CGROUP, **overrides)


def _broker_processes(files: BrokerFiles) -> list[int]:
    """Every live process whose command line names this broker's server.properties."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(files.server_properties).encode() in argv:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    b = EmbeddedBroker(_config(tmp_path_factory.mktemp("broker")))
    started = time.monotonic()
    b.start()
    TIMINGS["cold start (format + start)"] = time.monotonic() - started
    yield b
    b.stop()
    try:
        cgroups.remove(cgroups.resolve(CGROUP))
    except cgroups.CgroupError:
        pass  # still holds a process: a failed test's broker, which the failure names
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\nembedded broker: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


def _client(broker: EmbeddedBroker, address: str | None = None, *, user: str = "appliance",
            password: str | None = None, mechanism: str = "SCRAM-SHA-512", **extra) -> dict:
    creds = load_credentials(broker.files.credentials_file(user))
    return {
        "bootstrap.servers": address or str(broker.addresses[0]),
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": creds.username,
        "sasl.password": password or creds.password,
        **extra,
    }


def _topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _produce(conf: dict, topic: str, value: bytes) -> KafkaError | None:
    outcome: list[KafkaError | None] = []
    producer = Producer(conf)
    producer.produce(topic, value, on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(30)
    assert outcome, f"no delivery report for {topic} within 30 s"
    return outcome[0]


def _consume_one(conf: dict, topic: str, timeout: float = 30):
    consumer = Consumer({**conf, "group.id": _topic("g"), "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                return message
        raise AssertionError(f"nothing consumed from {topic} in {timeout} s")
    finally:
        consumer.close()


# -- the running broker ----------------------------------------------------------------


def test_first_start_writes_private_credentials(broker):
    assert broker.files.data_dir.stat().st_mode & 0o777 == 0o700
    for user in ("appliance", "intruder"):
        path = broker.files.credentials_file(user)
        assert path.stat().st_mode & 0o777 == 0o600
        data = json.loads(path.read_text())
        assert data["mechanism"] == "SCRAM-SHA-512" and data["username"] == user and len(data["password"]) >= 24
    assert broker.credentials == load_credentials(broker.files.appliance_credentials)
    assert broker.credentials.password != load_credentials(broker.files.intruder_credentials).password
    # server.properties holds the PLAIN passwords.
    assert broker.files.server_properties.stat().st_mode & 0o777 == 0o600


def test_status_names_both_addresses_and_the_log(broker):
    status = broker.status()
    assert status.running and status.answering and status.pid is not None
    assert status.client_addresses == ("127.0.0.1:29092", "[::1]:29093")
    assert status.log_path == broker.files.data_dir / "logs" / "server.log"
    assert "Kafka Server started" in status.log_path.read_text()


def test_start_while_running_returns_at_once(broker):
    pid = broker.status().pid
    started = time.monotonic()
    broker.start()
    assert time.monotonic() - started < 2
    assert broker.status().pid == pid


def test_broker_runs_in_its_cgroup(broker):
    pid = broker.status().pid
    assert cgroups.of_process(pid) == f"/{CGROUP}"
    assert Path(f"/proc/{pid}/exe").resolve().name == "java"


@pytest.mark.parametrize("family", [4, 6])
def test_appliance_produces_and_consumes(broker, family):
    address = str(broker.addresses[0 if family == 4 else 1])
    conf = _client(broker, address)
    topic = _topic(f"v{family}")
    assert _produce(conf, topic, f"hello over IPv{family}".encode()) is None
    message = _consume_one(conf, topic)
    assert message.error() is None and message.value() == f"hello over IPv{family}".encode()
    # Each listener advertises its own address, so the client stays on the family it bootstrapped with.
    brokers = AdminClient(conf).list_topics(timeout=10).brokers.values()
    assert [f"[{b.host}]:{b.port}" if ":" in b.host else f"{b.host}:{b.port}" for b in brokers] == [address]


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_appliance_can_use_the_other_mechanisms(broker, mechanism):
    topic = _topic(mechanism.lower())
    conf = _client(broker, mechanism=mechanism)
    assert _produce(conf, topic, b"x") is None
    assert topic in AdminClient(conf).list_topics(timeout=10).topics


def test_intruder_authenticates_but_may_do_nothing(broker):
    owned = _topic("owned")
    assert _produce(_client(broker), owned, b"secret") is None
    intruder = _client(broker, user="intruder")
    admin = AdminClient(intruder)

    # Authenticated (a wrong password never gets metadata), but sees no topic at all...
    assert admin.list_topics(timeout=10).topics == {}
    # ...cannot describe one by name...
    assert admin.list_topics(topic=owned, timeout=10).topics[owned].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # ...nor create one, explicitly or by producing to it...
    created = _topic("intruder")
    with pytest.raises(KafkaException) as refused:
        admin.create_topics([NewTopic(created, 1, 1)])[created].result(timeout=30)
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _produce(intruder, created, b"x").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert _produce(intruder, owned, b"x").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert created not in AdminClient(_client(broker)).list_topics(timeout=10).topics
    # ...nor read: its consumer group is refused before any fetch.
    message = _consume_one(intruder, owned)
    assert message.error() is not None
    assert message.error().code() in (KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    # And it holds no ACL that could explain otherwise.
    appliance_admin = AdminClient(_client(broker))  # held: a collected client cancels its futures
    acls = appliance_admin.describe_acls(AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, "User:intruder", None, AclOperation.ANY,
        AclPermissionType.ANY)).result(timeout=30)
    assert acls == []


def test_wrong_password_fails_authentication(broker):
    errors: list[KafkaError] = []
    producer = Producer(_client(broker, password="not-the-password", error_cb=errors.append, log_level=0))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not errors:
        producer.poll(0.2)
    assert errors and errors[0].code() == KafkaError._AUTHENTICATION, errors
    assert "invalid credentials" in errors[0].str()


def _unauthenticated_metadata(port: int) -> bytes:
    """Send Metadata without authenticating; return what comes back (b'' when the broker hangs up)."""
    body = io.BytesIO()
    entity_writer(RequestHeader)(body, RequestHeader(request_api_key=MetadataRequest.__api_key__,
                                                     request_api_version=MetadataRequest.__version__,
                                                     correlation_id=i32(1), client_id="anonymous"))
    entity_writer(MetadataRequest)(body, MetadataRequest(topics=None, allow_auto_topic_creation=True,
                                                         include_topic_authorized_operations=False))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">i", len(body.getvalue())) + body.getvalue())
        return s.recv(4096)


@pytest.mark.parametrize("port", [29092, 29094, 29095], ids=["client", "controller", "internal"])
def test_every_listener_requires_sasl(broker, port):
    """No listener lets an unauthenticated (User:ANONYMOUS) connection past ApiVersions."""
    assert _unauthenticated_metadata(port) == b""


def test_java_tools_run_as_appliance_and_intruder(broker, tmp_path):
    topic = _topic("java")
    assert _produce(_client(broker), topic, b"x") is None
    listed = {}
    for user in ("appliance", "intruder"):
        props = broker.client_properties(tmp_path / f"{user}.properties", user=user)
        assert props.stat().st_mode & 0o777 == 0o600
        done = broker.java_tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", broker.addresses[0],
                                "--command-config", props, "--list")
        assert done.returncode == 0, done.stderr
        listed[user] = done.stdout.split()
    assert topic in listed["appliance"] and listed["intruder"] == []


def test_cli_reports_the_running_broker(broker):
    config = replace(Config(), embedded_broker=broker.config)
    result = CliRunner().invoke(broker_cli, ["status"], obj=config)
    assert result.exit_code == 0, result.output
    assert "127.0.0.1:29092" in result.output and "[::1]:29093" in result.output
    assert str(broker.files.server_log) in result.output
    result = CliRunner().invoke(broker_cli, ["start"], obj=config)
    assert result.exit_code == 0 and f"pid {broker.status().pid}" in result.output


def test_restart_keeps_topics_and_credentials(broker):
    topic = _topic("durable")
    assert _produce(_client(broker), topic, b"kept") is None
    password = broker.credentials.password
    broker.stop()
    started = time.monotonic()
    broker.start()
    TIMINGS["warm start"] = time.monotonic() - started
    assert broker.credentials.password == password
    assert _consume_one(_client(broker), topic).value() == b"kept"


def test_stop_leaves_no_java_process(broker):
    pid = broker.status().pid
    started = time.monotonic()
    broker.stop()
    TIMINGS["stop"] = time.monotonic() - started
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2][:3]
    assert _broker_processes(broker.files) == []
    assert not broker.files.pid_file.exists()
    assert cgroups.resolve(CGROUP).directory.joinpath("cgroup.procs").read_text() == ""
    status = broker.status()
    assert not status.running and status.pid is None
    broker.stop()  # idempotent


def test_concurrent_starts_share_one_jvm(tmp_path):
    """A demo and a test fixture starting the same data directory at once get one broker."""
    brokers = [EmbeddedBroker(_config(tmp_path / "b", base=29592)) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda b: b.start(), brokers))
    try:
        pids = {b.status().pid for b in brokers}
        assert len(pids) == 1 and _broker_processes(brokers[0].files) == list(pids)
    finally:
        brokers[0].stop()
    assert not brokers[1].status().running


# -- start-up failures -------------------------------------------------------------------


def test_start_refuses_a_port_in_use(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 29192))
        holder.listen()
        with pytest.raises(BrokerError, match=r"cannot listen on 127\.0\.0\.1:29192: Address already in use"):
            EmbeddedBroker(_config(tmp_path / "b", base=29192)).start()
    assert not (tmp_path / "b" / "kafka").exists()  # refused before formatting


def test_start_refuses_an_address_no_interface_has(tmp_path):
    with pytest.raises(BrokerError, match=r"cannot listen on 192\.0\.2\.1:29192: no interface has 192\.0\.2\.1"):
        EmbeddedBroker(_config(tmp_path / "b", base=29192, host4="192.0.2.1")).start()


def test_start_reports_a_dying_jvm_with_its_log(tmp_path):
    b = EmbeddedBroker(_config(tmp_path / "b", base=29292, heap="1k"))
    with pytest.raises(BrokerError) as failed:
        b.start(timeout=60)
    message = str(failed.value)
    assert "exited with status 1 while starting" in message
    assert "Too small" in message and "console.log" in message  # the JVM's own complaint, from the log tail
    assert not b.status().running


def test_start_fails_clearly_without_the_jars(tmp_path):
    b = EmbeddedBroker(_config(tmp_path / "b", base=29392, jar_cache=tmp_path / "no-jars"))
    with pytest.raises(BrokerError, match=r"no-jars/kafka-4\.1\.1 holds no Kafka 4\.1\.1 jars .* run scripts/setup"):
        b.start()


# -- a broker inside a network namespace ----------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns():
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True)
    _ip("netns", "add", NETNS)
    try:
        _ip("link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_PEER, "netns", NETNS)
        _ip("addr", "add", f"{NETNS_HOST}/30", "dev", VETH_HOST)
        _ip("link", "set", VETH_HOST, "up")
        _ip("-n", NETNS, "addr", "add", f"{NETNS_PEER}/30", "dev", VETH_PEER)
        _ip("-n", NETNS, "link", "set", VETH_PEER, "up")
        yield NETNS
    finally:
        subprocess.run(["ip", "link", "del", VETH_HOST], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def test_broker_in_a_network_namespace(netns, tmp_path):
    """host4 is the namespace's address; lo (controller, inter-broker, ::1) is brought up by start()."""
    b = EmbeddedBroker(_config(tmp_path / "b", host4=NETNS_PEER), netns=netns)
    try:
        b.start()
        status = b.status()
        assert status.running and status.answering
        assert status.client_addresses == (f"{NETNS_PEER}:29092", "[::1]:29093")
        assert cgroups.of_process(status.pid) == f"/{CGROUP}"  # moved before `ip netns exec` hid /sys/fs/cgroup
        assert os.readlink(f"/proc/{status.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        conf = _client(b, f"{NETNS_PEER}:29092")  # from the host, over the veth pair
        topic = _topic("netns")
        assert _produce(conf, topic, b"from the host") is None
        assert _consume_one(conf, topic).value() == b"from the host"
    finally:
        b.stop()
    assert _broker_processes(b.files) == []


# -- the credentials file -------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_load_credentials_reads_a_good_file(tmp_path):
    good = tmp_path / "c.json"
    write_credentials(good, UpstreamCredentials("SCRAM-SHA-256", "appliance", "pw"))
    assert good.stat().st_mode & 0o777 == 0o600
    creds = load_credentials(good)
    assert creds == UpstreamCredentials("SCRAM-SHA-256", "appliance", "pw")
    assert "pw" not in repr(creds)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_load_credentials_refuses_a_file_others_can_read(tmp_path, mode):
    path = _write(tmp_path / "c.json", '{"mechanism": "PLAIN", "username": "a", "password": "b"}', mode)
    with pytest.raises(CredentialsError, match=rf"c\.json: mode {mode:04o} lets group or other read .*\(chmod 600 "):
        load_credentials(path)


@pytest.mark.parametrize("text, problem", [
    ('{"mechanism": "SCRAM-SHA-512", "username": "a",', r"c\.json line 1 column \d+: not valid JSON"),
    ('["SCRAM-SHA-512"]', r"must hold a JSON object .* not list"),
    ('{"mechanism": "GSSAPI", "username": "a", "password": "b"}',
     r"mechanism 'GSSAPI' is not supported; use one of SCRAM-SHA-256, SCRAM-SHA-512, PLAIN"),
    ('{"mechanism": "PLAIN", "username": "a"}', r"key 'password' is missing"),
    ('{"mechanism": "PLAIN", "username": "", "password": "b"}', r"key 'username' must be a non-empty string"),
    ('{"mechanism": "PLAIN", "username": "a", "password": "b", "pasword": "c"}', r"key 'pasword' is not known"),
])
def test_load_credentials_names_the_problem(tmp_path, text, problem):
    with pytest.raises(CredentialsError, match=problem):
        load_credentials(_write(tmp_path / "c.json", text))


def test_load_credentials_names_a_missing_file(tmp_path):
    with pytest.raises(CredentialsError, match=r"nope\.json: credentials file does not exist"):
        load_credentials(tmp_path / "nope.json")


# -- server.properties (pure) ----------------------------------------------------------------


def test_server_properties_grant_only_the_appliance():
    config = EmbeddedBrokerConfig()
    text = server_properties(config, BrokerFiles(Path("/d")),
                             appliance=UpstreamCredentials("SCRAM-SHA-512", "appliance", "A"),
                             intruder=UpstreamCredentials("SCRAM-SHA-512", "intruder", "I"), node_password="N")
    props = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert props["super.users"] == "User:appliance;User:node"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["listeners"] == ("CLIENT://127.0.0.1:19092,CLIENT6://[::1]:19093,"
                                  "INTERNAL://127.0.0.1:19095,CONTROLLER://127.0.0.1:19094")
    assert props["advertised.listeners"] == "CLIENT://127.0.0.1:19092,CLIENT6://[::1]:19093,INTERNAL://127.0.0.1:19095"
    assert "PLAINTEXT" not in props["listener.security.protocol.map"].replace("SASL_PLAINTEXT", "")
    assert 'user_intruder="I"' in props["listener.name.client.plain.sasl.jaas.config"]
    assert "user_node" not in props["listener.name.client.plain.sasl.jaas.config"]
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    no_v6 = server_properties(replace(config, host6=""), BrokerFiles(Path("/d")),
                              appliance=UpstreamCredentials("SCRAM-SHA-512", "appliance", "A"),
                              intruder=UpstreamCredentials("SCRAM-SHA-512", "intruder", "I"), node_password="N")
    assert "CLIENT6" not in no_v6
