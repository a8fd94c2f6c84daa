"""A hand-off record is never given to another socket: the netns record-claim attack fails.

Defect C of issue 9: the kernel's hand-off record was keyed by the client's
address and port only. An enrolled process in its own network namespace
left a record the proxy never took (its connect landed on a listener of its
own namespace); a host process outside any enrolled cgroup then bound the
same address and port, connected to the proxy and got a session as that
identity, and the audit blamed the other process.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

from tests.integration.conftest import PY, audit, eventually

HERE = Path(__file__).resolve().parent
TRY = str(HERE / "clients" / "kafka_try.py")


def test_a_host_process_cannot_claim_the_record_of_a_workload_in_another_namespace(appliance, config_path, enroll,
                                                                                  make_cgroup):
    workload = enroll("ns-victim")
    trap = workload.popen(["unshare", "--net", PY, str(HERE / "clients" / "netns_trap.py"), "39190", "39092", "8"])
    left = json.loads(trap.stdout.readline() or "{}")
    assert "errno" in left, trap.stderr.read()

    claimer = make_cgroup("claimer")  # in no enrolled cgroup, in the host's namespace
    claim = claimer.client(TRY, "once", "127.0.0.1", "39190", "--bind-port", str(left.get("local_port", 0)))
    assert claim["outcome"] in ("closed", "reset"), claim  # the proxy found no record: no session
    assert left["errno"] == errno.ECONNREFUSED, left  # and none was left: steering refused the other namespace

    refused = eventually(lambda: [e for e in audit(config_path, "events", "--kind", "refused-session")
                                  if f":{claim['local'][1]} " in e["message"]], message="the claim refused and audited")
    assert "not steered by the kernel" in refused[0]["message"]
    (netns,) = eventually(lambda: [e for e in audit(config_path, "events", "--kind", "refused-connect")
                                   if e["cgroup_path"] == workload.cgroup.path], message="the netns connect audited")
    assert json.loads(netns["detail"])["reason"] == "foreign_netns"
    assert audit(config_path, "sessions", "--identity", "ns-victim") == []
    trap.kill()
