"""The workload CA and its per-broker certificates: made once, kept root-only, checked when loaded, short-lived
leaves for the address a workload connected to (memory BIOs only, no sockets)."""

import datetime
import ipaddress
import os
import ssl
import stat
import time

import pytest
from cryptography import x509

from appliance.broker.certificates import Authority
from appliance.config import BrokerAddress
from appliance.proxy.workload_tls import (LEAF_DAYS, CaFiles, WorkloadCaError, WorkloadTls, handshake_failure,
                                          load_or_create, not_after, session_failure)

BROKER = BrokerAddress("10.0.0.5", 9093)


def made(tmp_path):
    files = CaFiles.under(tmp_path)
    authority, new = load_or_create(files, time.time())
    assert new
    return files, authority


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext, name: str):
    """A TLS handshake between two contexts over memory BIOs; (client, server) SSLObjects."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for side, obj, out, peer_in in (("c", client, c_out, s_in), ("s", server, s_out, c_in)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish")


def leaf_of(client: ssl.SSLObject) -> x509.Certificate:
    return x509.load_der_x509_certificate(client.getpeercert(binary_form=True))


def test_the_ca_is_made_once_with_a_root_only_key_and_a_readable_certificate(tmp_path):
    files, authority = made(tmp_path)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.cert.stat().st_mode) == 0o644
    again, new = load_or_create(files, time.time())
    assert not new and again.cert_pem == authority.cert_pem


def test_a_leaf_names_the_broker_address_and_its_dns_name_and_a_client_trusting_the_ca_verifies_both(tmp_path):
    files, authority = made(tmp_path)
    tls = WorkloadTls(authority, names=lambda b: ("kafka-1.example.internal",) if b == BROKER else ())
    now = time.time()
    context = tls.context_for(BROKER, now)
    client_context = ssl.create_default_context(cafile=str(files.cert))
    for name in ("10.0.0.5", "kafka-1.example.internal"):
        client, server = handshake(context, client_context, name)
        assert client.version() in ("TLSv1.2", "TLSv1.3")
    leaf = leaf_of(client)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert sans.get_values_for_type(x509.DNSName) == ["kafka-1.example.internal"]
    assert leaf.issuer == authority.certificate.subject
    assert not_after(leaf) - datetime.datetime.now(datetime.timezone.utc) <= datetime.timedelta(days=LEAF_DAYS)
    assert tls.names_for(BROKER) == ("10.0.0.5", "kafka-1.example.internal")


def test_an_ipv6_broker_gets_an_ipv6_san(tmp_path):
    files, authority = made(tmp_path)
    context = WorkloadTls(authority).context_for(BrokerAddress("::1", 9093), time.time())
    client, _ = handshake(context, ssl.create_default_context(cafile=str(files.cert)), "::1")
    sans = leaf_of(client).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


def test_a_client_that_does_not_trust_the_ca_or_wants_another_name_fails_verification(tmp_path):
    files, authority = made(tmp_path)
    context = WorkloadTls(authority).context_for(BROKER, time.time())
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(context, ssl.create_default_context(), "10.0.0.5")
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(context, ssl.create_default_context(cafile=str(files.cert)), "10.0.0.6")


def test_leaves_are_cached_per_broker_and_renewed_before_they_expire(tmp_path):
    _, authority = made(tmp_path)
    tls = WorkloadTls(authority)
    now = time.time()
    first = tls.context_for(BROKER, now)
    assert tls.context_for(BROKER, now + 3600) is first
    assert tls.context_for(BrokerAddress("10.0.0.6", 9093), now) is not first
    renewed = tls.context_for(BROKER, now + LEAF_DAYS * 86400 - tls.renew_before_s + 1)
    assert renewed is not first and tls.issued == 3


def test_no_leaf_key_is_written_anywhere(tmp_path):
    files, authority = made(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    WorkloadTls(authority).context_for(BROKER, time.time())
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_key_without_its_certificate_or_the_reverse_is_refused_naming_the_file(tmp_path):
    files, _ = made(tmp_path)
    files.cert.unlink()
    with pytest.raises(WorkloadCaError, match=f"{files.cert}: the workload CA's certificate does not exist"):
        load_or_create(files, time.time())
    files2, _ = made(tmp_path / "b")
    files2.key.unlink()
    with pytest.raises(WorkloadCaError, match=f"{files2.key}: the workload CA's key does not exist"):
        load_or_create(files2, time.time())


@pytest.mark.parametrize("fault, match", [
    ("cert-garbage", "workload-ca.pem: is not a PEM certificate"),
    ("key-garbage", "workload-ca.key: is not an unencrypted PEM private key"),
    ("key-loose", "workload-ca.key: has mode 0644, which lets group or others read the CA's private key"),
    ("key-other", "workload-ca.key: is not the key of the certificate"),
    ("not-a-ca", "workload-ca.pem: is not a CA certificate"),
    ("expired", "workload-ca.pem: the workload CA expired at"),
    ("key-symlink", "workload-ca.key: cannot open the workload CA key"),
])
def test_bad_ca_files_are_refused_with_an_error_naming_the_file(tmp_path, fault, match):
    files, authority = made(tmp_path)
    now = time.time()
    if fault == "cert-garbage":
        files.cert.write_text("not a certificate\n")
    elif fault == "key-garbage":
        files.key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    elif fault == "key-loose":
        os.chmod(files.key, 0o644)
    elif fault == "key-other":
        files.key.write_bytes(Authority.create("other", datetime.datetime.now(datetime.timezone.utc)).key_pem())
    elif fault == "not-a-ca":
        leaf = authority.issue("leaf", datetime.datetime.now(datetime.timezone.utc), hosts=("10.0.0.5",))
        files.cert.write_bytes(leaf.cert_pem)
        files.key.write_bytes(leaf.key_pem)
    elif fault == "expired":
        now += 3651 * 86400
    elif fault == "key-symlink":
        real = tmp_path / "real.key"
        files.key.rename(real)
        files.key.symlink_to(real)
    with pytest.raises(WorkloadCaError, match=match):
        load_or_create(files, now)


def test_handshake_failures_say_what_happened_and_what_would_fix_it():
    plaintext = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    plaintext.reason = "WRONG_VERSION_NUMBER"
    assert handshake_failure(plaintext, "10.0.0.5:9093", 10).startswith(
        "workload sent plaintext, not a TLS handshake, but its enrolment terminates TLS")
    distrust = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    distrust.reason = "TLSV1_ALERT_UNKNOWN_CA"
    reason = handshake_failure(distrust, "10.0.0.5:9093", 10)
    assert reason.startswith("workload refused the appliance's certificate for 10.0.0.5:9093")
    assert "appliance workload-ca" in reason
    slow = ConnectionAbortedError("SSL handshake is taking longer than 10.0 seconds: aborting the connection")
    assert handshake_failure(slow, "10.0.0.5:9093", 10) == (
        "workload TLS handshake deadline: not finished within 10 s (connect_timeout_s)")
    assert handshake_failure(ConnectionResetError(104, "reset"), "b", 10).startswith(
        "workload closed the connection in the TLS handshake with b")
    huge = ssl.SSLError(1, "[SSL: EXCESSIVE_MESSAGE_SIZE] excessive message size")
    huge.reason = "EXCESSIVE_MESSAGE_SIZE"
    assert handshake_failure(huge, "b", 10).startswith("workload TLS handshake with b failed: EXCESSIVE_MESSAGE_SIZE")
    bad_mac = ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed or bad record mac")
    bad_mac.reason = "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"
    assert session_failure(bad_mac).startswith("workload's TLS connection failed: DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
