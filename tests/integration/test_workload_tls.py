"""A workload configured for TLS (security.protocol=SSL): refused at once with an audited reason, or, enrolled
with --workload-tls terminate, answered by the appliance with a certificate from its workload CA.

By default the appliance takes plaintext Kafka from workloads; a ClientHello read as a Kafka frame used to
be an unexplained close ("malformed frame of size 369295617") that clients retried as a lost broker.
Terminated, every client family produces and consumes through the appliance trusting only the workload CA.
"""

from __future__ import annotations

import json
import re
import secrets
import stat
import time
from pathlib import Path

from tests.integration.clients import build
from tests.integration.clients.families import Client, last_json
from tests.integration.conftest import BROKER4, audit, cli, eventually

REASON = "workload started a TLS handshake"


def tls_closes(config_path, identity: str) -> list[dict]:
    return [s for s in audit(config_path, "sessions", "--identity", identity)
            if (s.get("close_reason") or "").startswith(REASON)]


def test_librdkafka_over_tls_is_told_the_handshake_failed(appliance, config_path, enroll):
    workload = enroll("tls-librdkafka")
    result = workload.client("confluent.py", BROKER4, "anything", "--produce", "1", "--timeout", "5", "--tls",
                             check=False)
    assert result["produced"] == 0
    assert any("SSL handshake failed" in e for e in result["client_errors"]), result["client_errors"]
    closes = eventually(lambda: tls_closes(config_path, "tls-librdkafka"), message="TLS refusal audited")
    assert "security.protocol to PLAINTEXT" in closes[0]["close_reason"]


