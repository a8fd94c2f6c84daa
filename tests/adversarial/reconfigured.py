"""Run the integration appliance with some settings changed, for the tests that need tighter bounds.

The shared appliance (tests/integration/conftest.py) is stopped, an appliance
with the same ports, state and bpffs directories but the overrides is started
in its place, and the shared one is started again afterwards. Only one
appliance may steer the test broker at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import yaml

from appliance.config import load_config
from tests.integration.conftest import PY, STATE, ApplianceProcess, cli, eventually

CLIENTS = Path(__file__).resolve().parent / "clients"


@contextmanager
def reconfigured(appliance: ApplianceProcess, name: str, **overrides):
    settings = yaml.safe_load(appliance.config_path.read_text())
    settings.update(overrides)
    path = STATE / f"appliance-{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    if appliance.proc is not None and appliance.proc.poll() is None:
        assert appliance.stop() == 0, f"appliance serve exited badly; log:\n{appliance.log.read_text()[-3000:]}"
    app = ApplianceProcess(path, load_config(path))
    app.start()
    try:
        yield app
    finally:
        if app.proc.poll() is None:
            app.stop()
        appliance.start()


def enroll_in(app: ApplianceProcess, make_cgroup, identity: str):
    cg = make_cgroup(identity)
    cli(app.config_path, "enroll", cg.cgroup.path, "--identity", identity)
    eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in (app.status() or {}).get("workloads", [])),
               timeout=5, message=f"enrolment of {identity} applied")
    return cg


def hostile(cg, *args: str) -> subprocess.Popen:
    return cg.popen([PY, str(CLIENTS / "budget_client.py"), *args])


def line(proc: subprocess.Popen, timeout: float = 90) -> dict:
    """The next JSON line the client prints."""
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError(f"client printed nothing in {timeout}s; stderr: {proc.stderr.read()[-2000:]}")
    text = proc.stdout.readline()
    if not text:
        raise AssertionError(f"client exited {proc.wait()}; stderr: {proc.stderr.read()[-2000:]}")
    return json.loads(text)


def rss_kib(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
