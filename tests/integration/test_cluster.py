"""A real cluster: three KRaft brokers, one named in `brokers`, the other two learned from Metadata.

Each broker (broker and controller in one JVM, node ids 1-3) runs in a network namespace of its own,
appliance-test-cl1..3, joined by a veth pair to one bridge on the host (10.231.8.1/24); the brokers listen
on 10.231.8.2-4:39292 (SASL_PLAINTEXT) and reach each other's controller and inter-broker listeners
over the bridge. This module runs its own `appliance serve` (port 39390, its own state, bpffs and cgroups)
with only 10.231.8.2:39292 in `brokers`, beside the session's appliance.

Real clients in enrolled cgroups produce to and consume from topics of three partitions, replication 3,
led by three different brokers, so each client must reach every broker, two of which it only learns from
the answers the proxy relays: every family (kcat, confluent-kafka, kafka-python, aiokafka, franz-go, the
Java 4.x consumer with the classic and the KIP-848 protocol) round-trips; then confluent-kafka and
kafka-python keep running while the configured bootstrap broker, leader of a partition, is killed
(SIGKILL) between their two phases, and must follow the new leaders through the appliance. Every session
is audited, every broker connection from the host belongs to the appliance's proxy (nothing reached a
broker unsteered), a broker named outside the allowed networks is refused to enrolled workloads, and a
bootstrap broker given by DNS name (/etc/hosts) is followed when its name moves, and a broker stopped for
good is forgotten once the cluster's Metadata has left it out for `discovery.forget_after_s`, then learned
again when it returns. Nothing here skips.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from pyroute2 import IPRoute, NetNS, netns

from appliance.broker.embedded import EmbeddedBroker
from appliance.broker.properties import BrokerFiles, ClusterMember
from appliance.broker.storage import cluster_id, ensure_credentials
from appliance.config import EmbeddedBrokerConfig, load_config
from appliance.identity import cgroups
from tests.integration.conftest import CLIENTS, PY, ApplianceProcess, Cgroup, audit, cli, eventually

STATE = Path("/var/lib/appliance-test-cluster")
BRIDGE, BRIDGE_HOST = "appl-cl-br", "10.231.8.1"
NODES = {1: "10.231.8.2", 2: "10.231.8.3", 3: "10.231.8.4"}
PORT, CONTROLLER_PORT = 39292, 39294
BOOTSTRAP = f"{NODES[1]}:{PORT}"
BROKER_CGROUP = "appliance-test-cluster-broker"
DIRECT_CGROUP = "appliance-test-cluster-direct"
TOPIC = "cluster-orders"
POLICY = """\
version: 1
rules:
  - name: cluster-everything
    identities: [cluster-app]
    operations: [produce, consume, describe, create, group]
    topics: ["*"]
    consumer_groups: ["*"]