def test_kcat_over_tls_fails_at_once(appliance, config_path, enroll):
    workload = enroll("tls-kcat")
    proc = workload.popen(["kcat", "-b", BROKER4, "-L", "-m", "5", "-X", "security.protocol=ssl",
                           "-X", "enable.ssl.certificate.verification=false"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "SSL handshake failed" in err or "handshake failure" in err, err
    eventually(lambda: tls_closes(config_path, "tls-kcat"), message="TLS refusal audited")


def test_java_client_over_tls_fails_and_is_audited(appliance, config_path, enroll):
    workload = enroll("tls-java")
    argv = build.java_argv("--config", "security.protocol=SSL", "--config", "ssl.endpoint.identification.algorithm=",
                           "metadata", BROKER4, "6000")
    result = Client(workload, argv, timeout=30, parse=last_json).finish()
    assert not result.summary.get("topics"), result.summary
    assert any(re.search(r"(?i)ssl|handshake", e) for e in result.summary.get("errors", [])), result.summary
    eventually(lambda: tls_closes(config_path, "tls-java"), message="TLS refusal audited")


# --- Workload TLS terminated by the appliance (enroll --workload-tls terminate, docs/tls.md) -------------

def workload_ca(config_path) -> str:
    """The workload CA certificate's path, as an operator finds it."""
    return cli(config_path, "workload-ca").stdout.strip()


def topic(name: str) -> str:
    return f"idp-wtls-{name}-{secrets.token_hex(3)}"  # the payments group may use idp-* topics


def terminated(config_path, identity: str) -> list[dict]:
    return [e for e in audit(config_path, "events", "--kind", "workload-tls", "--identity", identity)]


def assert_audited(config_path, identity: str, pid: int | None = None) -> None:
    events = eventually(lambda: terminated(config_path, identity), message=f"{identity}'s TLS termination audited")
    detail = json.loads(events[0]["detail"])
    assert detail["version"] in ("TLSv1.2", "TLSv1.3") and detail["cipher"], detail
    assert detail["names"][0] == BROKER4.rsplit(":", 1)[0]
    sessions = audit(config_path, "sessions", "--identity", identity)
    assert {e["session_id"] for e in events} <= {s["session_id"] for s in sessions}
    if pid is not None:
        assert any(s["pid"] == pid for s in sessions), sessions


def test_workload_ca_is_a_readable_certificate_with_a_root_only_key(appliance, config_path):
    cert = Path(workload_ca(config_path))
    described = json.loads(cli(config_path, "workload-ca", "--json").stdout)
    assert described["certificate"] == str(cert)
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert stat.S_IMODE(Path(described["key"]).stat().st_mode) == 0o600
    assert cli(config_path, "workload-ca", "--pem").stdout == cert.read_text()


def test_librdkafka_produces_and_consumes_over_terminated_tls(appliance, config_path, enroll, direct, sasl_args):
    t = topic("rdkafka")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("tls-term-rdkafka", "payments", workload_tls="terminate")
    result = workload.client("confluent.py", BROKER4, t, "--produce", "5", "--consume", "5", "--tls",
                             "--ca", workload_ca(config_path), "--group", f"idp-{t}")
    assert result["errors"] == [] and result["produced"] == 5 and result["consumed"] == 5, result
    assert_audited(config_path, "tls-term-rdkafka", result["pid"])
    produced = eventually(lambda: [o for o in audit(config_path, "operations", "--identity", "tls-term-rdkafka",
                                                    "--topic", t) if o["api_name"] == "Produce"],
                          message="produce audited under the enrolment's identity")
    assert sum(o["records"] for o in produced) == 5


def test_kcat_produces_and_consumes_over_terminated_tls(appliance, config_path, enroll, direct, sasl_args):
    t = topic("kcat")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("tls-term-kcat", "payments", workload_tls="terminate")
    tls = ["-X", "security.protocol=ssl", "-X", f"ssl.ca.location={workload_ca(config_path)}"]
    workload.run(["kcat", "-b", BROKER4, "-t", t, "-P", *tls], input="one\ntwo\nthree\n")
    out = workload.run(["kcat", "-b", BROKER4, "-t", t, "-C", "-o", "beginning", "-c", "3", "-e", "-q", *tls]).stdout
    assert out.split() == ["one", "two", "three"]
    assert_audited(config_path, "tls-term-kcat")


def test_java_client_produces_and_consumes_over_terminated_tls(appliance, config_path, enroll, direct, sasl_args):
    t = topic("java")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("tls-term-java", "payments", workload_tls="terminate")
    tls = ["--config", "security.protocol=SSL", "--config", "ssl.truststore.type=PEM",
           "--config", f"ssl.truststore.location={workload_ca(config_path)}"]
    produced = Client(workload, build.java_argv(*tls, "produce", BROKER4, t, "5", "java-%d", "20000"),
                      timeout=60, parse=last_json).finish().summary
    assert produced["acked"] == 5 and not produced["errors"], produced
    consumed = Client(workload, build.java_argv(*tls, "consume", BROKER4, t, f"idp-wtls-{t}", "5", "classic",
                                                "30000"), timeout=60, parse=last_json).finish().summary
    assert sorted(consumed["values"]) == [f"java-{i}" for i in range(5)], consumed
    assert_audited(config_path, "tls-term-java")


def test_kafka_python_produces_and_consumes_over_terminated_tls(appliance, config_path, enroll, direct, sasl_args):
    t = topic("kafka-python")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("tls-term-kafka-python", "payments", workload_tls="terminate")
    result = workload.client("kafka_python_client.py", BROKER4, t, "5", workload_ca(config_path))
    assert result["consumed"] == 5 and sorted(result["values"]) == [f"kp-{i}" for i in range(5)], result
    assert_audited(config_path, "tls-term-kafka-python", result["pid"])


def test_franz_go_produces_and_consumes_over_terminated_tls(appliance, config_path, enroll, direct, sasl_args):
    t = topic("franz")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("tls-term-franz", "payments", workload_tls="terminate")
    franz = str(build.franz_binary())
    ca = ["-tls-ca", workload_ca(config_path)]
    produced = Client(workload, [franz, "produce", "-brokers", BROKER4, "-topic", t, "-n", "5", "-value", "franz-%d",
                                 "-timeout", "30s", *ca], timeout=40, parse=last_json).finish().summary
    assert produced["acked"] == 5, produced
    consumed = Client(workload, [franz, "consume", "-brokers", BROKER4, "-topic", t, "-group", f"idp-wtls-{t}",
                                 "-n", "5", "-timeout", "30s", *ca], timeout=40, parse=last_json).finish().summary
    assert sorted(consumed["values"]) == [f"franz-{i}" for i in range(5)], consumed
    assert_audited(config_path, "tls-term-franz")


def test_sasl_ssl_presents_static_credentials_inside_terminated_tls(appliance, config_path, enroll, direct, sasl_args):
    t = topic("sasl-ssl")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("tls-term-sasl", auth="token", workload_tls="terminate")
    result = workload.client("confluent.py", BROKER4, t, "--produce", "3", "--consume", "3", "--tls",
                             "--ca", workload_ca(config_path), "--sasl", "PLAIN:legacy-plain:legacy-plain-pw",
                             "--group", f"idp-{t}")
    assert result["errors"] == [] and result["produced"] == 3 and result["consumed"] == 3, result
    eventually(lambda: terminated(config_path, "tls-term-sasl"), message="TLS termination audited")
    produced = eventually(lambda: [o for o in audit(config_path, "operations", "--identity", "legacy", "--topic", t)
                                   if o["api_name"] == "Produce"], message="produce audited as the SASL identity")
    assert sum(o["records"] for o in produced) == 3


def closes_starting(config_path, identity: str, *prefixes: str) -> list[dict]:
    return [s for s in audit(config_path, "sessions", "--identity", identity)
            if (s.get("close_reason") or "").startswith(prefixes)]


def test_a_client_that_does_not_trust_the_workload_ca_fails_verification(appliance, config_path, enroll):
    workload = enroll("tls-term-distrust", "payments", workload_tls="terminate")
    result = workload.client("confluent.py", BROKER4, topic("distrust"), "--produce", "1", "--timeout", "5",
                             "--tls", "--ca", "/etc/ssl/certs/ca-certificates.crt", check=False)
    assert result["produced"] == 0
    assert any("certificate verify failed" in e for e in result["client_errors"]), result["client_errors"]
    closes = eventually(lambda: closes_starting(config_path, "tls-term-distrust",
                                                "workload refused the appliance's certificate",
                                                "workload closed the connection in the TLS handshake"),
                        message="the refused certificate audited")
    assert "appliance workload-ca" in closes[0]["close_reason"]


def test_a_plaintext_client_on_a_terminate_enrolment_gets_an_audited_close(appliance, config_path, enroll):
    workload = enroll("tls-term-plain", "payments", workload_tls="terminate")
    started = time.monotonic()
    result = workload.client("confluent.py", BROKER4, topic("plain"), "--produce", "1", "--timeout", "5", check=False)
    assert result["produced"] == 0 and time.monotonic() - started < 30
    closes = eventually(lambda: closes_starting(config_path, "tls-term-plain", "workload sent plaintext"),
                        message="the plaintext client's close audited")
    assert "security.protocol to SSL" in closes[0]["close_reason"]


def test_garbage_after_the_handshake_and_a_huge_handshake_record_close_that_session_only(appliance, config_path,
                                                                                         enroll):
    workload = enroll("tls-term-attacker", "payments", workload_tls="terminate")
    host, port = BROKER4.rsplit(":", 1)
    result = workload.client("tls_attack.py", host, port, workload_ca(config_path))
    assert result["first_answer"] > 0 and result["second_answer"] > 0, result  # the good session went on
    assert result["garbage"] in ("closed", "reset") and result["huge"] in ("closed", "reset"), result
    eventually(lambda: closes_starting(config_path, "tls-term-attacker", "workload's TLS connection failed"),
               message="the garbage record's close audited")
    huge = eventually(lambda: closes_starting(config_path, "tls-term-attacker", "workload TLS handshake with"),
                      message="the oversized handshake's close audited")
    assert "EXCESSIVE_MESSAGE_SIZE" in huge[0]["close_reason"]
    assert appliance.proc.poll() is None
