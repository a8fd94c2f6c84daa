"""Nothing reaches a steered broker around the appliance: refusals, unenrolment, crashes, bad frames."""

from __future__ import annotations

import errno
import json
import secrets
import time

from tests.integration.conftest import BROKER4, CLIENTS, PY, audit, cli, eventually


def test_unenrolled_cgroup_cannot_reach_the_broker(appliance, config_path, make_cgroup):
    outsider = make_cgroup("outsider")
    pids = set()
    for host, port in (("127.0.0.1", 39092), ("::1", 39093)):
        result = outsider.client("raw.py", "connect", host, str(port))
        assert result["errno"] == errno.ECONNREFUSED, result
        pids.add(result["pid"])

    def refusals():
        rows = [e for e in audit(config_path, "events", "--kind", "refused-connect")
                if e["cgroup_path"] == outsider.cgroup.path]
        return rows if len(rows) >= 2 else None

    events = eventually(refusals, message="both refusals audited")
    assert {e["pid"] for e in events} == pids
    assert len(events) == 2
    assert {json.loads(e["detail"])["destination"] for e in events} == {"127.0.0.1:39092", "[::1]:39093"}
    workloads = {w["cgroup_id"]: w for w in appliance.status()["exempt"]}
    assert all(w["refused"] == 0 for w in workloads.values())
    # Status is a snapshot written once a second: read one written after both refusals were audited.
    assert appliance.fresh_status()["counters"].get(str(outsider.cgroup.id)) == {"steered": 0, "refused": 2}


def test_other_destinations_are_left_alone(appliance, make_cgroup):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    outsider = make_cgroup("elsewhere")
    result = outsider.client("raw.py", "connect", "127.0.0.1", str(listener.getsockname()[1]))
    listener.close()
    assert result["errno"] == 0


def test_garbage_frame_closes_one_session_while_another_keeps_producing(appliance, config_path, enroll, direct, sasl_args):
    t = f"steady-{secrets.token_hex(3)}"
    direct.client("confluent.py", BROKER4, t, "--create", *sasl_args)
    steady = enroll("steady")
    rogue = enroll("rogue")
    producer = steady.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, t, "--produce", "3000"])
    for _ in range(3):
        garbage = rogue.client("raw.py", "garbage", "127.0.0.1", "39092")
        assert garbage["errno"] == 0 and garbage.get("read", 0) == 0  # closed by the proxy, nothing answered
    out, err = producer.communicate(timeout=60)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["produced"] == 3000 and summary["errors"] == []
    def rogue_closed():  # this test's rogue sessions: other tests may use the identity too
        return [s for s in audit(config_path, "sessions", "--identity", "rogue")
                if s["close_reason"] and s["cgroup_path"] == rogue.cgroup.path]

    closed = eventually(lambda: rogue_closed()[2:] and rogue_closed(), message="three rogue sessions closed and audited")
    assert len(closed) == 3
    assert all("malformed frame from client: frame size 2147483647" in s["close_reason"] for s in closed)
    assert all(s["close_reason"] is None or "malformed" not in s["close_reason"]
               for s in audit(config_path, "sessions", "--identity", "steady") if s["cgroup_path"] == steady.cgroup.path)


def test_unenrol_closes_a_live_session_and_refuses_new_connects(appliance, config_path, enroll):
    workload = enroll("leaving")
    holder = workload.popen([PY, str(CLIENTS / "raw.py"), "hold", "127.0.0.1", "39092"])
    assert json.loads(holder.stdout.readline()) == {"ready": True}
    eventually(lambda: [s for s in appliance.status()["sessions"] if s["identity"] == "leaving"],
               message="live session visible in status")
    started = time.monotonic()
    cli(config_path, "unenroll", workload.cgroup.path)
    out, _ = holder.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    assert result.get("read", 0) == 0 or "read_error" in result
    assert time.monotonic() - started < 5
    session = eventually(lambda: [s for s in audit(config_path, "sessions", "--identity", "leaving") if s["ended_at"]],
                         message="session closed in the audit")[0]
    assert session["close_reason"] == "workload leaving was unenrolled"
    again = workload.client("raw.py", "connect", "127.0.0.1", "39092")
    assert again["errno"] == errno.ECONNREFUSED
    assert [e for e in audit(config_path, "events", "--kind", "unenroll") if e["identity"] == "leaving"]


def test_with_the_appliance_down_an_enrolled_workload_is_refused_not_sent_direct(appliance, config, enroll):
    from appliance.steering.loader import attached_programs

    def ours():  # another appliance (make run, a benchmark) may be attached beside the test one
        return [p for p in attached_programs() if p["bpffs_dir"] in (str(config.bpffs_dir), None)]

    workload = enroll("crash-witness")
    appliance.kill()  # kill -9: no chance to detach
    try:
        for host, port in (("127.0.0.1", 39092), ("::1", 39093)):
            result = workload.client("raw.py", "connect", host, str(port))
            assert result["errno"] == errno.ECONNREFUSED, result
        assert ours(), "a killed appliance leaves its programs attached, so steering still holds"
    finally:
        appliance.start()
    names = sorted(p["name"] for p in ours())
    assert len(names) == len(set(names)), f"restart attached a second set: {names}"
    result = workload.client("raw.py", "connect", "127.0.0.1", "39092")
    assert result["errno"] == 0 and result["peer"] == ["127.0.0.1", 39092]