"""


def _ns(node: int) -> str:
    return f"appliance-test-cl{node}"


def _veth(node: int) -> tuple[str, str]:
    return f"appl-cl{node}-h", f"appl-cl{node}-p"


def _remove_network() -> None:
    with IPRoute() as ip:
        for node in NODES:
            for link in ip.link_lookup(ifname=_veth(node)[0]):
                ip.link("del", index=link)
        for link in ip.link_lookup(ifname=BRIDGE):
            ip.link("del", index=link)
    for node in NODES:
        if _ns(node) in netns.listnetns():
            netns.remove(_ns(node))


def _make_network() -> None:
    """One bridge on the host; per broker a namespace and a veth pair, its host end on the bridge."""
    _remove_network()
    with IPRoute() as ip:
        ip.link("add", ifname=BRIDGE, kind="bridge")
        bridge = ip.link_lookup(ifname=BRIDGE)[0]
        ip.addr("add", index=bridge, address=BRIDGE_HOST, prefixlen=24)
        ip.link("set", index=bridge, state="up")
        for node, address in NODES.items():
            host_end, peer_end = _veth(node)
            netns.create(_ns(node))
            ip.link("add", ifname=host_end, kind="veth", peer={"ifname": peer_end, "net_ns_fd": _ns(node)})
            link = ip.link_lookup(ifname=host_end)[0]
            ip.link("set", index=link, master=bridge)
            ip.link("set", index=link, state="up")
            with NetNS(_ns(node)) as ns:
                peer = ns.link_lookup(ifname=peer_end)[0]
                ns.addr("add", index=peer, address=address, prefixlen=24)
                ns.link("set", index=peer, state="up")
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


@pytest.fixture(scope="module")
def brokers(prerequisites):
    """The three nodes, started side by side (each waits for a quorum of controllers)."""
    _make_network()
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    first = BrokerFiles(STATE / "broker-1")
    first.data_dir.mkdir(mode=0o700)
    ensure_credentials(first)  # one set of users for the cluster: the appliance holds one set of credentials
    voters = tuple(NODES.items())
    shared = dict(cluster_id=cluster_id(), node_password=secrets.token_urlsafe(24))
    nodes = {}
    for node, address in NODES.items():
        data = STATE / f"broker-{node}"
        data.mkdir(mode=0o700, exist_ok=True)
        for name in ("appliance-credentials.json", "intruder-credentials.json"):
            if node != 1:
                shutil.copy2(first.data_dir / name, data / name)
        config = EmbeddedBrokerConfig(host4=address, host6="", port4=PORT, controller_port=CONTROLLER_PORT,
                                      data_dir=data, cgroup=BROKER_CGROUP, heap="384m")
        nodes[node] = EmbeddedBroker(config, netns=_ns(node), cluster=ClusterMember(node, voters, **shared))
    failures: list[BaseException] = []

    def start(broker: EmbeddedBroker) -> None:
        try:
            broker.start(timeout=150)
        except BaseException as e:  # noqa: BLE001 - reported below, after every node had its chance
            failures.append(e)

    threads = [threading.Thread(target=start, args=(b,)) for b in nodes.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not failures, f"the cluster did not start: {failures[0]}"
        yield nodes
    finally:
        for broker in nodes.values():
            broker.stop()
        _remove_network()
        for path in (BROKER_CGROUP, DIRECT_CGROUP):
            try:
                cgroups.remove(cgroups.resolve(path))
            except cgroups.CgroupError:
                pass


class _Appliance(ApplianceProcess):
    @property
    def log(self) -> Path:
        return STATE / "serve.log"


def settings(allowed: list[str]) -> dict:
    return {
        "state_dir": str(STATE / "appliance"), "run_dir": "/run/appliance-test-cluster", "listen_port": 39390,
        "brokers": [BOOTSTRAP], "bpffs_dir": "/sys/fs/bpf/appliance-test-cluster",
        "proxy_cgroup": "appliance-test-cluster-proxy", "exempt_cgroups": [BROKER_CGROUP, DIRECT_CGROUP],
        "upstream_credentials": str(STATE / "broker-1" / "appliance-credentials.json"),
        "policy_file": str(STATE / "policy.yaml"), "audit_flush_ms": 50, "connect_timeout_s": 5,
        "broker_probe_interval_ms": 500, "discovery": {"allowed_networks": allowed},
    }


@pytest.fixture(scope="module")
def cluster_appliance(brokers):
    (STATE / "policy.yaml").write_text(POLICY)
    path = STATE / "appliance.yaml"
    path.write_text(yaml.safe_dump(settings(["10.231.8.0/29"])))
    app = _Appliance(path, load_config(path))
    app.start()
    yield app
    if app.proc.poll() is None:
        assert app.stop() == 0, f"appliance serve exited badly; log:\n{app.log.read_text()[-3000:]}"


@pytest.fixture
def workload(cluster_appliance, make_cgroup):
    enrolled = []

    def make(identity: str = "cluster-app"):
        cg = make_cgroup(identity)
        cli(cluster_appliance.config_path, "enroll", cg.cgroup.path, "--identity", identity)
        eventually(lambda: any(w["cgroup_id"] == cg.cgroup.id
                               for w in (cluster_appliance.status() or {}).get("workloads", [])),
                   timeout=5, message="enrolment applied")
        enrolled.append(cg)
        return cg

    yield make
    for cg in enrolled:
        cli(cluster_appliance.config_path, "unenroll", cg.cgroup.path, check=False)


def _admin(*args: str) -> dict[int, int]:
    """cluster_admin.py from the exempt cgroup, straight to the brokers: {partition: leader}."""
    creds = json.loads((STATE / "broker-1" / "appliance-credentials.json").read_text())
    direct = Cgroup(cgroups.ensure(DIRECT_CGROUP))
    try:
        out = direct.client("cluster_admin.py", ",".join(f"{a}:{PORT}" for a in NODES.values()),
                            f"{creds['mechanism']}:{creds['username']}:{creds['password']}", *args)
    finally:
        direct.procs.clear()
    return {int(p): leader for p, leader in out.items()}


def _leaders(topic: str) -> dict[int, int]:
    return _admin("leaders", topic)


def _create_topic(topic: str) -> dict[int, int]:
    _admin("create", topic, "3", "3")
    return eventually(lambda: (lambda leaders: leaders if -1 not in leaders.values() and len(leaders) == 3 else None)(
        _leaders(topic)), timeout=30, message="every partition has a leader")


def _broker_connections() -> list[tuple[str, int]]:
    """(destination, pid) of every TCP connection from this host to a cluster broker's client listener."""
    done = subprocess.run(["ss", "-Htnp", "state", "established", "dst", "10.231.8.0/29",
                           "dport", "=", str(PORT)], capture_output=True, text=True, check=True)
    out = []
    for line in done.stdout.splitlines():
        fields = line.split()
        pids = [int(pid) for pid in re.findall(r"pid=(\d+)", line)]
        peer = fields[3].replace("[::ffff:", "").replace("]", "") if len(fields) > 3 else line
        out.append((peer, pids[0] if pids else -1))
    return out


