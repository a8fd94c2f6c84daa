"""Upstream TLS: the configuration's checks, the one SSLContext, and real handshakes with a local TLS server.

Certificates are made in tmp directories by the embedded broker's own CA code; the server is Python's ssl
module on a loopback port, so every verification here is OpenSSL's, on a real handshake.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from appliance.broker.certificates import Authority
from appliance.config import BrokerAddress, ConfigError, UpstreamTlsConfig, load_config, parse_config
from appliance.proxy.server import UpstreamPool, _TlsFaults
from appliance.broker.credentials import UpstreamCredentials
from appliance.proxy.upstream_tls import (TlsFileError, UpstreamTls, build_context, check_files, describe_failure,
                                          probe, upstream_tls)

NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a broker certificate for 127.0.0.1 and `kafka.test`, an expired one, a client one, a stranger CA."""
    d = tmp_path_factory.mktemp("pki")
    ca = Authority.create("test CA", NOW)
    other = Authority.create("another CA", NOW)
    files = {"ca": ca.cert_pem, "other-ca": other.cert_pem}
    for name, issued in {
        "server": ca.issue("broker", NOW, hosts=("127.0.0.1", "kafka.test")),
        "by-name": ca.issue("broker", NOW, hosts=("kafka-1.cluster.test",)),  # as real clusters certify brokers
        "expired": ca.issue("broker", NOW, hosts=("127.0.0.1",), days=1, not_before=NOW - datetime.timedelta(days=10)),
        "client": ca.issue("appliance", NOW, client=True),
        "client-expired": ca.issue("appliance", NOW, client=True, days=1, not_before=NOW - datetime.timedelta(days=5)),
        "stranger-client": other.issue("appliance", NOW, client=True),
    }.items():
        files[f"{name}.pem"] = issued.cert_pem
        files[f"{name}-key.pem"] = issued.key_pem
    for name, data in files.items():
        path = d / name
        path.write_bytes(data)
        path.chmod(0o600)
    expired_ca = Authority.create("old CA", NOW - datetime.timedelta(days=20), days=5)
    (d / "expired-ca").write_bytes(expired_ca.cert_pem)
    return d


class TlsServer:
    """A loopback TLS server on its own thread: handshakes, then records the first bytes and closes."""

    def __init__(self, cert: Path, key: Path, *, client_ca: Path | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(2)
                    self.received.append(conn.recv(100))
            except (ssl.SSLError, OSError):
                pass

    @property
    def broker(self) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve(pki):
    servers = []

    def start(cert: str = "server", **kwargs) -> TlsServer:
        server = TlsServer(pki / f"{cert}.pem", pki / f"{cert}-key.pem", **kwargs)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def tls_config(pki, **changes) -> UpstreamTlsConfig:
    return replace(UpstreamTlsConfig(ca_file=pki / "ca"), **changes)


# ---- handshakes -------------------------------------------------------------------------------------------


def test_a_broker_certificate_from_the_configured_ca_for_its_ip_is_accepted(pki, serve):
    server = serve()
    assert probe(UpstreamTls.from_config(tls_config(pki)), server.broker) is None
    assert probe(tls_config(pki), server.broker) is None  # from the configuration, as a health check has it
    assert probe(tls_config(pki, ca_file=pki / "missing"), server.broker).startswith(
        f"TLS to broker {server.broker} cannot be tried: ")


def test_the_server_name_replaces_the_ip_for_sni_and_verification(pki, serve):
    server = serve()
    named = tls_config(pki, server_names=((server.broker, "kafka.test"),))
    assert probe(UpstreamTls.from_config(named), server.broker) is None
    wrong = tls_config(pki, server_names=((server.broker, "kafka.wrong"),))
    fault = probe(UpstreamTls.from_config(wrong), server.broker)
    assert fault == (f"TLS to broker {server.broker} failed: certificate verify failed: Hostname mismatch, certificate "
                     "is not valid for 'kafka.wrong' (the broker's certificate does not carry the name 'kafka.wrong'; "
                     "set upstream_tls.server_names for this broker to a name it carries)")
    # verify_hostname off: the chain still counts, the name does not
    assert probe(UpstreamTls.from_config(replace(wrong, verify_hostname=False)), server.broker) is None


def test_a_broker_reached_by_a_dns_name_is_verified_against_that_name(pki, serve):
    """A cluster's brokers are certified by the names they are reached by (a name in `brokers`, or the
    advertised host names in Metadata), not by IP: the shell verifies each address against the name it
    resolved from, and the operator's server_names still come first."""
    server = serve("by-name")
    address = (server.broker.host, server.broker.port)
    faults = _TlsFaults(UpstreamTls.from_config(tls_config(pki)), 5.0)

    async def handshake(faults) -> None:
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, *address, **faults.connect_arguments(address))
        transport.close()

    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        asyncio.run(handshake(faults))  # by its IP literal: the certificate does not carry it
    faults.named([address, ("10.0.0.9", 9093)], "Kafka-1.Cluster.Test.")
    assert faults.connect_arguments(address)["server_hostname"] == "kafka-1.cluster.test"
    asyncio.run(handshake(faults))  # by the name it was reached through
    assert probe(tls_config(pki), server.broker, name="kafka-1.cluster.test") is None  # doctor does the same
    faults.named([address], "kafka-9.cluster.test")  # the latest naming of an address wins
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        asyncio.run(handshake(faults))
    explicit = _TlsFaults(UpstreamTls.from_config(tls_config(pki, server_names=((server.broker, "kafka-1.cluster.test"),))),
                          5.0)
    explicit.named([address], "kafka-9.cluster.test")
    asyncio.run(handshake(explicit))  # server_names, the operator's word, over what an answer named


