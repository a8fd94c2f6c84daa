"""`appliance doctor` on this host: healthy with the embedded broker up, and each missing piece named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.fixtures import BROKER4, BROKER6, POLICY, PY

# Doctor makes its broker connects from proxy_cgroup, as serve does. The suite's appliance, which steers the
# same brokers, exempts this cgroup by its id (tests/integration/fixtures.py): it is kept, never removed.
PROXY_CGROUP = "appliance-test-doctor-proxy"


@pytest.fixture
def doctor(tmp_path, broker, config, appliance):
    """Run doctor with the test broker's settings, changed by `overrides`; (exit status, findings by check)."""
    def run(**overrides):
        settings = {
            "state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"), "listen_port": 39191,
            "brokers": [BROKER4, BROKER6], "bpffs_dir": "/sys/fs/bpf/appliance-test-doctor",
            "proxy_cgroup": PROXY_CGROUP, "policy_file": str(POLICY),
            "upstream_credentials": str(broker.files.appliance_credentials),
        }
        settings.update(overrides)
        path = tmp_path / "appliance.yaml"
        path.write_text(yaml.safe_dump(settings))
        result = subprocess.run([PY, "-m", "appliance", "--config", str(path), "doctor", "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode in (0, 1), result.stderr
        findings = {f["check"]: f for f in json.loads(result.stdout)}
        return result.returncode, findings
    return run


def test_this_host_with_the_broker_running_is_healthy(doctor):
    status, findings = doctor()
    failing = {name: f for name, f in findings.items() if f["status"] == "FAIL"}
    assert status == 0 and failing == {}
    assert findings[f"broker {BROKER4}"]["status"] == "ok" and findings["bpf-sk_lookup"]["status"] == "ok"
    assert findings["cgroup2"]["detail"].startswith("cgroup v2 mounted at ")


def test_an_unreachable_broker_fails_naming_it(doctor):
    status, findings = doctor(brokers=[BROKER4, "127.0.0.1:39099"])
    assert status == 1
    assert findings["broker 127.0.0.1:39099"]["status"] == "FAIL"
    assert "Connection refused" in findings["broker 127.0.0.1:39099"]["detail"]
    assert findings[f"broker {BROKER4}"]["status"] == "ok"


def test_credentials_readable_by_others_fail_with_the_chmod_that_fixes_them(doctor, tmp_path, broker):
    loose = tmp_path / "credentials.json"
    shutil.copy(broker.files.appliance_credentials, loose)
    os.chmod(loose, 0o644)
    status, findings = doctor(upstream_credentials=str(loose))
    assert status == 1
    f = findings["upstream_credentials"]
    assert f["status"] == "FAIL" and "mode 0644" in f["detail"] and f"chmod 600 {loose}" in f["fix"]


def test_a_bpffs_dir_that_is_not_on_bpffs_fails(doctor, tmp_path):
    status, findings = doctor(bpffs_dir=str(tmp_path / "pins"))
    assert status == 1
    f = findings["bpffs"]
    assert f["status"] == "FAIL" and "not on a bpf filesystem" in f["detail"] and "mount -t bpf" in f["fix"]


def test_the_text_output_has_one_line_per_check_with_its_fix(tmp_path, broker, config):
    path = tmp_path / "appliance.yaml"
    path.write_text(yaml.safe_dump({"brokers": ["127.0.0.1:39099"], "listen_port": 39191, "proxy_cgroup": PROXY_CGROUP,
                                    "upstream_credentials": str(broker.files.appliance_credentials),
                                    "state_dir": str(tmp_path / "state")}))
    result = subprocess.run([PY, "-m", "appliance", "--config", str(path), "doctor"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "broker 127.0.0.1:39099" in line)
    assert line.startswith("FAIL") and "fix: start the broker or correct `brokers` in " + str(path) in line