def _start(cg, family: str, topic: str) -> subprocess.Popen:
    return cg.popen([PY, str(CLIENTS / "cluster.py"), family, BOOTSTRAP, topic, "3", "20"],
                    stdin=subprocess.PIPE)


def _wait_phase(proc: subprocess.Popen, timeout: float = 120) -> dict:
    line = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.stdout.readline()
        if not text:
            break
        try:
            line = json.loads(text)
        except ValueError:
            continue
        return line
    proc.kill()
    raise AssertionError(f"client gave no phase line; stderr: {proc.stderr.read()[-3000:]}")


def _finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    try:
        out, err = proc.communicate("go\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"client did not finish; stdout: {out[-2000:]} stderr: {err[-3000:]}")
    assert proc.returncode == 0, f"client exited {proc.returncode}: {err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def test_every_client_family_fetches_from_each_partition_leader_through_the_appliance(cluster_appliance, workload):
    """librdkafka (kcat, confluent-kafka), kafka-python, aiokafka, franz-go and the Java 4.x consumer (classic
    and KIP-848): each consumer fetches from the three leaders, two of which it learned from Metadata."""
    from tests.integration.clients.families import FAMILIES

    config_path = cluster_appliance.config_path
    for name, family in FAMILIES.items():
        cg = workload()  # a cgroup per family: its sessions are told apart by it (a client may run under a wrapper)
        topic = f"fam-{name}"
        leaders = _create_topic(topic)
        assert sorted(leaders.values()) == [1, 2, 3], (name, leaders)
        consumer = family.consume(cg, BOOTSTRAP, topic, f"fam-{name}-{secrets.token_hex(2)}", n=30, timeout=60)
        assert consumer.wait_ready(60), (name, consumer.finish())
        produced = family.produce(cg, BOOTSTRAP, topic, n=30, fmt=f"{name}-{{i}}", timeout=40).finish()
        assert produced.summary["acked"] == 30 and not produced.summary["errors"], (name, produced)
        consumed = consumer.finish()
        assert sorted(consumed.summary["values"]) == sorted(f"{name}-{i}" for i in range(30)), (name, consumed)
        sessions = [s for s in audit(config_path, "sessions", "--identity", "cluster-app")
                    if s["enrolled_cgroup_id"] == cg.cgroup.id]
        assert {s["broker_address"] for s in sessions} == {f"{a}:{PORT}" for a in NODES.values()}, (name, sessions)
    connections = _broker_connections()
    assert {pid for _, pid in connections} == {cluster_appliance.proc.pid}, connections


def test_clients_reach_every_broker_through_the_appliance_and_follow_a_leader_that_is_killed(
        cluster_appliance, brokers, workload):
    app, config_path = cluster_appliance, cluster_appliance.config_path
    leaders = _create_topic(TOPIC)
    assert sorted(leaders.values()) == [1, 2, 3], f"partitions should be led by three brokers: {leaders}"
    cg = workload()
    clients = {family: _start(cg, family, TOPIC) for family in ("confluent", "kafka-python")}
    for family, proc in clients.items():
        assert _wait_phase(proc) == {"phase": "produced"}, family
    # Both other brokers were learned from the answers the proxy relayed, and steered.
    discovered = eventually(lambda: audit(config_path, "events", "--kind", "broker-discovered"),
                            message="brokers discovered")
    assert {json.loads(e["detail"])["broker"] for e in discovered} == {f"{NODES[2]}:{PORT}", f"{NODES[3]}:{PORT}"}
    assert sorted((app.status() or {})["discovered_brokers"]) == [f"{NODES[2]}:{PORT}", f"{NODES[3]}:{PORT}"]
    # Nothing from this host reaches a broker but the appliance's proxy.
    connections = _broker_connections()
    assert {pid for _, pid in connections} == {app.proc.pid}, connections
    assert {dst.rsplit(":", 1)[0] for dst, _ in connections} == set(NODES.values()), connections

    # The configured bootstrap broker leads a partition: kill it.
    killed = brokers[1]
    os.kill(killed._running_pid(), signal.SIGKILL)
    eventually(lambda: ((app.status() or {}).get("broker_states") or {}).get(BOOTSTRAP) == "down", timeout=15,
               message="the probe marking the killed broker down")
    new = eventually(lambda: (lambda ls: ls if 1 not in ls.values() and -1 not in ls.values() else None)(
        _leaders(TOPIC)), timeout=60, message="new leaders elected")
    results = {family: _finish(proc) for family, proc in clients.items()}
    for family, result in results.items():
        assert result["acked"] == {"0": 40, "1": 40, "2": 40}, (family, result)
        assert result["read"] == {"0": 40, "1": 40, "2": 40}, (family, result)
    connections = _broker_connections()
    assert {pid for _, pid in connections} <= {app.proc.pid}, connections

    # Every session is audited, to the brokers the clients were told of, and was the workload's.
    pids = {p.pid for p in clients.values()}
    sessions = eventually(lambda: (lambda rows: rows if rows and all(r["ended_at"] for r in rows) else None)(
        [r for r in audit(config_path, "sessions", "--identity", "cluster-app") if r["pid"] in pids]),
        message="every session of the clients closed in the audit")
    assert {s["pid"] for s in sessions} == pids
    # Every connect the kernel steered for this cgroup is an audited session (this test's clients were its only
    # processes), and none went to a broker directly: nothing else from the host held a broker connection.
    steered = next(w["steered"] for w in app.fresh_status()["workloads"] if w["cgroup_id"] == cg.cgroup.id)
    assert steered == len(sessions), (steered, len(sessions))
    assert {s["broker_address"] for s in sessions} == {f"{a}:{PORT}" for a in NODES.values()}
    produced = [o for o in audit(config_path, "operations", "--identity", "cluster-app", "--topic", TOPIC)
                if o["api_name"] == "Produce"]
    assert produced and {o["session_id"] for o in produced} <= {s["session_id"] for s in sessions}
    assert set(new.values()) <= {2, 3}


def _listed_brokers(cg, bootstrap: str) -> list[str]:
    """The brokers a librdkafka Metadata answer lists, asked from `cg` through `bootstrap`."""
    result = cg.run([PY, "-c", (
        "import json\n"
        "from confluent_kafka.admin import AdminClient\n"
        f"md = AdminClient({{'bootstrap.servers': '{bootstrap}'}}).list_topics(timeout=15)\n"
        "print(json.dumps(sorted(f'{b.host}:{b.port}' for b in md.brokers.values())))\n")])
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_broker_named_outside_the_allowed_networks_is_refused_to_enrolled_workloads(
        cluster_appliance, brokers, workload, make_cgroup):
    """Restarted allowing node 1 and 2 only: node 3, named in every Metadata answer, is audited and refused."""
    app = cluster_appliance
    for broker in brokers.values():
        broker.start(timeout=120)  # the previous test killed one
    assert app.stop() == 0
    (STATE / "appliance" / "discovered-brokers.json").unlink(missing_ok=True)
    app.config_path.write_text(yaml.safe_dump(settings([f"{NODES[1]}/32", f"{NODES[2]}/32"])))
    app.start()
    cg = workload()
    outside = f"{NODES[3]}:{PORT}"
    asked = cg.client("raw.py", "ask", NODES[1], str(PORT))  # ApiVersions: no broker list yet
    assert asked["errno"] == 0
    assert _listed_brokers(cg, BOOTSTRAP) == sorted(f"{a}:{PORT}" for a in NODES.values())
    refused = eventually(lambda: audit(app.config_path, "events", "--kind", "discovery-refused"),
                         message="the broker outside audited")
    assert [json.loads(e["detail"])["broker"] for e in refused] == [outside]
    connect = cg.client("raw.py", "connect", NODES[3], str(PORT))
    assert connect["error"] == "ECONNREFUSED", connect
    events = eventually(lambda: [e for e in audit(app.config_path, "events", "--kind", "refused-connect")
                                 if outside in e["message"]], message="the refused connect audited")
    assert json.loads(events[0]["detail"])["reason"] == "outside"
    # A process that is not enrolled is not this appliance's to refuse there.
    stranger = make_cgroup("cluster-stranger")
    assert stranger.client("raw.py", "connect", NODES[3], str(PORT)).get("errno") == 0


def _hosts_entry(name: str, address: str | None) -> None:
    """Point `name` at `address` in /etc/hosts (None: remove it); other lines are left as they are."""
    hosts = Path("/etc/hosts")
    lines = [line for line in hosts.read_text().splitlines() if name not in line.split()]
    if address is not None:
        lines.append(f"{address} {name}")
    hosts.write_text("\n".join(lines) + "\n")


def test_a_broker_given_by_name_is_resolved_again_and_its_new_address_steered(cluster_appliance, brokers, workload):
    """`brokers` names the bootstrap by DNS name (/etc/hosts here); the name moves and serve follows it."""
    app = cluster_appliance
    for broker in brokers.values():
        broker.start(timeout=120)
    name = f"cluster-{secrets.token_hex(3)}.appliance-test"
    by_name = f"{name}:{PORT}"
    _hosts_entry(name, NODES[1])
    try:
        assert app.stop() == 0
        (STATE / "appliance" / "discovered-brokers.json").unlink(missing_ok=True)
        app.config_path.write_text(yaml.safe_dump({**settings(["10.231.8.0/29"]), "brokers": [by_name],
                                                   "broker_resolve_interval_s": 1}))
        app.start()
        assert app.status()["broker_names"] == {by_name: [NODES[1]]}
        _hosts_entry(name, NODES[2])
        eventually(lambda: (app.status() or {}).get("broker_names") == {by_name: [NODES[2]]}, timeout=10,
                   message="the name resolved again")
        resolved = audit(app.config_path, "events", "--kind", "broker-resolved")
        assert sorted(json.loads(e["detail"])["address"] for e in resolved) == sorted(f"{a}:{PORT}" for a in NODES.values()
                                                                                   if a in (NODES[1], NODES[2]))
        cg = workload()
        asked = cg.client("raw.py", "ask", NODES[2], str(PORT))  # no Metadata yet: steered by the name alone
        assert asked["errno"] == 0 and asked["reply_bytes"] > 0, asked
        result = cg.client("confluent.py", by_name, "cluster-by-name", "--create", "--produce", "5", "--consume", "5")
        assert result["errors"] == [] and result["consumed"] == 5, result
        sessions = eventually(lambda: audit(app.config_path, "sessions", "--identity", "cluster-app"),
                              message="sessions audited")
        assert f"{NODES[2]}:{PORT}" in {s["broker_address"] for s in sessions}
    finally:
        _hosts_entry(name, None)


FORGET_AFTER_S = 8


def _kernel_brokers() -> dict[str, int]:
    """Every entry of this appliance's pinned `brokers` map, read from the kernel: "IP:PORT" -> its state."""
    import ctypes

    from appliance.steering import kernel as K
    from appliance.steering import structs as S

    found = K.pinned_map(Path(settings([])["bpffs_dir"]) / f"{K.PIN_PREFIX}brokers")
    assert found is not None, "the appliance's brokers map is not pinned"
    fd, info = found
    try:
        value, out = ctypes.create_string_buffer(info.value_size), {}
        for key in K.map_keys(fd, info.key_size):
            if K.lib.bpf_lookup_elem(fd, key, value) == 0:
                a = S.Addr.from_buffer_copy(key)
                out[f"{S.addr_host(a)}:{a.port}"] = int.from_bytes(value.raw[:4], "little")
        return out
    finally:
        os.close(fd)


def _events(app, kind: str, broker: str, after: float = 0.0) -> list[dict]:
    return [e for e in audit(app.config_path, "events", "--kind", kind)
            if json.loads(e["detail"])["broker"] == broker and e["at"] > after]


def test_a_broker_gone_for_good_is_forgotten_and_learned_again_when_it_returns(cluster_appliance, brokers, workload):
    """forget_after_s 8: node 3 stops for good while a workload's Metadata keeps flowing without it, and it is
    forgotten (audit, status, kernel, the saved set); restarted, the next Metadata naming it steers it again
    and a workload reaches it through the proxy."""
    app = cluster_appliance
    for broker in brokers.values():
        broker.start(timeout=120)
    assert app.stop() == 0
    saved = STATE / "appliance" / "discovered-brokers.json"
    saved.unlink(missing_ok=True)
    app.config_path.write_text(yaml.safe_dump({**settings(["10.231.8.0/29"]), "discovery": {
        "allowed_networks": ["10.231.8.0/29"], "forget_after_s": FORGET_AFTER_S}}))
    app.start()
    gone = f"{NODES[3]}:{PORT}"
    cg = workload()
    loop = cg.popen([PY, str(CLIENTS / "metadata_loop.py"), NODES[1], str(PORT), "0.5"], stdin=subprocess.PIPE)
    try:
        eventually(lambda: gone in ((app.status() or {}).get("discovered_brokers") or []), timeout=15,
                   message="node 3 discovered from the workload's Metadata")
        assert _kernel_brokers()[gone] == 1  # steered, UP
        stopped = time.time()
        brokers[3].stop()
        [forgotten] = eventually(lambda: _events(app, "broker-forgotten", gone), timeout=FORGET_AFTER_S + 45,
                                 interval=0.5, message="node 3 forgotten")
        detail = json.loads(forgotten["detail"])
        assert detail["was"] == "steered" and detail["forget_after_s"] == FORGET_AFTER_S, detail
        assert detail["listed_with"] in {f"{NODES[1]}:{PORT}", f"{NODES[2]}:{PORT}"}, detail
        assert detail["left_out_at"] - detail["last_named_at"] >= FORGET_AFTER_S, detail
        # Not merely quiet: the workload's Metadata (every 0.5 s) named it until it stopped, the window ran from
        # there, and only a Metadata answer a whole window later that still left it out counted.
        assert detail["last_named_at"] >= stopped - 1 and forgotten["at"] - detail["last_named_at"] >= FORGET_AFTER_S
        status = app.fresh_status()
        assert gone not in status["discovered_brokers"] and gone not in status["broker_states"], status
        assert status["discovered_brokers"] == [f"{NODES[2]}:{PORT}"] and status["forgotten_brokers"] == 1
        assert gone not in _kernel_brokers()
        assert [NODES[3], PORT] not in json.loads(saved.read_text())["steered"]

        brokers[3].start(timeout=120)
        [learned] = eventually(lambda: _events(app, "broker-discovered", gone, after=forgotten["at"]), timeout=60,
                               interval=0.5, message="node 3 learned again from the workload's Metadata")
        assert json.loads(learned["detail"])["named_in"] == "Metadata v12 response"
        assert _kernel_brokers()[gone] == 1
        assert gone in app.fresh_status()["discovered_brokers"]
        assert _listed_brokers(cg, gone) == sorted(f"{a}:{PORT}" for a in NODES.values())
        sessions = eventually(lambda: [s for s in audit(app.config_path, "sessions", "--identity", "cluster-app")
                                       if s["broker_address"] == gone and s["started_at"] > learned["at"]
                                       and s["enrolled_cgroup_id"] == cg.cgroup.id and s["requests"]],
                              message="the session to node 3 audited")
        assert sessions
        assert {pid for _, pid in _broker_connections()} <= {app.proc.pid}
    finally:
        out, err = loop.communicate("", timeout=30)
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert lines[-1]["errors"] == [] and lines[-1]["answers"] > 2 * FORGET_AFTER_S, (lines, err[-2000:])
    seen = [line["brokers"] for line in lines[:-1]]
    everyone = sorted(f"{a}:{PORT}" for a in NODES.values())
    assert seen[0] == everyone and seen[-1] == everyone, seen
    assert sorted(f"{a}:{PORT}" for a in (NODES[1], NODES[2])) in seen, seen
