"""`make run` runs `appliance demo`: it must start everything, show traffic, a refusal and a held operation the
newcomer approves, and stop cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from appliance.steering.loader import attached_programs
from tests.integration.conftest import PY

DEMO_STATE = Path("/var/lib/appliance-test-demo")


def test_demo_runs_and_leaves_nothing_behind(prerequisites, appliance):
    shutil.rmtree(DEMO_STATE, ignore_errors=True)
    DEMO_STATE.mkdir(parents=True)
    config = DEMO_STATE / "appliance.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(DEMO_STATE), "run_dir": "/run/appliance-test-demo", "listen_port": 49190,
        "brokers": ["127.0.0.1:49092", "[::1]:49093"], "bpffs_dir": "/sys/fs/bpf/appliance-test-demo",
        "proxy_cgroup": "appliance-test-demo-proxy", "exempt_cgroups": ["appliance-test-demo-broker"],
        "embedded_broker": {"port4": 49092, "port6": 49093, "controller_port": 49094,
                            "data_dir": str(DEMO_STATE / "broker"), "cgroup": "appliance-test-demo-broker"},
    }))
    # Long enough for the local identity provider's first start (about a minute here) and the token
    # workload's first records after it.
    demo = subprocess.Popen([PY, "-m", "appliance", "--config", str(config), "demo", "--seconds", "90"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The newcomer's part: the workload's request to create demo-orders-archive is held; approve it.
    deadline, request = time.monotonic() + 60, None
    while request is None and time.monotonic() < deadline and demo.poll() is None:
        listed = subprocess.run([PY, "-m", "appliance", "--config", str(config), "approvals", "list", "--json"],
                                capture_output=True, text=True)
        pending = json.loads(listed.stdout) if listed.returncode == 0 else []
        request = next((r for r in pending if "demo-orders-archive" in r["needs"]), None)
        time.sleep(0.5)
    approved = None
    if request is not None:
        approved = subprocess.run([PY, "-m", "appliance", "--config", str(config), "approvals", "approve",
                                   request["id"], "--reason", "the demo's newcomer"], capture_output=True, text=True)
    out, err = demo.communicate(timeout=300)
    assert demo.returncode == 0, out[-3000:] + err[-3000:]
    done = subprocess.CompletedProcess(demo.args, demo.returncode, out, err)
    assert request is not None, "the demo's held operation was never filed for approval"
    assert approved.returncode == 0, approved.stderr
    assert "held for approval: creating demo-orders-archive" in out  # the screen's line for it (its last render)
    assert (DEMO_STATE / "demo-archive.txt").read_text().startswith("created"), out[-2000:]
    archived = subprocess.run([PY, "-m", "appliance", "--config", str(config), "audit", "operations", "--json",
                               "--topic", "demo-orders-archive"], capture_output=True, text=True, check=True).stdout
    assert '"api_name": "CreateTopics"' in archived and '"decision": "allowed"' in archived
    assert "none of this appliance's programs attached" in done.stdout
    sessions = subprocess.run([PY, "-m", "appliance", "--config", str(config), "audit", "sql", "--json",
                               "SELECT identity, count(*) AS n FROM sessions GROUP BY identity"],
                              capture_output=True, text=True, check=True).stdout
    assert '"identity": "orders"' in sessions
    # The token-authenticated workload beside it: its own OIDC token from the local Keycloak, bound to its
    # cgroup (auth cgroup+token), writing demo-ledger.
    tokens = json.loads(subprocess.run(
        [PY, "-m", "appliance", "--config", str(config), "audit", "sql", "--json",
         "SELECT identity, auth_method, subject, count(*) AS n FROM sessions WHERE auth_method IS NOT NULL "
         "GROUP BY identity, auth_method, subject"], capture_output=True, text=True, check=True).stdout)
    assert [(t["identity"], t["auth_method"]) for t in tokens] == [("ledger", "token")], (tokens, done.stdout[-2000:])
    ledger = subprocess.run([PY, "-m", "appliance", "--config", str(config), "audit", "operations", "--json",
                             "--identity", "ledger", "--topic", "demo-ledger"], capture_output=True, text=True,
                            check=True).stdout
    assert '"api_name": "Produce"' in ledger and '"decision": "allowed"' in ledger
    # The workload lives through its refusals: it is still producing at the end (one order a second).
    last = json.loads(subprocess.run(
        [PY, "-m", "appliance", "--config", str(config), "audit", "sql", "--json",
         "SELECT max(o.at) AS produced, max(s.ended_at) AS ended FROM operations o JOIN sessions s USING (session_id) "
         "WHERE s.identity = 'orders' AND o.api_name = 'Produce'"], capture_output=True, text=True, check=True).stdout)
    assert last[0]["ended"] - last[0]["produced"] < 4, last
    refused = subprocess.run([PY, "-m", "appliance", "--config", str(config), "audit", "events", "--json",
                              "--kind", "refused-connect"], capture_output=True, text=True, check=True).stdout
    assert "/appliance-demo/unenrolled" in refused
    last_read = json.loads((DEMO_STATE / "demo-last-read.json").read_text())
    assert last_read["email"] == "[REDACTED]" and last_read["card"].endswith("1111") and "4111" not in last_read["card"]
    denied = subprocess.run([PY, "-m", "appliance", "--config", str(config), "audit", "operations", "--json",
                             "--topic", "demo-secrets"], capture_output=True, text=True, check=True).stdout
    assert '"decision": "refused"' in denied and "no-demo-secrets" in denied
    assert not [p for p in attached_programs() if p.get("bpffs_dir") == "/sys/fs/bpf/appliance-test-demo"]
    assert not Path("/sys/fs/bpf/appliance-test-demo").exists()
    from appliance.identity.cgroups import cgroup2_root
    assert not (cgroup2_root() / "appliance-demo").exists(), "the demo's cgroups are removed"
    assert not subprocess.run(["pgrep", "-f", str(DEMO_STATE / "broker")], capture_output=True).stdout
    assert not subprocess.run(["pgrep", "-f", str(DEMO_STATE / "idp")], capture_output=True).stdout, "Keycloak stopped"
