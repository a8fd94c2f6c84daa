"""Defect G of issue 9: the audit fails closed, says so, and leaves a gap marker; an unclean stop is recorded.

At 753e6e2, with the state directory on a full disk, 114,571 of 179,312
acknowledged produces were forwarded with no audit row, with nothing but
ERROR lines to show for it, and no gap marker once space came back; sessions
open at a kill -9 stayed without an end. Here the audit database lives on a
16 MiB tmpfs the test mounts (`audit_dir`) and then fills.
"""

from __future__ import annotations

import errno
import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tests.adversarial.reconfigured import enroll_in, hostile, line, reconfigured
from tests.integration.conftest import BROKER4, CLIENTS, PY, audit, cli, eventually

pytestmark = pytest.mark.integration  # real serve, real broker: run under the shared lock

MOUNT = Path("/mnt/appliance-test-audit")
STORAGE_ERROR = 56  # KAFKA_STORAGE_ERROR


@pytest.fixture(scope="module")
def small_disk(prerequisites):
    MOUNT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["umount", str(MOUNT)], capture_output=True)  # a run that died before its teardown
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "appliance-test-audit", str(MOUNT)], check=True)
    yield MOUNT
    subprocess.run(["umount", str(MOUNT)], check=True)


@pytest.fixture(scope="module")
def audited(appliance, small_disk):
    with reconfigured(appliance, "audit-disk", audit_dir=str(small_disk)) as app:
        yield app


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return filler


def produce(cg, topic: str) -> dict:
    proc = hostile(cg, "produce", "127.0.0.1", "39092", topic)
    return line(proc, timeout=30)


def test_a_full_audit_disk_refuses_requests_says_so_and_leaves_a_gap(audited, make_cgroup, direct, sasl_args):
    topic = f"audited-{secrets.token_hex(3)}"
    direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    steady = enroll_in(audited, make_cgroup, "steady")
    assert produce(steady, topic) == {"error_code": 0, "error_message": None}
    filler = fill(MOUNT)

    # The first requests after the disk filled are forwarded; the commit of their records fails, and from
    # then on every request is refused with the reason until the audit writes again.
    def refused():
        answer = produce(steady, topic)
        return answer if answer["error_code"] == STORAGE_ERROR else None
    answer = eventually(refused, timeout=30, interval=0.2, message="produce refused while the audit cannot write")
    assert "cannot write its audit" in answer["error_message"] and "disk is full" in answer["error_message"]
    status = eventually(lambda: (audited.status() or {}).get("audit", {}).get("failing") and audited.status(),
                        message="status says the audit is failing")
    assert status["audit"]["state"] == "failing" and status["audit"]["lost"] > 0
    assert "audit: FAILING since" in cli(audited.config_path, "status").stdout
    assert "AUDIT FAILING" in audited.log.read_text()

    # librdkafka retries KAFKA_STORAGE_ERROR: records produced during the outage are delivered once it ends.
    producer = steady.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, topic, "--produce", "50", "--timeout", "40"])
    time.sleep(3)
    filler.unlink()
    out, err = producer.communicate(timeout=60)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["produced"] == 50 and summary["errors"] == [], (summary, err[-2000:])

    gaps = eventually(lambda: audit(audited.config_path, "gaps"), message="a gap marker once space returned")
    assert gaps[0]["records_lost"] > 0 and "database or disk is full" in gaps[0]["reason"], gaps
    assert gaps[0]["started_at"] <= gaps[0]["ended_at"]
    failing_events = audit(audited.config_path, "events", "--kind", "audit-failing")
    assert failing_events and "new requests are refused with KAFKA_STORAGE_ERROR" in failing_events[0]["message"]
    assert audit(audited.config_path, "events", "--kind", "audit-recovered")
    eventually(lambda: audited.status()["audit"]["state"] == "ok", message="status says the audit writes again")
    print(json.dumps({"gap": gaps[0], "lost": audited.status()["audit"]["lost"]}))


def test_kill_9_then_restart_records_the_unclean_stop_and_closes_its_sessions(audited, make_cgroup):
    holder_cg = enroll_in(audited, make_cgroup, "crash-witness")
    holder = hostile(holder_cg, "idle", "127.0.0.1", "39092", "2", "--forever")
    assert line(holder)["answered"] == 2
    eventually(lambda: len([s for s in audit(audited.config_path, "sessions")
                            if s["cgroup_path"] == holder_cg.cgroup.path]) == 2,
               message="both sessions in the audit")
    killed = audited.proc.pid
    audited.kill()
    holder.kill()
    assert (MOUNT / "serve.running").exists()
    audited.start()
    (event,) = eventually(lambda: [e for e in audit(audited.config_path, "events", "--kind", "unclean-stop")
                                   if e["pid"] == killed], message="unclean-stop event")
    assert json.loads(event["detail"])["sessions_closed"] >= 2
    sessions = [s for s in audit(audited.config_path, "sessions") if s["cgroup_path"] == holder_cg.cgroup.path]
    assert len(sessions) == 2
    assert all(s["ended_at"] is not None and s["close_reason"].startswith(f"appliance stopped uncleanly (pid {killed}")
               for s in sessions), sessions
    assert json.loads((MOUNT / "serve.running").read_text())["pid"] == audited.proc.pid


def test_audit_failure_forward_goes_on_unaudited_and_still_says_so(audited, make_cgroup, direct, sasl_args):
    import yaml

    from appliance.config import load_config
    from tests.integration.conftest import STATE, ApplianceProcess

    topic = f"unaudited-{secrets.token_hex(3)}"
    direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    settings = yaml.safe_load(audited.config_path.read_text())
    path = STATE / "appliance-audit-forward.yaml"
    path.write_text(yaml.safe_dump({**settings, "audit_failure": "forward"}))
    audited.stop()
    forwarding = ApplianceProcess(path, load_config(path))
    forwarding.start()
    try:
        steady = enroll_in(forwarding, make_cgroup, "steady")
        gaps_before = len(audit(path, "gaps"))
        filler = fill(MOUNT)
        for _ in range(20):  # until a commit has failed: the audit is failing
            assert produce(steady, topic)["error_code"] == 0  # forwarded all the same, as chosen
            if (forwarding.status() or {}).get("audit", {}).get("failing"):
                break
            time.sleep(0.3)
        status = eventually(lambda: (forwarding.status() or {}).get("audit", {}).get("failing") and forwarding.status(),
                            message="status says the audit is failing")
        assert status["audit"]["audit_failure"] == "forward"
        assert produce(steady, topic)["error_code"] == 0
        assert "requests forwarded unaudited (audit_failure: forward)" in cli(path, "status").stdout
        filler.unlink()
        eventually(lambda: forwarding.status()["audit"]["state"] == "ok", message="the audit writes again")
        eventually(lambda: len(audit(path, "gaps")) > gaps_before,
                   message="the records forwarded unaudited counted in a new gap")
    finally:
        (MOUNT / "filler").unlink(missing_ok=True)
        forwarding.stop()
        audited.start()
