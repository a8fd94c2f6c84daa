"""The process owner, against a stand-in for kc.sh: start, readiness, status, stop and every start failure.

The stand-in is a few lines of Python serving the realm's discovery document,
so these tests run in a second without Keycloak; tests/idp/test_keycloak.py
does the same against the real server.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.idp import DEMO_REALM, IdpError, LocalKeycloak, Realm, ServiceClient, service_account_id
from appliance.idp.distribution import KEYCLOAK_VERSION

# Serves /realms/<name>/.well-known/openid-configuration for each realm file in data/import (cwd is the home).
_STAND_IN = r'''
import http.server, json, pathlib, sys
args = sys.argv[1:]
port, base = int(args[args.index("--http-port") + 1]), args[args.index("--hostname") + 1]
realms = [p.stem for p in pathlib.Path("data/import").glob("*.json")]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        for r in realms:
            if self.path == f"/realms/{r}/.well-known/openid-configuration":
                body = json.dumps({"issuer": f"{base}/realms/{r}"}).encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body); return
        self.send_response(404); self.end_headers()
    def log_message(self, *a): pass
print("stand-in Keycloak listening", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distribution(cache: Path, kc_sh: str) -> Path:
    home = cache / f"keycloak-{KEYCLOAK_VERSION}"
    for name in ("lib/quarkus-run.jar", "conf/keycloak.conf"):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text("")
    (home / "bin").mkdir(exist_ok=True)
    (home / "bin" / "stand_in.py").write_text(_STAND_IN)
    (home / "bin" / "kc.sh").write_text(kc_sh)
    (home / "data").mkdir(exist_ok=True)
    (home / "data" / "cache-only").write_text("not copied")
    return cache


SERVES = f'exec {sys.executable} "$(dirname "$0")/stand_in.py" "$@"\n'


@pytest.fixture
def serving_cache(tmp_path):
    return _distribution(tmp_path / "cache", SERVES)


@pytest.fixture
def keycloak(tmp_path, serving_cache):
    k = LocalKeycloak(tmp_path / "state", port=_free_port(), jar_cache=serving_cache)
    yield k
    k.stop(timeout=5)


def test_start_status_stop(keycloak):
    status = keycloak.start(timeout=20)
    assert status.running and status.answering and status.pid
    assert status.port == keycloak.port and status.realm == "appliance" and status.audience == "kafka-appliance"
    assert status.endpoints.issuer == f"http://127.0.0.1:{keycloak.port}/realms/appliance"
    assert status.uptime_s is not None and status.uptime_s >= 0
    assert [c.client_id for c in status.clients] == list(DEMO_REALM.client_ids)
    assert status.clients[0].sub == service_account_id("appliance", "orders")
    pid = status.pid

    assert keycloak.start(timeout=20).pid == pid, "a second start must not launch a second server"
    keycloak.stop(timeout=5)
    after = keycloak.status()
    assert not after.running and not after.answering and after.pid is None
    assert not Path(f"/proc/{pid}").exists()
    assert after.endpoints.issuer == status.endpoints.issuer  # the last instance's, for the operator


def test_state_dir_is_private_and_the_realm_file_carries_the_kept_secrets(keycloak):
    keycloak.start(timeout=20)
    files = keycloak.files
    assert stat.S_IMODE(files.state_dir.stat().st_mode) == 0o700
    for private in (files.client_secrets, files.admin_password, files.signing_key, files.realm_file("appliance"),
                    files.instance):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    secrets = json.loads(files.client_secrets.read_text())
    realm = json.loads(files.realm_file("appliance").read_text())
    assert {c["clientId"]: c["secret"] for c in realm["clients"]} == secrets
    assert keycloak.client_secret("orders") == secrets["orders"]
    assert not (files.home / "data" / "cache-only").exists(), "the cache's data/ must not leak into an instance"
    keycloak.stop(timeout=5)
    keycloak.start(timeout=20)
    assert json.loads(files.client_secrets.read_text()) == secrets, "a restart must keep every client's secret"
    assert json.loads(files.realm_file("appliance").read_text())["components"] == realm["components"], \
        "a restart must keep the signing key"


def test_a_test_realm_replaces_the_previous_realm_file(tmp_path, serving_cache):
    port = _free_port()
    LocalKeycloak(tmp_path / "state", port=port, jar_cache=serving_cache).start(timeout=20)
    LocalKeycloak(tmp_path / "state", port=port, jar_cache=serving_cache).stop(timeout=5)
    other = LocalKeycloak(tmp_path / "state", port=port, jar_cache=serving_cache,
                          realm=Realm("other", clients=[ServiceClient("x")]))
    try:
        assert other.start(timeout=20).endpoints.issuer.endswith("/realms/other")
        assert sorted(p.name for p in other.files.import_dir.iterdir()) == ["other.json"]
    finally:
        other.stop(timeout=5)


def test_another_port_while_running_is_refused(tmp_path, keycloak, serving_cache):
    keycloak.start(timeout=20)
    with pytest.raises(IdpError, match=f"already runs .* on port {keycloak.port}"):
        LocalKeycloak(keycloak.files.state_dir, port=_free_port(), jar_cache=serving_cache).start(timeout=5)


def test_missing_java_is_named(tmp_path, serving_cache, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(IdpError, match="no `java` on PATH"):
        LocalKeycloak(tmp_path / "state", jar_cache=serving_cache).start(timeout=5)


def test_missing_distribution_says_run_setup(tmp_path):
    with pytest.raises(IdpError, match=r"no complete Keycloak .* run scripts/setup"):
        LocalKeycloak(tmp_path / "state", jar_cache=tmp_path / "empty-cache").start(timeout=5)


def test_port_in_use_is_named(tmp_path, serving_cache):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(IdpError, match=f"cannot listen on 127.0.0.1:{port}: another process holds it"):
            LocalKeycloak(tmp_path / "state", port=port, jar_cache=serving_cache).start(timeout=5)


def test_a_server_that_exits_shows_its_log(tmp_path):
    cache = _distribution(tmp_path / "cache", "echo 'ERROR: Failed to start server in (development) mode'\nexit 1\n")
    with pytest.raises(IdpError, match=r"exited with status 1 while starting") as e:
        LocalKeycloak(tmp_path / "state", port=_free_port(), jar_cache=cache).start(timeout=10)
    assert "Failed to start server" in str(e.value) and "keycloak.log" in str(e.value)


def test_a_server_that_never_answers_times_out_with_its_log_and_is_stopped(tmp_path):
    cache = _distribution(tmp_path / "cache", "echo 'still building'\nexec sleep 600\n")
    k = LocalKeycloak(tmp_path / "state", port=_free_port(), jar_cache=cache)
    with pytest.raises(IdpError, match=r"did not serve .*openid-configuration in time") as e:
        k.start(timeout=1.5)
    assert "still building" in str(e.value)
    assert not k.status().running


def test_bad_port_is_refused():
    with pytest.raises(IdpError, match="port 0 is not a number"):
        LocalKeycloak(Path("/nonexistent"), port=0)


def test_cli_start_status_stop(tmp_path, serving_cache, monkeypatch):
    config = tmp_path / "appliance.yaml"
    config.write_text(f"state_dir: {tmp_path / 'appliance'}\nembedded_broker:\n  jar_cache: {serving_cache}\n")
    runner = CliRunner()
    port = str(_free_port())
    state = tmp_path / "idp"
    try:
        started = runner.invoke(main, ["--config", str(config), "idp", "start", "--port", port,
                                       "--state-dir", str(state), "--timeout", "20"])
        assert started.exit_code == 0, started.output
        assert f"issuer http://127.0.0.1:{port}/realms/appliance" in started.output
        status = runner.invoke(main, ["--config", str(config), "idp", "status", "--state-dir", str(state)])
        assert status.exit_code == 0, status.output
        for expected in (f"token endpoint: http://127.0.0.1:{port}/realms/appliance/protocol/openid-connect/token",
                         "JWKS URI: ", "client: orders  groups payments", f"client secrets: {state}/client-secrets.json"):
            assert expected in status.output
        as_json = json.loads(runner.invoke(main, ["--config", str(config), "idp", "status", "--json",
                                                  "--state-dir", str(state)]).output)
        assert as_json["running"] and as_json["jwks_uri"].endswith("/certs")
    finally:
        stopped = runner.invoke(main, ["--config", str(config), "idp", "stop", "--state-dir", str(state)])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    after = runner.invoke(main, ["--config", str(config), "idp", "status", "--state-dir", str(state)])
    assert after.exit_code == 3 and "not running" in after.output


def test_cli_default_state_dir_is_under_the_configurations(tmp_path):
    config = tmp_path / "appliance.yaml"
    config.write_text(f"state_dir: {tmp_path / 'appliance'}\n")
    result = CliRunner().invoke(main, ["--config", str(config), "idp", "status"])
    assert result.exit_code == 3 and f"state: {tmp_path / 'appliance' / 'idp'}" in result.output


def test_a_damaged_instance_record_means_not_running(tmp_path, serving_cache):
    k = LocalKeycloak(tmp_path / "state", port=_free_port(), jar_cache=serving_cache)
    k.files.state_dir.mkdir(parents=True)
    k.files.instance.write_text('{"pid": 1, "port": "x"}')  # pid 1 is alive, and is not Keycloak anyway
    status = k.status()
    assert not status.running and status.pid is None and status.endpoints is None
    k.stop(timeout=1)  # must not signal pid 1
    assert k.start(timeout=20).running
    k.stop(timeout=5)


def test_a_reused_pid_is_not_taken_for_the_server(keycloak):
    keycloak.start(timeout=20)
    record = json.loads(keycloak.files.instance.read_text())
    real_pid = record["pid"]
    record["pid"] = os.getpid()  # alive, but not this home's kc.sh
    keycloak.files.instance.write_text(json.dumps(record))
    assert not keycloak.status().running
    record["pid"] = real_pid
    keycloak.files.instance.write_text(json.dumps(record))
