"""Integration fixtures: the real kernel, a real Kafka broker, the real appliance process.

Loaded once for the whole suite as a plugin (tests/conftest.py), so that
tests/integration and tests/adversarial share ONE broker and ONE appliance per
run: fixtures imported into a second conftest would be a second set of
session fixtures, and a second appliance on the same port.

Everything here is real: the appliance runs as `appliance serve` in its own
process with its programs attached at the cgroup v2 root, the broker is the
embedded Apache Kafka, workloads are processes in real cgroups running real
clients, and the audit is read back with `appliance audit ... --json`.
A missing prerequisite (root, cgroup v2, bpffs, bcc, Java, the jars) fails the
run; nothing here skips.

The test appliance uses its own ports, state directory, bpffs directory and
cgroups, so it can run beside an appliance started by `make run`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from pyroute2 import IPRoute, NetNS, netns

from appliance.broker.embedded import EmbeddedBroker
from appliance.config import load_config
from appliance.identity import cgroups

REPO = Path(__file__).resolve().parents[2]
CLIENTS = Path(__file__).resolve().parent / "clients"
STATE = Path("/var/lib/appliance-test")
PY = sys.executable
BROKER4 = "127.0.0.1:39092"
BROKER6 = "[::1]:39093"
NETNS = "appliance-test-ns"
NETNS_HOST, NETNS_PEER = "10.231.0.1", "10.231.0.2"
BROKER_NETNS = f"{NETNS_PEER}:39092"
VETH_HOST, VETH_PEER = "appl-test-h", "appl-test-p"
WORKLOAD_PARENT = "appliance-test-workloads"
CONTAINER_STATE = STATE / "containers"
POLICY = STATE / "policy.yaml"  # a copy of tests/integration/policy.yaml that policy tests rewrite
# The test session's identity provider (tests/integration/idp_fixtures.py): the demo realm on its test port.
IDP_ISSUER = "http://127.0.0.1:39180/realms/appliance"
IDP_AUDIENCE = "kafka-appliance"
# Static migration credentials `serve` accepts in the tests: (mechanism, username, password, identity, groups).
STATIC_CREDENTIALS = (
    ("PLAIN", "legacy-plain", "legacy-plain-pw", "legacy", ("payments",)),
    ("SCRAM-SHA-512", "legacy-scram", "legacy-scram-pw", "legacy", ("payments",)),
    ("SCRAM-SHA-256", "legacy-scram256", "legacy-scram256-pw", "legacy", ("payments",)),
    ("PLAIN", "tokens-only-plain", "tokens-only-pw", "tokens-only", ()),
)
STATIC_CREDENTIALS_FILE = STATE / "static-credentials.yaml"
# The web console (tests/integration/test_console.py runs it): serve links its approval webhooks to it.
CONSOLE_PORT = 39160
CONSOLE_URL = f"http://127.0.0.1:{CONSOLE_PORT}"
CONSOLE_CLIENT_ID = "appliance-console"
CONSOLE_SECRET_FILE = STATE / "console-client-secret"


def pytest_collection_modifyitems(items):
    for item in items:
        if {"integration", "adversarial"} & set(item.path.parts):
            item.add_marker(pytest.mark.integration)


def _fail_unless(condition: bool, message: str) -> None:
    if not condition:
        pytest.fail(f"integration prerequisite missing: {message}", pytrace=False)


@pytest.fixture(scope="session")
def prerequisites():
    _fail_unless(os.geteuid() == 0, "run as root (BPF programs, cgroups and namespaces need it)")
    _fail_unless(cgroups.cgroup2_root().is_dir(), "cgroup v2 is not mounted")
    _fail_unless(" /sys/fs/bpf bpf " in Path("/proc/mounts").read_text(), "bpffs is not mounted at /sys/fs/bpf (run scripts/setup)")
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        _fail_unless(False, f"bcc does not import ({e}); the venv must be made from /usr/bin/python3 with system site packages")
    _fail_unless(shutil.which("java") is not None, "java is not installed")
    _fail_unless(shutil.which("kcat") is not None, "kcat is not installed")


@pytest.fixture(scope="session")
def config_path(prerequisites) -> Path:
    for leftover in ("audit.db", "audit.db-wal", "audit.db-shm", "enrollments.json", "serve.log",
                     "revocations.json", "approvals.db", "approvals.db-wal", "approvals.db-shm"):
        (STATE / leftover).unlink(missing_ok=True)
    shutil.rmtree(STATE / "checkpoints", ignore_errors=True)
    STATE.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("policy.yaml"), POLICY)
    STATIC_CREDENTIALS_FILE.write_text(yaml.safe_dump({"credentials": [
        {"mechanism": m, "username": u, "password": p, "identity": i, "groups": list(g)}
        for m, u, p, i, g in STATIC_CREDENTIALS]}))
    os.chmod(STATIC_CREDENTIALS_FILE, 0o600)
    path = STATE / "appliance.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(STATE),
        "run_dir": "/run/appliance-test",
        "listen_port": 39190,
        "brokers": [BROKER4, BROKER6, BROKER_NETNS],
        "bpffs_dir": "/sys/fs/bpf/appliance-test",
        "proxy_cgroup": "appliance-test-proxy",
        # The proxy cgroups of the serve and doctor runs some modules make beside this appliance: their broker
        # connects are theirs to steer, and this appliance would refuse them as unenrolled.
        "exempt_cgroups": ["appliance-test-broker", "appliance-test-direct", "appliance-test-notify-proxy",
                           "appliance-test-doctor-proxy"],
        "audit_flush_ms": 50,
        "audit_checkpoint_interval_s": 2,  # tests/integration/test_audit_chain.py waits for scheduled ones
        "policy_file": str(POLICY),
        # Container runtimes' state, where test_containers writes the labels a runtime would.
        "container_roots": {runtime: str(CONTAINER_STATE / runtime) for runtime in ("docker", "podman", "containerd", "crio")},
        "embedded_broker": {"port4": 39092, "port6": 39093, "controller_port": 39094,
                            "data_dir": str(STATE / "broker"), "cgroup": "appliance-test-broker"},
        "identity": {
            "providers": [{"issuer": IDP_ISSUER, "audiences": [IDP_AUDIENCE], "identity_claim": "azp"}],
            "static_credentials_file": str(STATIC_CREDENTIALS_FILE),
        },
        "console": {"enabled": True, "listen": f"127.0.0.1:{CONSOLE_PORT}", "issuer": IDP_ISSUER,
                    "client_id": CONSOLE_CLIENT_ID, "client_secret_file": str(CONSOLE_SECRET_FILE),
                    "redirect_uri": f"{CONSOLE_URL}/callback", "approver_group": "kafka-admins",
                    "auditor_group": "kafka-auditors"},
    }))
    return path


@pytest.fixture(scope="session")
def config(config_path):
    return load_config(config_path)


@pytest.fixture(scope="session")
def broker(config):
    b = EmbeddedBroker(config.embedded_broker)
    b.start()
    yield b
    b.stop()


def make_veth_netns(name: str, veth_host: str, veth_peer: str, host_address: str, peer_address: str,
                    default_route: bool = False) -> None:
    """A named network namespace joined to the host by a veth pair, a /30 on both ends, loopback up."""
    if name in netns.listnetns():
        netns.remove(name)
    netns.create(name)
    with IPRoute() as ip:
        for link in ip.link_lookup(ifname=veth_host):
            ip.link("del", index=link)
        ip.link("add", ifname=veth_host, kind="veth", peer={"ifname": veth_peer, "net_ns_fd": name})
        host = ip.link_lookup(ifname=veth_host)[0]
        ip.addr("add", index=host, address=host_address, prefixlen=30)
        ip.link("set", index=host, state="up")
    with NetNS(name) as ns:
        peer = ns.link_lookup(ifname=veth_peer)[0]
        ns.addr("add", index=peer, address=peer_address, prefixlen=30)
        ns.link("set", index=peer, state="up")
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        if default_route:
            ns.route("add", dst="0.0.0.0/0", gateway=host_address)


def remove_veth_netns(name: str, veth_host: str) -> None:
    with IPRoute() as ip:
        for link in ip.link_lookup(ifname=veth_host):
            ip.link("del", index=link)
    netns.remove(name)


@pytest.fixture(scope="module")
def remote_broker(config, broker):
    """A broker that looks remote: in its own network namespace (NETNS), reached over a veth pair."""
    make_veth_netns(NETNS, VETH_HOST, VETH_PEER, NETNS_HOST, NETNS_PEER)
    data_dir = STATE / "broker-netns"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    # The appliance holds one set of credentials: give the remote broker the same users.
    for name in ("appliance-credentials.json", "intruder-credentials.json"):
        shutil.copy2(config.embedded_broker.data_dir / name, data_dir / name)
    remote = EmbeddedBroker(dataclasses.replace(config.embedded_broker, host4=NETNS_PEER, data_dir=data_dir,
                                                cgroup="appliance-test-broker"), netns=NETNS)
    remote.start()
    yield remote
    remote.stop()
    remove_veth_netns(NETNS, VETH_HOST)
    shutil.rmtree(data_dir, ignore_errors=True)


def cli(config_path: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([PY, "-m", "appliance", "--config", str(config_path), *args],
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"appliance {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def audit(config_path: Path, table: str, *args: str) -> list[dict]:
    return json.loads(cli(config_path, "audit", table, "--json", "--limit", "10000", *args).stdout)


def enrol_cgroup(appliance: ApplianceProcess, config_path: Path, name: str, identity: str) -> Cgroup:
    """A cgroup WORKLOAD_PARENT/<name>, enrolled as `identity` with `appliance enroll`, once `appliance` applied it.
    For fixtures wider than a test (the `enroll` fixture's cgroups go with their test); the caller unenrols it."""
    cg = Cgroup(cgroups.ensure(f"{WORKLOAD_PARENT}/{name}"))
    cli(config_path, "enroll", cg.cgroup.path, "--identity", identity)
    eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in (appliance.status() or {}).get("workloads", [])),
               timeout=5, message=f"enrolment of {cg.cgroup.path} as {identity} applied")
    return cg