def test_the_names_kept_for_broker_addresses_are_bounded():
    from appliance.proxy import server as shell

    faults = _TlsFaults(None, 5.0)
    faults.named([(f"10.0.{i // 250}.{i % 250}", 9093) for i in range(shell._TLS_NAMES_KEPT + 10)], "kafka.test")
    assert len(faults.names) == shell._TLS_NAMES_KEPT and ("10.0.0.0", 9093) not in faults.names


def test_a_certificate_from_another_ca_is_refused_naming_the_trust(pki, serve):
    server = serve()
    tls = UpstreamTls.from_config(tls_config(pki, ca_file=pki / "other-ca"))
    fault = probe(tls, server.broker)
    assert fault.startswith(f"TLS to broker {server.broker} failed: certificate verify failed: unable to get local "
                            "issuer certificate (the broker's certificate is not signed by a CA in ")
    assert str(pki / "other-ca") in fault
    # the system store does not know a private CA either
    assert "not signed by a CA in the system store" in probe(UpstreamTls.from_config(UpstreamTlsConfig()), server.broker)


def test_an_expired_broker_certificate_is_refused(pki, serve):
    server = serve("expired")
    assert probe(UpstreamTls.from_config(tls_config(pki)), server.broker) == (
        f"TLS to broker {server.broker} failed: certificate verify failed: certificate has expired "
        "(the broker's certificate has expired)")


def test_a_broker_demanding_a_client_certificate_gets_the_configured_one(pki, serve):
    server = serve(client_ca=pki / "ca")
    fault = probe(UpstreamTls.from_config(tls_config(pki)), server.broker)
    assert fault is not None and fault.startswith(f"TLS to broker {server.broker} failed: ")
    assert "the broker demands a client certificate and the appliance has none" in fault
    mutual = tls_config(pki, client_cert=pki / "client.pem", client_key=pki / "client-key.pem")
    assert probe(UpstreamTls.from_config(mutual), server.broker) is None
    stranger = tls_config(pki, client_cert=pki / "stranger-client.pem", client_key=pki / "stranger-client-key.pem")
    assert "the broker demands a client certificate" not in (probe(UpstreamTls.from_config(stranger), server.broker) or "")
    assert probe(UpstreamTls.from_config(stranger), server.broker) is not None


