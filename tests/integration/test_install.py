"""scripts/install and scripts/uninstall into a throwaway prefix on this host: no apt-get, no systemctl.

Real files, a real venv built from /usr/bin/python3 with the appliance installed from the checkout,
and the units checked by systemd-analyze (it is part of Debian's systemd package)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.audit import store
from appliance.config import load_config
from appliance.identity import cgroups
from appliance.steering.loader import attached_programs
from tests.integration.fixtures import BROKER4, BROKER6, REPO

BPFFS = "/sys/fs/bpf/appliance-test-install"


def _run(script: str, prefix: Path, *args: str) -> str:
    result = subprocess.run([str(REPO / "scripts" / script), "--prefix", str(prefix), "--no-system", *args],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"scripts/{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _verify(unit: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd)", pytrace=False)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and unit.name not in result.stderr, f"{unit}:\n{result.stdout}\n{result.stderr}"


def _serve_until_ready(venv: Path, config: Path, tmp_path: Path) -> None:
    """The installed `appliance serve`, as the unit runs it, up to READY=1, then stopped with SIGTERM."""
    notify = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(60)
        with open(tmp_path / "serve.log", "wb") as log:
            proc = subprocess.Popen([str(venv / "bin/appliance"), "--config", str(config), "serve"], cwd=tmp_path,
                                    env={**os.environ, "NOTIFY_SOCKET": str(notify)}, stdout=log, stderr=log)
        try:
            assert sock.recv(4096).startswith(b"READY=1"), (tmp_path / "serve.log").read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert not [p for p in attached_programs() if p["bpffs_dir"] == BPFFS]


@pytest.fixture
def proxy_cgroup():
    yield "appliance-test-install-proxy"
    try:
        cgroups.remove(cgroups.resolve("appliance-test-install-proxy"))
    except (cgroups.CgroupError, OSError):
        pass


def test_install_upgrade_uninstall_and_purge(tmp_path, broker, config, proxy_cgroup):
    assert os.geteuid() == 0, "scripts/install runs as root"
    prefix = tmp_path / "root"
    etc, state = prefix / "etc/appliance", prefix / "var/lib/appliance"
    venv, units = prefix / "opt/appliance/venv", prefix / "etc/systemd/system"

    out = _run("install", prefix)
    assert _mode(etc / "credentials") == 0o700 and _mode(state) == 0o700
    # The audit's signing key is made at install, root-only, and its verifier key shown to be recorded.
    assert _mode(state / "audit-signing.key") == 0o600
    vkey = (state / "audit-signing.vkey").read_text().strip()
    assert vkey.split("+")[0].endswith("/appliance-audit") and vkey in out, out
    assert _mode(etc / "credentials/upstream.json") == 0o600 and os.stat(etc / "credentials/upstream.json").st_uid == 0
    config = load_config(etc / "appliance.yaml")
    assert (config.state_dir, config.policy_file, config.upstream_credentials) == (
        state, etc / "policy.yaml", etc / "credentials/upstream.json")
    # Installed, not editable: the package and the BPF sources live in the venv.
    where = subprocess.run([str(venv / "bin/python"), "-c", "import appliance.config, appliance.steering.loader as l; "
                            "print(appliance.config.__file__); print(l.DEFAULT_BPF_DIR)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert all(line.startswith(str(venv)) for line in where), where
    assert (Path(where[1]) / "steering.c").is_file()
    assert os.readlink(prefix / "usr/local/bin/appliance") == str(venv / "bin/appliance")
    # The starter policy denies everything.
    explain = subprocess.run([str(venv / "bin/appliance"), "--config", str(etc / "appliance.yaml"), "policy", "explain",
                              "--identity", "orders", "--operation", "produce", "--topic", "orders"],
                             capture_output=True, text=True)
    assert "DENY" in explain.stdout, explain.stdout + explain.stderr
    unit = (units / "appliance.service").read_text()
    assert f"ExecStart={venv}/bin/appliance --config {etc}/appliance.yaml serve --keep-steering" in unit
    assert f"ReadWritePaths={state} /sys/fs/bpf /sys/fs/cgroup" in unit and "@" not in unit.replace("@.", "")
    _verify(units / "appliance.service")
    assert not (units / "appliance-broker.service").exists()
    console = (units / "appliance-console.service").read_text()
    assert f"ExecStart={venv}/bin/appliance --config {etc}/appliance.yaml console" in console
    assert "CapabilityBoundingSet=\n" in console and f"ReadWritePaths={state}\n" in console
    assert "SystemCallErrorNumber=EPERM\n" in console and "LimitNOFILE=65536\n" in console
    _verify(units / "appliance-console.service")

    # An operator edits the config (here: for the test broker, on ports and pins of the test's own), and the
    # installed serve runs on it: it finds its BPF sources in the venv, and writes the audit database.
    edited = (etc / "appliance.yaml").read_text() + yaml.safe_dump({
        "listen_port": 39191, "brokers": [BROKER4, BROKER6], "bpffs_dir": BPFFS, "run_dir": str(tmp_path / "run"),
        "proxy_cgroup": proxy_cgroup, "exempt_cgroups": [config.embedded_broker.cgroup],
        "upstream_credentials": str(broker.files.appliance_credentials)})
    (etc / "appliance.yaml").write_text(edited)
    _serve_until_ready(venv, etc / "appliance.yaml", tmp_path)
    db = store.open_read_only(state / "audit.db")
    starts = db.conn.execute("SELECT count(*) FROM events WHERE kind = 'start'").fetchone()[0]
    db.conn.close()
    assert starts == 1
    audit_bytes = (state / "audit.db").read_bytes()

    out = _run("install", prefix, "--with-broker")  # an upgrade that adds the demo broker
    assert (etc / "appliance.yaml").read_text() == edited
    assert "appliance.yaml.dist" in out and (etc / "appliance.yaml.dist").is_file()
    assert "broker/appliance-credentials.json" in (etc / "appliance.yaml.dist").read_text()
    assert not (etc / "policy.yaml.dist").exists()  # unchanged: nothing to put beside it
    assert (state / "audit.db").read_bytes() == audit_bytes
    _verify(units / "appliance-broker.service")
    _verify(units / "appliance.service")

    out = _run("uninstall", prefix)
    assert "removed" not in out or "appliance-test-install" in out
    assert not (prefix / "opt/appliance").exists() and not (prefix / "usr/local/bin/appliance").exists()
    assert not list(units.iterdir())
    assert (etc / "appliance.yaml").read_text() == edited and (state / "audit.db").read_bytes() == audit_bytes
    assert _mode(etc / "credentials/upstream.json") == 0o600

    _run("uninstall", prefix, "--purge")
    assert not etc.exists() and not state.exists()
    assert [p for p in prefix.rglob("*") if not p.is_dir()] == []


def test_the_unit_keeps_the_hardening_the_docs_promise():
    unit = (REPO / "packaging/systemd/appliance.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure" and "WatchdogSec" in settings
    for key in ("ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes"):
        assert key in unit.splitlines()
    capabilities = settings["CapabilityBoundingSet"].split()
    for cap in capabilities:  # each one kept is justified in the comment above it
        assert f"#   {cap} " in unit, cap
    assert yaml.safe_load((REPO / "packaging/policy.yaml").read_text())["rules"] == []