def traffic_of(config_path: Path, cg: Cgroup, topic: str | None = None) -> dict[str, int]:
    """Records per API over every session from `cg`, as the audit counts them (Produce: in the requests; Fetch:
    in the responses); with `topic`, over the operations whose audited topics name it."""
    quoted = None if topic is None else topic.replace("'", "''")
    names = "" if topic is None else f"AND EXISTS (SELECT 1 FROM json_each(o.topics) WHERE json_each.key = '{quoted}') "
    rows = json.loads(cli(config_path, "audit", "sql", "SELECT o.api_name AS api, COALESCE(SUM(o.records), 0) AS n "
                          "FROM operations o JOIN sessions s ON s.session_id = o.session_id "
                          f"WHERE s.cgroup_id = {int(cg.cgroup.id)} {names}GROUP BY o.api_name", "--json").stdout)
    return {row["api"]: row["n"] for row in rows}


def traffic_until(config_path: Path, cg: Cgroup, done: Callable[[dict[str, int]], bool], what: str,
                  timeout: float = 10.0, topic: str | None = None) -> dict[str, int]:
    """traffic_of(cg, topic) once `done` holds of it (the audit is written in batches); fails naming what it
    counted."""
    seen: dict[str, int] = {}

    def check() -> bool:
        seen.clear()
        seen.update(traffic_of(config_path, cg, topic))
        return done(seen)

    try:
        eventually(check, timeout=timeout, interval=0.5, message=what)
    except AssertionError:
        raise AssertionError(f"{what} did not hold within {timeout}s; the audit counts, per API, from "
                             f"{cg.cgroup.path}{'' if topic is None else f' naming {topic}'}: {seen}") from None
    return dict(seen)