def test_a_plaintext_port_is_a_tls_failure_and_the_proxy_sent_it_a_client_hello(pki):
    listener = socket.create_server(("127.0.0.1", 0))
    first: list[bytes] = []

    def accept_one() -> None:
        conn, _ = listener.accept()
        with conn:
            first.append(conn.recv(5))  # then close, as a broker would after a frame it cannot read

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    broker = BrokerAddress("127.0.0.1", listener.getsockname()[1])
    fault = probe(UpstreamTls.from_config(tls_config(pki)), broker)
    thread.join(5)
    listener.close()
    assert first[0][0] == 0x16 and first[0][1] == 0x03, first  # a TLS handshake record: the ClientHello
    assert fault == (f"TLS to broker {broker} failed: the broker closed the connection during the TLS handshake "
                     "(is the port a plaintext listener?)")


def test_min_version_tls13_is_offered_alone(pki, serve):
    server = serve()
    server.context.maximum_version = ssl.TLSVersion.TLSv1_2
    tls = UpstreamTls.from_config(tls_config(pki, min_version="TLSv1.3"))
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_3
    fault = probe(tls, server.broker)
    assert fault is not None and "share no TLS version" in fault, fault


def test_the_shell_uses_the_context_and_logs_each_broker_fault_once(pki, serve, caplog):
    """The pool's connect is asyncio's, with the context and server name: a TLS fault makes it stop opening
    connections to that broker and is logged once, however often it happens."""
    server = serve("expired")
    faults = _TlsFaults(UpstreamTls.from_config(tls_config(pki)), 5.0)
    pool = UpstreamPool(UpstreamCredentials("PLAIN", "appliance", "pw"), 1 << 20, 1, tls=faults)
    address = (server.broker.host, server.broker.port)

    async def twice() -> None:
        for _ in range(2):
            pool._opening[address] = 1
            await pool._open(address)

    with caplog.at_level("ERROR", logger="appliance.proxy"):
        asyncio.run(twice())
    logged = [r.getMessage() for r in caplog.records if "TLS to broker" in r.getMessage()]
    assert len(logged) == 1 and "certificate has expired" in logged[0] and "plaintext" in logged[0]
    assert address in pool._failed_at and pool._opening[address] == 0
    assert faults.connect_arguments(address)["server_hostname"] == "127.0.0.1"
    assert _TlsFaults(None, 5.0).connect_arguments(address) == {}  # plaintext: no TLS arguments at all


def test_describe_failure_for_faults_without_a_handshake_record():
    broker = BrokerAddress("10.0.0.5", 9093)
    assert describe_failure(broker, TimeoutError()) == (
        "TLS to broker 10.0.0.5:9093 failed: the handshake did not finish in time (connect_timeout_s)")
    assert "plaintext listener" in describe_failure(broker, ConnectionResetError())


# ---- files, checked at load -------------------------------------------------------------------------------


def test_good_files_pass_and_build_one_context(pki):
    tls = tls_config(pki, client_cert=pki / "client.pem", client_key=pki / "client-key.pem")
    check_files(tls)
    assert isinstance(build_context(tls), ssl.SSLContext)
    assert upstream_tls(None) is None and upstream_tls(replace(tls, enabled=False)) is None


@pytest.mark.parametrize("changes, key, message", [
    ({"ca_file": "missing"}, "ca_file", "missing: the CA file does not exist"),
    ({"ca_file": "client-key.pem"}, "ca_file", "client-key.pem: holds no PEM certificate"),
    ({"ca_file": "expired-ca"}, "ca_file", "expired-ca: a CA certificate (CN=old CA) expired on "),
    ({"client_cert": "client-expired.pem", "client_key": "client-expired-key.pem"}, "client_cert",
     "client-expired.pem: the client certificate (CN=appliance) expired on "),
    ({"client_cert": "client.pem", "client_key": "server-key.pem"}, "client_key",
     "server-key.pem: this private key does not belong to the certificate in "),
    ({"client_cert": "client.pem", "client_key": "client.pem"}, "client_key", "client.pem: holds no PEM private key"),
    ({"client_cert": "client.pem", "client_key": "nowhere"}, "client_key", "nowhere: the client key file does not exist"),
])
def test_each_bad_file_is_named_with_its_fault(pki, changes, key, message):
    tls = tls_config(pki, **{k: pki / v for k, v in changes.items()})
    with pytest.raises(TlsFileError) as e:
        check_files(tls)
    assert e.value.key == key and str(e.value).startswith(str(pki)) and message in str(e.value), str(e.value)


