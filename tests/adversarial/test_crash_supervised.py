"""`appliance serve --supervise` after kill -9 of its child: refused meanwhile, serving again within seconds.

Issue 9 ("Nothing restarts serve", and defect B): a crash left the appliance
down for good, and what the kernel did meanwhile let a local user take the
traffic. Under supervision the child is restarted at once; while it is down
every enrolled connect is refused (never accepted-and-closed, never direct,
never delivered to the unprivileged process squatting on the proxy's port),
and the new child takes the stale kernel state over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import PY, STATE, audit, cli, eventually

HERE = Path(__file__).resolve().parent
TRY = str(HERE / "clients" / "kafka_try.py")


def serving_child(config, supervisor: subprocess.Popen, not_pid: int | None = None, cgroup_id: int | None = None):
    try:
        status = json.loads(config.status_file.read_text())
    except (OSError, ValueError):
        return None
    pid = status.get("pid")
    if pid in (supervisor.pid, not_pid) or not Path(f"/proc/{pid}").exists():
        return None
    if cgroup_id is not None and cgroup_id not in {w["cgroup_id"] for w in status["workloads"]}:
        return None
    return pid


def gone(pid: int) -> bool:
    """Exited (its sockets closed): no /proc entry, or a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_a_supervised_appliance_is_back_within_seconds_and_nothing_gets_through_meanwhile(
        appliance, config_path, config, make_cgroup):
    from appliance.steering.loader import attached_programs

    workload = make_cgroup("supervised")
    cli(config_path, "enroll", workload.cgroup.path, "--identity", "supervised")
    appliance.stop()  # the session's appliance makes way for a supervised one with the same configuration
    log = open(STATE / "serve-supervised.log", "ab")
    supervisor = subprocess.Popen([PY, "-m", "appliance", "--config", str(config_path), "serve", "--supervise"],
                                  stdout=log, stderr=subprocess.STDOUT)
    squatter = None
    try:
        first = eventually(lambda: serving_child(config, supervisor, cgroup_id=workload.cgroup.id), timeout=30,
                           message="the supervised child serving")
        assert workload.client(TRY, "once", "127.0.0.1", "39092")["outcome"] == "answered"

        tries = workload.popen([PY, TRY, "loop", "127.0.0.1", "39092", "8"])
        time.sleep(1.0)
        os.kill(first, signal.SIGKILL)
        killed_at = eventually(lambda: gone(first) and time.time(), timeout=10, interval=0.001,
                               message="the child dead")  # connections it held die with it: start counting here
        squatter = subprocess.Popen([PY, str(HERE / "clients" / "squat.py"), "127.0.0.1", "39190", "6"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = tries.communicate(timeout=60)
        attempts = [json.loads(line) for line in out.strip().splitlines()[:-1]]
        second = serving_child(config, supervisor, not_pid=first)
        assert second, "the supervisor did not restart the child"

        after = [a for a in attempts if a["at"] > killed_at]
        # A reset lets nothing through either. It is the kernel's answer to a connection that was in the
        # killed child's accept queue, or accepted with its request unread, when the child's sockets were
        # closed (TCP sends RST, not FIN, for both; checked with a plain listener). An attempt is stamped
        # when it ends, so one that connected just before the kill can end, reset, just after it.
        assert {a["outcome"] for a in after} <= {"refused", "answered", "reset"}, [
            a for a in after if a["outcome"] not in ("refused", "answered", "reset")]
        refused = [a for a in after if a["outcome"] == "refused"]
        answered = [a for a in after if a["outcome"] == "answered"]
        assert refused and answered, after
        assert max(a["at"] for a in refused) < min(a["at"] for a in answered)  # refused, then served again
        back_s = min(a["at"] for a in answered) - killed_at
        print(f"supervised restart: first session answered {back_s:.2f} s after kill -9 "
              f"({len(refused)} connects refused meanwhile)")
        assert back_s < 5.0
        assert all(a["connect_s"] < 1.0 for a in refused)

        squat_out, _ = squatter.communicate(timeout=30)
        assert json.loads(squat_out.strip().splitlines()[-1]) == {"received": []}
        served = eventually(lambda: [s for s in audit(config_path, "sessions", "--identity", "supervised")
                                     if s["started_at"] > killed_at], message="sessions of the new child audited")
        assert {s["pid"] for s in served} == {attempts[0]["pid"]}
    finally:
        if squatter is not None and squatter.poll() is None:
            squatter.kill()
            squatter.wait()
        supervisor.send_signal(signal.SIGTERM)
        rc = supervisor.wait(60)
        log.close()
        left = [p for p in attached_programs() if p["bpffs_dir"] in (str(config.bpffs_dir), None)]
        cli(config_path, "unenroll", workload.cgroup.path, check=False)
        appliance.start()
    assert rc == 0, (STATE / "serve-supervised.log").read_text()[-3000:]
    assert left == [], "a supervised stop leaves no program attached"