@contextmanager
def policy_extended(appliance: "ApplianceProcess", extra: str, what: str) -> Iterator[str]:
    """The integration policy (tests/integration/policy.yaml) with `extra` appended (more items of its `rules:`,
    which ends it, then sections of its own such as `masking:`), loaded by `appliance` for the block; the
    policy as it was afterwards."""
    base = Path(__file__).with_name("policy.yaml")
    text = base.read_text() + extra
    tmp = POLICY.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(POLICY)
    expected = len(yaml.safe_load(text)["rules"])
    eventually(lambda: (appliance.status() or {}).get("policy", {}).get("rules") == expected, timeout=15,
               message=f"{what} reloaded")
    try:
        yield text
    finally:
        shutil.copy(base, POLICY)


@contextmanager
def enrolled(appliance: "ApplianceProcess", config_path: Path, names: tuple[str, ...]) -> Iterator[dict]:
    """A fresh cgroup under WORKLOAD_PARENT enrolled as each identity in `names`, for the block: {name: Cgroup}."""
    made = {}
    for name in names:
        cg = Cgroup(cgroups.ensure(f"{WORKLOAD_PARENT}/{name}-{secrets.token_hex(3)}"))
        cli(config_path, "enroll", cg.cgroup.path, "--identity", name)
        made[name] = cg
    eventually(lambda: {w["cgroup_id"] for w in appliance.status()["workloads"]} >= {c.cgroup.id for c in made.values()},
               message=f"{', '.join(names)} enrolled")
    try:
        yield made
    finally:
        for cg in made.values():
            cli(config_path, "unenroll", cg.cgroup.path, check=False)
            cg.cleanup()