def test_an_expired_certificate_names_its_dates(pki):
    tls = tls_config(pki, client_cert=pki / "client-expired.pem", client_key=pki / "client-expired-key.pem")
    with pytest.raises(TlsFileError) as e:
        check_files(tls)
    past = (NOW - datetime.timedelta(days=4)).strftime("%Y-%m-%d")
    today = datetime.datetime.now(datetime.timezone.utc)  # not NOW: the suite may have run past midnight since
    assert f"expired on {past}" in str(e.value) and f"it is now {today:%Y-%m-%d}" in str(e.value), str(e.value)


def test_a_client_key_others_can_read_is_refused(pki, tmp_path):
    key = tmp_path / "loose-key.pem"
    key.write_bytes((pki / "client-key.pem").read_bytes())
    key.chmod(0o644)
    with pytest.raises(TlsFileError) as e:
        check_files(tls_config(pki, client_cert=pki / "client.pem", client_key=key))
    assert e.value.key == "client_key" and f"{key}: has mode 0644, which lets group or others read" in str(e.value)
    os.symlink(pki / "client-key.pem", tmp_path / "linked-key.pem")
    with pytest.raises(TlsFileError, match="a symlink is refused"):
        check_files(tls_config(pki, client_cert=pki / "client.pem", client_key=tmp_path / "linked-key.pem"))


# ---- the configuration file -------------------------------------------------------------------------------


def write(tmp_path, settings: dict) -> Path:
    path = tmp_path / "appliance.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_the_section_loads_with_every_key(pki, tmp_path):
    path = write(tmp_path, {"brokers": ["10.0.0.5:9093", "[fd00::5]:9093"], "upstream_tls": {
        "ca_file": str(pki / "ca"), "verify_hostname": True, "min_version": "TLSv1.3",
        "server_names": {"10.0.0.5:9093": "kafka-1.example.com"},
        "client_cert": str(pki / "client.pem"), "client_key": str(pki / "client-key.pem")}})
    tls = load_config(path).upstream_tls
    assert tls.min_version == "TLSv1.3" and tls.client_key == pki / "client-key.pem"
    assert tls.server_name(BrokerAddress.parse("10.0.0.5:9093")) == "kafka-1.example.com"
    assert tls.server_name(BrokerAddress.parse("[fd00::5]:9093")) == "fd00::5"  # its IP SAN
    assert load_config(None).upstream_tls is None  # plaintext unless configured


@pytest.mark.parametrize("section, message", [
    ("yes", "key 'upstream_tls' must be a mapping of TLS settings"),
    ({"ca": "/x"}, "key 'upstream_tls': key 'ca' is not an upstream TLS setting; valid: enabled, ca_file, "),
    ({"min_version": "TLSv1.1"}, "key 'min_version' must be one of TLSv1.2, TLSv1.3, got 'TLSv1.1'"),
    ({"verify_hostname": "no"}, "key 'verify_hostname' must be true or false, got 'no'"),
    ({"ca_file": "ca.pem"}, "key 'ca_file' must be an absolute path to a PEM file, got 'ca.pem'"),
    ({"client_cert": "/etc/c.pem"}, "key 'client_cert' is set but 'client_key' is not: mutual TLS needs both"),
    ({"server_names": {"10.0.0.9:9093": "kafka.example.com"}},
     "key 'server_names' names 10.0.0.9:9093, which is not in 'brokers' (10.0.0.5:9093); name a steered broker"),
    ({"server_names": {"10.0.0.5:9093": "kafka example"}}, "'kafka example' is not a DNS name or IP address"),
    ({"server_names": {"kafka:9093": "kafka.example.com"}}, "'kafka' is not an IP address"),
    ({"server_names": ["kafka.example.com"]}, "key 'server_names' must map broker addresses (as in 'brokers')"),
    ({"ca_file": "/nonexistent/ca.pem"}, "key 'upstream_tls': key 'ca_file': /nonexistent/ca.pem: the CA file does not exist"),
])
def test_a_bad_section_names_the_file_the_key_and_what_is_valid(tmp_path, section, message):
    path = write(tmp_path, {"brokers": ["10.0.0.5:9093"], "upstream_tls": section})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: key 'upstream_tls'") and message in str(e.value), str(e.value)


