"""The embedded broker's TLS listeners as server.properties says them, and the PEM files made for them."""

from __future__ import annotations

import datetime
import stat
from dataclasses import replace

from cryptography import x509

from appliance.broker.credentials import UpstreamCredentials
from appliance.broker.properties import BrokerFiles, server_properties, tls_listeners
from appliance.broker.storage import ensure_tls_files
from appliance.config import EmbeddedBrokerConfig, EmbeddedTlsConfig, UpstreamTlsConfig
from appliance.proxy.upstream_tls import check_files

NOW = datetime.datetime.now(datetime.timezone.utc)
TLS = EmbeddedTlsConfig(port=26097, port6=26098, mtls_port=26099, cert_port=26102, expired_port=26100)


def properties(config: EmbeddedBrokerConfig, files: BrokerFiles) -> dict[str, str]:
    text = server_properties(config, files, appliance=UpstreamCredentials("SCRAM-SHA-512", "appliance", "a"),
                             intruder=UpstreamCredentials("SCRAM-SHA-512", "intruder", "i"), node_password="n")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_without_tls_the_listeners_are_unchanged(tmp_path):
    props = properties(EmbeddedBrokerConfig(data_dir=tmp_path), BrokerFiles(tmp_path))
    assert "SSL" not in props["listener.security.protocol.map"]
    assert not [k for k in props if ".ssl." in k]


def test_tls_listeners_are_sasl_ssl_with_pem_keystores_and_mtls_demands_a_client_certificate(tmp_path):
    config = EmbeddedBrokerConfig(data_dir=tmp_path, tls=TLS)
    files = BrokerFiles(tmp_path)
    props = properties(config, files)
    assert {n: str(a) for n, a in tls_listeners(config).items()} == {
        "TLS": "127.0.0.1:26097", "TLS6": "[::1]:26098", "MTLS": "127.0.0.1:26099", "CERT": "127.0.0.1:26102",
        "EXPIRED": "127.0.0.1:26100"}
    assert "TLS://127.0.0.1:26097" in props["listeners"] and "TLS6://[::1]:26098" in props["advertised.listeners"]
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    assert protocols == {"CLIENT": "SASL_PLAINTEXT", "CLIENT6": "SASL_PLAINTEXT", "TLS": "SASL_SSL",
                         "TLS6": "SASL_SSL", "MTLS": "SASL_SSL", "CERT": "SSL", "EXPIRED": "SASL_SSL",
                         "INTERNAL": "SASL_PLAINTEXT", "CONTROLLER": "SASL_PLAINTEXT"}
    assert props["listener.name.tls.ssl.keystore.type"] == "PEM"
    assert props["listener.name.tls.ssl.keystore.location"] == str(files.server_keystore)
    assert props["listener.name.expired.ssl.keystore.location"] == str(files.expired_keystore)
    assert props["listener.name.mtls.ssl.client.auth"] == "required"
    assert props["listener.name.mtls.ssl.truststore.location"] == str(files.ca_cert)
    assert "listener.name.tls.ssl.client.auth" not in props
    assert props["listener.name.mtls.sasl.enabled.mechanisms"] == "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"
    # CERT: no SASL; the client certificate's subject is the principal, and a super user
    assert props["listener.name.cert.ssl.client.auth"] == "required"
    assert not [k for k in props if k.startswith("listener.name.cert.") and "sasl" in k]
    assert "User:CN=appliance" in props["super.users"].split(";")
    no_extras = replace(config, host6="", tls=EmbeddedTlsConfig(mtls_port=0, cert_port=0))
    assert list(tls_listeners(no_extras)) == ["TLS"]


def test_the_files_are_private_the_ca_is_kept_and_the_appliance_accepts_them(tmp_path):
    config = EmbeddedBrokerConfig(data_dir=tmp_path, tls=TLS)
    files = BrokerFiles(tmp_path)
    ensure_tls_files(files, config, NOW)
    for private in (files.ca_key, files.server_keystore, files.expired_keystore, files.client_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert stat.S_IMODE(files.ca_cert.stat().st_mode) == 0o644
    server = x509.load_pem_x509_certificate(files.server_keystore.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    expired = x509.load_pem_x509_certificate(files.expired_keystore.read_bytes())
    assert expired.not_valid_after < NOW.replace(tzinfo=None)
    # what the appliance would be configured with passes its own checks
    check_files(UpstreamTlsConfig(ca_file=files.ca_cert, client_cert=files.client_cert, client_key=files.client_key))
    ca = files.ca_cert.read_bytes()
    ensure_tls_files(files, config, NOW)
    assert files.ca_cert.read_bytes() == ca, "a restart keeps the CA a running appliance trusts"
    assert x509.load_pem_x509_certificate(files.server_keystore.read_bytes()).serial_number != server.serial_number


def test_status_names_the_tls_listeners_and_the_ca(tmp_path):
    from appliance.broker.embedded import EmbeddedBroker

    status = EmbeddedBroker(EmbeddedBrokerConfig(data_dir=tmp_path, tls=TLS)).status()
    assert dict(status.tls_listeners)["MTLS"] == "127.0.0.1:26099" and status.tls_ca == tmp_path / "tls" / "ca.pem"
    assert EmbeddedBroker(EmbeddedBrokerConfig(data_dir=tmp_path)).status().tls_listeners == ()
