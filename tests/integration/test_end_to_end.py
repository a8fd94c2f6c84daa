"""Produce and consume through the appliance with real clients; the audit names who did what."""

from __future__ import annotations

import json
import secrets

from tests.integration.conftest import BROKER4, BROKER6, audit, cli, eventually, java_argv


def topic(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


def produce_rows(config_path, identity, t, *, records):
    """The Produce operations audited for `identity` on topic `t`, once they add up to `records`."""

    def rows():
        ops = [o for o in audit(config_path, "operations", "--identity", identity, "--topic", t) if o["api_name"] == "Produce"]
        return ops if sum(o["records"] for o in ops) >= records else None

    return eventually(rows, message=f"{records} produced records audited for {identity}")


def sessions_of(config_path, identity):
    return audit(config_path, "sessions", "--identity", identity)


def test_confluent_kafka_produce_and_consume_attributed(appliance, config_path, enroll, direct, sasl_args):
    t = topic("orders")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("orders", "payments")
    result = workload.client("confluent.py", BROKER4, t, "--produce", "20", "--consume", "20")
    assert result["errors"] == [] and result["produced"] == 20 and result["consumed"] == 20
    assert sorted(result["values"]) == sorted(f"record-{i}" for i in range(20))

    produce_ops = produce_rows(config_path, "orders", t, records=20)
    assert sum(o["records"] for o in produce_ops) == 20
    assert all(o["pid"] == result["pid"] and o["error_code"] == 0 for o in produce_ops)
    fetched = [o for o in audit(config_path, "operations", "--identity", "orders", "--topic", t) if o["api_name"] == "Fetch"]
    assert sum(o["records"] or 0 for o in fetched) >= 20
    session = next(s for s in sessions_of(config_path, "orders") if s["pid"] == result["pid"])
    assert session["cgroup_path"] == workload.cgroup.path
    assert session["cgroup_id"] == workload.cgroup.id
    assert json.loads(session["groups"]) == ["payments"]
    assert session["broker_address"] == BROKER4
    assert "confluent.py" in session["command"]
    assert session["uid"] == 0


def test_kcat_produce_and_consume(appliance, config_path, enroll, direct, sasl_args):
    t = topic("kcat")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("kcat-job")
    workload.run(["kcat", "-b", BROKER4, "-t", t, "-P"], input="one\ntwo\nthree\n")
    out = workload.run(["kcat", "-b", BROKER4, "-t", t, "-C", "-o", "beginning", "-c", "3", "-e", "-q"]).stdout
    assert out.split() == ["one", "two", "three"]
    ops = produce_rows(config_path, "kcat-job", t, records=3)
    assert sum(o["records"] for o in ops) == 3
    # Other tests may use the identity too: this test's sessions are those of its own cgroup.
    mine = [s for s in sessions_of(config_path, "kcat-job") if s["cgroup_path"] == workload.cgroup.path]
    assert mine and {s["command"].split()[0] for s in mine} == {"kcat"}


def test_java_console_producer_and_consumer(appliance, config_path, enroll, direct, sasl_args, broker):
    t = topic("java")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("java-app")
    java = java_argv(broker, "org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", BROKER4, "--topic", t)
    workload.run(java, input="alpha\nbeta\n", timeout=90)
    java = java_argv(broker, "org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", BROKER4,
                               "--topic", t, "--from-beginning", "--max-messages", "2", "--timeout-ms", "30000")
    out = workload.run(java, timeout=90).stdout
    assert out.split() == ["alpha", "beta"]
    ops = produce_rows(config_path, "java-app", t, records=2)
    assert sum(o["records"] for o in ops) == 2


def test_kafka_python_over_ipv6(appliance, config_path, enroll, direct, sasl_args):
    t = topic("v6")
    direct.client("confluent.py", BROKER6, t, "--create", *sasl_args)
    workload = enroll("v6-app")
    result = workload.client("kafka_python_client.py", BROKER6, t, "5")
    assert result["consumed"] == 5
    sessions = eventually(lambda: sessions_of(config_path, "v6-app"), message="IPv6 session audited")
    assert {s["broker_address"] for s in sessions} == {BROKER6}
    assert all(s["client_address"].startswith("[::1]:") for s in sessions)


def test_workload_sees_the_broker_as_its_peer(appliance, enroll):
    workload = enroll("peer-check")
    for host, port in (("127.0.0.1", 39092), ("::1", 39093)):
        result = workload.client("raw.py", "connect", host, str(port))
        assert result["errno"] == 0 and result["peer"] == [host, port]


def test_workload_sasl_with_unknown_credentials_gets_a_kafka_error_naming_the_cause(appliance, config_path, enroll,
                                                                                   sasl_args):
    # The broker's own credentials are not the workload's to use: the proxy answers SASL itself, and
    # these are not in its migration file.
    workload = enroll("sasl-tryer")
    result = workload.client("confluent.py", BROKER4, "anything", "--produce", "1", "--timeout", "6", *sasl_args,
                             check=False)
    assert result["produced"] == 0 and result["errors"]
    assert any("SCRAM-SHA-512" in e and "OAUTHBEARER" in e for e in result["client_errors"]), result
    ops = eventually(lambda: [o for o in audit(config_path, "operations", "--identity", "sasl-tryer")
                              if o["api_name"] == "SaslHandshake"], message="SASL attempt audited")
    assert ops[0]["outcome"] == "answered-by-proxy" and ops[0]["error_code"] == 0  # the mechanism is offered
    sessions = {o["session_id"] for o in ops}
    refused = eventually(lambda: [a for a in audit(config_path, "authentications", "--outcome", "refused")
                                  if a["session_id"] in sessions], message="refused authentication audited")
    assert "unknown user" in refused[0]["reason"] and refused[0]["mechanism"] == "SCRAM-SHA-512"


def test_appliance_run_attributes_the_command(appliance, config_path, direct, sasl_args):
    t = topic("run")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    result = cli(config_path, "run", "--identity", "ci-job", "--", "kcat", "-b", BROKER4, "-t", t, "-P", "-l", "/etc/hostname")
    assert result.returncode == 0
    ops = eventually(lambda: [o for o in audit(config_path, "operations", "--identity", "ci-job", "--topic", t)
                              if o["api_name"] == "Produce"], message="appliance run produce audited")
    assert ops[0]["records"] >= 1
    # `appliance run` unenrols its cgroup when the command exits (other tests' ci-job enrolments may remain).
    assert not [w for w in json.loads(cli(config_path, "workloads", "--json").stdout)
                if w["identity"] == "ci-job" and w["cgroup_path"].startswith("/appliance-run/")]


def test_audit_sql_is_read_only(appliance, config_path):
    from appliance.audit.store import MIGRATIONS

    rows = json.loads(cli(config_path, "audit", "sql", "SELECT name FROM migrations ORDER BY name", "--json").stdout)
    assert [r["name"] for r in rows] == [name for name, _ in MIGRATIONS]
    refused = cli(config_path, "audit", "sql", "DELETE FROM sessions", check=False)
    assert refused.returncode != 0 and "readonly" in refused.stderr


def test_sessions_take_pre_authenticated_broker_connections_from_the_pool(appliance, config_path, enroll, direct,
                                                                          sasl_args):
    t = topic("orders-pooled")
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    workload = enroll("orders")
    workload.client("confluent.py", BROKER4, t, "--produce", "1")  # a session to this broker fills the pool
    eventually(lambda: appliance.status()["upstream_pool"].get(BROKER4) == 2, message="two pooled connections ready")
    result = workload.client("confluent.py", BROKER4, t, "--produce", "5", "--consume", "6")
    assert result["errors"] == [] and result["produced"] == 5 and result["consumed"] == 6
    later = [s for s in sessions_of(config_path, "orders") if s["pid"] == result["pid"]]
    log = appliance.log.read_text()
    pooled = [s for s in later if f"session {s['session_id']} took a pre-authenticated upstream connection" in log]
    assert pooled, f"no session of pid {result['pid']} used the pool: {later}"
    produce_rows(config_path, "orders", t, records=6)
    shown = cli(config_path, "status").stdout
    assert "upstream pool: " in shown and BROKER4 in shown.split("upstream pool: ")[1].splitlines()[0]