def test_null_credentials_mean_ssl_without_sasl_and_need_a_client_certificate(pki, tmp_path):
    tls = {"ca_file": str(pki / "ca"), "client_cert": str(pki / "client.pem"), "client_key": str(pki / "client-key.pem")}
    config = load_config(write(tmp_path, {"upstream_credentials": None, "upstream_tls": tls}))
    assert config.upstream_credentials is None and config.upstream_tls.client_cert == pki / "client.pem"
    for section in (None, {"ca_file": str(pki / "ca")}, {**tls, "enabled": False}):
        path = write(tmp_path, {"upstream_credentials": None, "upstream_tls": section})
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert str(e.value) == (f"{path}: key 'upstream_credentials' is null (no SASL), so the brokers must know the "
                                "appliance by a TLS client certificate: set upstream_tls with client_cert and "
                                "client_key, or name a credentials file")


def test_a_disabled_section_checks_no_files():
    config = parse_config({"upstream_tls": {"enabled": False, "ca_file": "/nonexistent/ca.pem"}})
    assert config.upstream_tls.enabled is False and upstream_tls(config.upstream_tls) is None


def test_embedded_broker_tls_listener_ports_are_checked(tmp_path):
    config = parse_config({"embedded_broker": {"tls": {}}})
    assert (config.embedded_broker.tls.port, config.embedded_broker.tls.mtls_port) == (19097, 19099)
    with pytest.raises(ConfigError, match=r"key 'tls' port 19092 is also port4; give each listener a port of its own"):
        parse_config({"embedded_broker": {"tls": {"port": 19092}}})
    with pytest.raises(ConfigError, match=r"key 'port6' must be a port from 1 to 65535, got 0"):
        parse_config({"embedded_broker": {"tls": {"port6": 0}}})
    with pytest.raises(ConfigError, match=r"key 'tls' expired_port 19099 is also 'tls' mtls_port"):
        parse_config({"embedded_broker": {"tls": {"expired_port": 19099}}})


def test_a_host_name_in_a_clusters_answer_names_the_addresses_it_resolves_to_for_tls(pki):
    """Resolving a host name a relayed answer gave (discovery) records that name for each address, so the
    connect to that broker verifies the name its certificate carries."""
    import ipaddress

    from appliance.config import DiscoveryConfig
    from appliance.proxy.discovery import Discovery
    from appliance.proxy.server import ProxyServer
    from tests.proxy.test_server_budget import LIMITS
    from tests.proxy.test_session import ALLOW_ALL

    steered = []
    discovery = Discovery(DiscoveryConfig(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
                          [BrokerAddress("127.0.0.1", 9092)])
    server = ProxyServer(hosts=("127.0.0.1",), port=0, lookup=None, identity_of=lambda cgroup_id: None,
                         credentials=UpstreamCredentials("PLAIN", "appliance", "pw"), policy=lambda: ALLOW_ALL,
                         audit=[].append, max_frame_bytes=1 << 20, limits=LIMITS, max_request_bytes=1 << 20,
                         max_sessions=10, max_sessions_per_workload=10, release_memory=lambda: None,
                         upstream_tls=UpstreamTls.from_config(tls_config(pki)), discovery=discovery,
                         steer=lambda steer, outside: steered.extend(steer))
    assert asyncio.run(server.resolve_brokers((("localhost", 9093),), "s1", "orders")) is None
    assert ("127.0.0.1", 9093) in steered
    assert server.tls.connect_arguments(("127.0.0.1", 9093))["server_hostname"] == "localhost"
    assert server.tls.connect_arguments(("127.0.0.1", 9092))["server_hostname"] == "127.0.0.1"
