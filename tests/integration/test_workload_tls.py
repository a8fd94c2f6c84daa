"""A workload configured for TLS (security.protocol=SSL) gets a TLS failure at once and an audited reason.

The appliance takes plaintext Kafka from workloads; a ClientHello read as a
Kafka frame used to be an unexplained close ("malformed frame of size
369295617") that clients retried as a lost broker.
"""

from __future__ import annotations

import re

from tests.integration.clients import build
from tests.integration.clients.families import Client, last_json
from tests.integration.conftest import BROKER4, audit, eventually

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