def eventually(check, timeout: float = 10.0, interval: float = 0.1, message: str = "condition"):
    """Poll `check` until it returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} did not hold within {timeout}s (last: {last!r})")


@dataclass
class ApplianceProcess:
    config_path: Path
    config: object
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return STATE / "serve.log"

    def status(self) -> dict | None:
        try:
            snapshot = json.loads(self.config.status_file.read_text())
        except (OSError, ValueError):
            return None
        return snapshot if self.proc is not None and snapshot.get("pid") == self.proc.pid else None

    def fresh_status(self, timeout: float = 5.0) -> dict:
        """The first snapshot written after this call: status is written once a second, so one read at once may
        predate what the test just did."""
        asked = time.time()
        return eventually(lambda: (lambda s: s if s and s.get("written_at", 0) > asked else None)(self.status()),
                          timeout=timeout, message="a status snapshot written after the request")

    def start(self) -> None:
        self.config.status_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([PY, "-m", "appliance", "--config", str(self.config_path), "serve"],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.status() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"appliance serve did not come up; log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def appliance(config_path, config, broker):
    from appliance.steering.loader import attached_programs

    app = ApplianceProcess(config_path, config)
    app.start()
    yield app
    if app.proc.poll() is None:
        assert app.stop() == 0, f"appliance serve exited badly; log:\n{app.log.read_text()[-3000:]}"
    else:  # a test killed it and left it down: start and stop once so it detaches
        app.start()
        app.stop()
    leftovers = [p for p in attached_programs() if p.get("bpffs_dir") in (str(config.bpffs_dir), None)]
    assert leftovers == [], f"programs left attached after the appliance stopped: {leftovers}"


@dataclass
class Cgroup:
    """A real cgroup that runs processes, enrolled or not."""

    cgroup: cgroups.Cgroup
    procs: list[subprocess.Popen] = field(default_factory=list)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        target = self.cgroup.directory / "cgroup.procs"
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(argv, preexec_fn=lambda: target.write_text(str(os.getpid())), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], *, timeout: float = 60, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        proc = self.popen(argv, stdin=subprocess.PIPE if input is not None else None)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"{argv[:4]} timed out after {timeout}s\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}")
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv[:4]} exited {result.returncode}\nstdout: {out[-3000:]}\nstderr: {err[-3000:]}")
        return result

    def client(self, script: str, *args: str, **kwargs) -> dict:
        """Run one of tests/integration/clients/ and return the JSON it prints last."""
        result = self.run([PY, str(CLIENTS / script), *args], **kwargs)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in range(50):
            try:
                cgroups.remove(self.cgroup)
                return
            except cgroups.CgroupError:
                time.sleep(0.1)


@pytest.fixture
def make_cgroup(prerequisites):
    made: list[Cgroup] = []

    def make(prefix: str = "cg") -> Cgroup:
        cg = Cgroup(cgroups.ensure(f"{WORKLOAD_PARENT}/{prefix}-{secrets.token_hex(3)}"))
        made.append(cg)
        return cg

    yield make
    for cg in made:
        cg.cleanup()


@pytest.fixture
def enroll(appliance, config_path, make_cgroup):
    """Make a cgroup, enrol it with `appliance enroll`, and wait until the appliance applied it."""
    enrolled: list[Cgroup] = []

    def do(identity: str, *groups: str, auth: str = "cgroup", accepts: tuple[str, ...] = (),
           workload_tls: str = "refuse") -> Cgroup:
        cg = make_cgroup(identity)
        cli(config_path, "enroll", cg.cgroup.path, "--identity", identity, *[f"--group={g}" for g in groups],
            f"--auth={auth}", *[f"--accept={a}" for a in accepts], f"--workload-tls={workload_tls}")
        eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id for w in (appliance.status() or {}).get("workloads", [])),
                   timeout=5, message=f"enrolment of {identity} applied")
        enrolled.append(cg)
        return cg

    yield do
    for cg in enrolled:
        cli(config_path, "unenroll", cg.cgroup.path, check=False)


@pytest.fixture(scope="session")
def direct(prerequisites, broker):
    """An exempt cgroup: its clients reach the broker directly, with the appliance's credentials."""
    cg = Cgroup(cgroups.ensure("appliance-test-direct"))
    yield cg
    cg.cleanup()


@pytest.fixture(scope="session")
def sasl_args(broker) -> list[str]:
    creds = broker.credentials
    return ["--sasl", f"{creds.mechanism}:{creds.username}:{creds.password}"]


def java_argv(broker: EmbeddedBroker, main_class: str, *args: str) -> list[str]:
    """A Kafka Java tool as a plain command, to run inside a workload's cgroup with no credentials."""
    return [shutil.which("java"), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-cp", f"{broker.jar_dir}/*", main_class, *args]
