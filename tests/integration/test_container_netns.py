"""Workloads in a container-style network namespace reach their broker through the appliance.

The namespace is made the way Docker's bridge makes one: a veth pair to the
host, addresses on both ends, a default route via the host end, loopback up.
The host routes it to the remote broker (tests/integration/fixtures.py
`remote_broker`, itself in a namespace behind a veth), so a process in the
container could reach the broker directly if steering let it: every refusal
here is steering's doing, which the exempt cgroup's direct connect proves.

Every client family (tests/integration/clients/families.py, and the Java admin client) makes a round
trip from inside the container, each in a cgroup of its own enrolled as `container-family`: its sessions
must be attributed to that identity, that cgroup, the container's namespace and the broker, and the
audit must count what it produced and fetched. An unenrolled franz-go in the same namespace is refused,
audited, and produces nothing.
"""

from __future__ import annotations

import errno
import json
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import NetNS

from tests.integration.clients.families import (ADMIN_REQUESTS, FAMILIES, admin_failure, java_admin, run_parallel,
                                                tail_round_trip)
from tests.integration.conftest import (BROKER_NETNS, CLIENTS, NETNS, NETNS_HOST, NETNS_PEER, PY, VETH_HOST, Cgroup,
                                        audit, cli, enrol_cgroup, eventually, make_veth_netns, remove_veth_netns,
                                        traffic_until)

CONTAINER = "appliance-test-ctr"
CTR_HOST, CTR_PEER, CTR_NET = "10.231.1.1", "10.231.1.2", "10.231.1.0"
VETH_CTR_HOST, VETH_CTR_PEER = "appl-ctr-h", "appl-ctr-p"
PROXY_PORT = "39190"
SQUAT = """
import json, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print(json.dumps({"ready": True}), flush=True)
s.settimeout(float(sys.argv[2]))
got = 0
try:
    while True:
        s.accept()[0].close()
        got += 1
except OSError:
    pass
print(json.dumps({"received": got}), flush=True)
"""


@dataclass(frozen=True)
class InContainer:
    """A cgroup whose processes start inside the container's namespace, for the families' clients
    (they start their processes with `popen`; the command they print leaves out the `ip netns exec`)."""

    cgroup: Cgroup
    container: "Container"

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return self.cgroup.popen(self.container.argv(*argv), **kwargs)


@dataclass(frozen=True)
class Container:
    name: str
    inode: int

    @property
    def netns(self) -> str:
        return f"net:[{self.inode}]"

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def inside(self, cgroup: Cgroup) -> InContainer:
        return InContainer(cgroup, self)

    def client(self, cgroup: Cgroup, script: str, *args: str, timeout: float = 60) -> dict:
        """Run one of tests/integration/clients/ inside this namespace AND `cgroup`; the JSON it prints last."""
        result = cgroup.run(self.argv(PY, str(CLIENTS / script), *args), timeout=timeout)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def squat(self, cgroup: Cgroup, seconds: float) -> subprocess.Popen:
        """A process listening on 127.0.0.1:<proxy port> inside the namespace; prints how many it accepted."""
        proc = cgroup.popen(self.argv(PY, "-c", SQUAT, PROXY_PORT, str(seconds)))
        assert json.loads(proc.stdout.readline() or "{}") == {"ready": True}, proc.stderr.read()
        return proc


def _forwarding(interface: str, value: str) -> None:
    # Per interface, so the host forwards only between the test's own veths.
    Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding").write_text(value)


@pytest.fixture(scope="module")
def container(remote_broker):
    make_veth_netns(CONTAINER, VETH_CTR_HOST, VETH_CTR_PEER, CTR_HOST, CTR_PEER, default_route=True)
    with NetNS(NETNS) as ns:  # the broker's namespace answers the container through the host
        ns.route("add", dst=f"{CTR_NET}/30", gateway=NETNS_HOST)
    for interface in (VETH_CTR_HOST, VETH_HOST):
        _forwarding(interface, "1")
    yield Container(CONTAINER, Path(f"/run/netns/{CONTAINER}").stat().st_ino)
    _forwarding(VETH_HOST, "0")
    remove_veth_netns(CONTAINER, VETH_CTR_HOST)


def listening_in(appliance, container: Container) -> bool:
    return any(n["netns"] == container.netns for n in (appliance.status() or {}).get("netns_listeners", []))


def broker_up(appliance) -> bool:
    return ((appliance.status() or {}).get("broker_states") or {}).get(BROKER_NETNS) == "up"


def events_since(config_path, kind: str, since: float) -> list[dict]:
    return [e for e in audit(config_path, "events", "--kind", kind) if e["at"] >= since]


def test_an_enrolled_workload_in_the_container_produces_through_the_proxy(appliance, config_path, container, enroll,
                                                                          direct):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    reached = container.client(direct, "raw.py", "connect", NETNS_PEER, "39092")
    assert reached["errno"] == 0 and reached["peer"] == [NETNS_PEER, 39092]  # routable from the container
    workload = enroll("container-app")
    workload.popen(container.argv("sleep", "60"))  # the namespace keeps an enrolled process after the client exits
    t = f"ctr-{secrets.token_hex(3)}"
    # The client's first connect may come before the appliance listens there (refused, foreign_netns);
    # librdkafka retries, and the appliance opens its listener within one maintenance step of that refusal.
    result = container.client(workload, "confluent.py", BROKER_NETNS, t, "--produce", "10", "--consume", "10",
                              "--timeout", "40", timeout=90)
    assert result["errors"] == [] and result["consumed"] == 10, result
    sessions = eventually(lambda: audit(config_path, "sessions", "--identity", "container-app"), message="sessions")
    assert {s["netns"] for s in sessions} == {container.netns}
    assert {s["broker_address"] for s in sessions} == {BROKER_NETNS}
    assert {s["cgroup_path"] for s in sessions} == {workload.cgroup.path}
    cookies = {s["netns_cookie"] for s in sessions}
    assert len(cookies) == 1 and None not in cookies
    (listener,) = [n for n in appliance.status()["netns_listeners"] if n["netns"] == container.netns]
    assert listener["netns_cookie"] in cookies
    assert container.netns in cli(config_path, "status").stdout
    assert [e for e in audit(config_path, "events", "--kind", "netns-listen") if container.netns in e["message"]]


def test_an_unenrolled_process_in_the_container_is_refused_and_audited(appliance, config_path, container,
                                                                        make_cgroup):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    outsider = make_cgroup("ctr-outsider")
    refused = container.client(outsider, "raw.py", "connect", NETNS_PEER, "39092")
    assert refused["error"] == "ECONNREFUSED", refused
    (event,) = eventually(lambda: [e for e in audit(config_path, "events", "--kind", "refused-connect")
                                   if e["cgroup_path"] == outsider.cgroup.path], message="the refusal audited")
    assert json.loads(event["detail"])["reason"] == "unenrolled"
    assert event["pid"] == refused["pid"]


def test_a_direct_connect_to_the_proxy_port_in_the_container_gets_no_session(appliance, config_path, container,
                                                                             enroll, make_cgroup):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    holder = enroll("container-holder")
    holder.popen(container.argv("sleep", "120"))
    eventually(lambda: listening_in(appliance, container), message="the appliance listening in the container")
    outsider = make_cgroup("ctr-direct")
    squatter = container.squat(outsider, seconds=8)  # the proxy's port inside, bound by the container
    started = time.time()
    probe = container.client(outsider, "raw.py", "garbage", "127.0.0.1", PROXY_PORT)
    assert probe["errno"] == 0 and probe.get("read", 0) == 0, probe  # the proxy's socket took it, and closed it
    refused = eventually(lambda: [e for e in events_since(config_path, "refused-session", started)
                                  if "not steered by the kernel" in e["message"]], message="the direct connect refused")
    assert refused
    assert [s for s in audit(config_path, "sessions") if s["cgroup_path"] == outsider.cgroup.path] == []
    # The enrolled workload's own connects still reach the proxy, not the process bound to its port.
    asked = container.client(holder, "raw.py", "ask", NETNS_PEER, "39092")
    assert asked["errno"] == 0 and asked["reply_bytes"] > 0 and asked["peer"] == [NETNS_PEER, 39092]
    eventually(lambda: [s for s in audit(config_path, "sessions", "--identity", "container-holder")
                        if s["netns"] == container.netns], message="the holder's session")
    out, _ = squatter.communicate(timeout=20)
    assert json.loads(out.strip().splitlines()[-1]) == {"received": 0}


def test_with_the_appliance_down_nothing_in_the_container_reaches_the_broker_or_the_proxy_port(
        appliance, config, container, enroll, make_cgroup):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    holder = enroll("container-holder")
    holder.popen(container.argv("sleep", "120"))
    eventually(lambda: listening_in(appliance, container), message="the appliance listening in the container")
    outsider = make_cgroup("ctr-down")
    appliance.kill()  # kill -9: the programs and the namespace's sk_lookup link stay, its listener goes
    try:
        squatter = container.squat(outsider, seconds=6)
        refused = container.client(holder, "raw.py", "connect", NETNS_PEER, "39092")
        assert refused["errno"] == errno.ECONNREFUSED, refused
        direct = container.client(outsider, "raw.py", "connect", "127.0.0.1", PROXY_PORT)
        assert direct["errno"] == errno.ECONNREFUSED, direct
        out, _ = squatter.communicate(timeout=20)
        assert json.loads(out.strip().splitlines()[-1]) == {"received": 0}
        assert list(config.bpffs_dir.glob("link_sklookup_ns*")), "the namespace's link outlives the process"
    finally:
        appliance.start()
    eventually(lambda: listening_in(appliance, container), message="listening in the container again")
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    back = container.client(holder, "raw.py", "ask", NETNS_PEER, "39092")
    assert back["errno"] == 0 and back["reply_bytes"] > 0

    assert appliance.stop() == 0  # an orderly stop takes the namespace's link and listener away too
    try:
        assert not list(config.bpffs_dir.glob("link_sklookup_ns*"))
        gone = container.client(outsider, "raw.py", "connect", "127.0.0.1", PROXY_PORT)
        assert gone["errno"] == errno.ECONNREFUSED, gone
    finally:
        appliance.start()


# --- a workload making namespaces of its own --------------------------------------------------------------

# Any uid makes a network namespace of its own (a user namespace owns it) and brings its loopback up: no
# capability on the host is needed. `unshare` execs the shell and the shell execs sleep, so the process the
# test started is the one in the namespace.
OWN_NETNS = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             "unshare", "--user", "--map-root-user", "--net", "sh", "-c", "ip link set lo up && exec sleep 120"]
HOARDED = 34  # beyond the kernel programs' 32 slots
LIMIT = 4  # max_netns_per_workload's default
LATER = "appliance-test-later"


@pytest.fixture
def later_netns():
    """A namespace of a container started after the hoarder: loopback up, no route anywhere."""
    subprocess.run(["ip", "netns", "add", LATER], check=True)
    subprocess.run(["ip", "-n", LATER, "link", "set", "lo", "up"], check=True)
    yield Container(LATER, Path(f"/run/netns/{LATER}").stat().st_ino)
    subprocess.run(["ip", "netns", "del", LATER], check=False)


def test_a_workload_making_namespaces_of_its_own_keeps_to_its_bound_and_a_later_container_is_listened_in(
        appliance, config_path, remote_broker, enroll, later_netns):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    host_netns = Path("/proc/self/ns/net").stat().st_ino
    hoarder = enroll("ns-hoarder")
    procs = [hoarder.popen(OWN_NETNS) for _ in range(HOARDED)]

    def namespaces() -> dict[int, int]:  # pid -> its namespace, once every one is in its own
        inodes = {p.pid: Path(f"/proc/{p.pid}/ns/net").stat().st_ino for p in procs if p.poll() is None}
        return inodes if len(set(inodes.values()) - {host_netns}) == HOARDED else {}

    hoarded = eventually(namespaces, timeout=20, message=f"{HOARDED} namespaces of the hoarder's own")

    def hoarders_listeners(status: dict | None = None) -> list[dict]:
        status = status or appliance.status() or {}
        return [n for n in status.get("netns_listeners", []) if n["cgroup_path"] == hoarder.cgroup.path]

    def settled() -> bool:  # every namespace seen: LIMIT listened in, the rest counted beyond the bound
        status = appliance.status() or {}
        beyond = status.get("netns_beyond_limit", {}).get(hoarder.cgroup.path)
        return beyond == HOARDED - LIMIT and len(hoarders_listeners(status)) == LIMIT

    eventually(settled, timeout=20, message="the hoarder held to its bound")
    listened = {int(n["netns"][5:-1]) for n in hoarders_listeners()}
    assert listened <= set(hoarded.values())
    limits = [e for e in audit(config_path, "events", "--kind", "netns-limit")
              if json.loads(e["detail"])["cgroup_path"] == hoarder.cgroup.path]
    assert limits and len(limits) <= 6, limits  # a handful of events, not one a namespace
    detail = json.loads(limits[-1]["detail"])
    assert detail["limit"] == LIMIT and detail["beyond"] <= HOARDED - LIMIT
    assert f"beyond its max_netns_per_workload ({LIMIT})" in limits[-1]["message"]
    assert "more network namespace(s) of " + hoarder.cgroup.path in cli(config_path, "status").stdout

    # The hoarder's connect from a namespace beyond its bound is refused in the kernel, and audited.
    outside_pid = next(pid for pid, inode in hoarded.items() if inode not in listened)
    refused = hoarder.run(["nsenter", f"--net=/proc/{outside_pid}/ns/net", PY, str(CLIENTS / "raw.py"), "connect",
                           NETNS_PEER, "39092"])
    refused = json.loads(refused.stdout.strip().splitlines()[-1])
    assert refused["error"] == "ECONNREFUSED", refused
    eventually(lambda: [e for e in audit(config_path, "events", "--kind", "refused-connect")
                        if e["pid"] == refused["pid"] and json.loads(e["detail"])["reason"] == "foreign_netns"],
               message="the hoarder's refusal audited")
    assert len(hoarders_listeners(appliance.fresh_status())) == LIMIT  # the refusal opened none beyond the bound

    # A container enrolled after the hoarder gets its listener, and its workload a session through the proxy.
    workload = enroll("container-after-hoarder")
    workload.popen(later_netns.argv("sleep", "60"))
    eventually(lambda: listening_in(appliance, later_netns), timeout=10, message="listening in the later container")
    asked = later_netns.client(workload, "raw.py", "ask", NETNS_PEER, "39092")
    assert asked["errno"] == 0 and asked["reply_bytes"] > 0, asked
    eventually(lambda: [s for s in audit(config_path, "sessions", "--identity", "container-after-hoarder")
                        if s["netns"] == later_netns.netns], message="the later container's session")

    # When the hoarder leaves a namespace the proxy listens in, one of the others takes its place.
    (gone,) = [p for p in procs if hoarded[p.pid] == min(listened)]
    gone.kill()
    gone.wait()
    eventually(lambda: len(hoarders_listeners()) == LIMIT and min(listened) not in
               {int(n["netns"][5:-1]) for n in hoarders_listeners()}, timeout=10,
               message="a namespace beyond the bound listened in once there was room")


# --- every client family from inside the container ------------------------------------------------------

FAMILY_IDENTITY = "container-family"
SUFFIX = secrets.token_hex(3)
N = 5
CELLS = [*FAMILIES, "java-admin"]
TOPICS = {**{cell: f"ctr-{cell}-{SUFFIX}" for cell in CELLS}, "attacked": f"ctr-attacked-{SUFFIX}"}
END_OFFSET = """
import json, sys
from confluent_kafka import Consumer, TopicPartition
mech, user, password = sys.argv[2].split(":", 2)
consumer = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "end-offset", "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanism": mech, "sasl.username": user, "sasl.password": password})
print(json.dumps({"end": consumer.get_watermark_offsets(TopicPartition(sys.argv[3], 0), timeout=10)[1]}))
"""


@pytest.fixture(scope="module")
def family_workloads(appliance, config_path, container, direct, sasl_args):
    """A cgroup per cell, enrolled as container-family, and the module's topics on the remote broker; an
    enrolled process holds the container's namespace, so the appliance listens there before any client
    starts (aiokafka gives up at once when its first bootstrap connect is refused)."""
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    direct.run([PY, str(CLIENTS / "create_topics.py"), BROKER_NETNS, sasl_args[1], *TOPICS.values()], timeout=90)
    cgs = {cell: enrol_cgroup(appliance, config_path, f"ctr-{cell}-{SUFFIX}", FAMILY_IDENTITY) for cell in CELLS}
    cgs["java-admin"].popen(container.argv("sleep", "600"))
    eventually(lambda: listening_in(appliance, container), message="the appliance listening in the container")
    yield cgs
    for cg in cgs.values():
        cli(config_path, "unenroll", cg.cgroup.path, check=False)
        cg.cleanup()


@pytest.fixture(scope="module")
def container_trips(family_workloads, container):
    """Every family's round trip from inside the container at once; then the Java admin's calls (which describe
    the java-classic consumer's group)."""
    def trip(name: str):
        return tail_round_trip(FAMILIES[name], container.inside(family_workloads[name]), BROKER_NETNS, TOPICS[name],
                               f"ctr-g-{name}-{SUFFIX}", n=N, fmt=f"{name}-ctr-{{i}}")

    def admin():
        return java_admin(container.inside(family_workloads["java-admin"]), BROKER_NETNS, timeout=8,
                          allowed=TOPICS["java-admin"], denied=f"ctr-absent-{SUFFIX}", new_topic=f"ctr-new-{SUFFIX}",
                          new_denied=f"ctr-new2-{SUFFIX}", group=f"ctr-g-java-classic-{SUFFIX}",
                          denied_group=f"ctr-absent-{SUFFIX}").finish()

    trips = run_parallel({name: (lambda name=name: trip(name)) for name in FAMILIES})
    return {**trips, "java-admin": admin()}


def attributed_sessions(appliance, config_path, container, cg: Cgroup) -> list[dict]:
    """The sessions from `cg`; each must be container-family's, from that cgroup in the container's namespace
    (the cookie of the appliance's listener there), to the remote broker."""
    sessions = [s for s in audit(config_path, "sessions", "--identity", FAMILY_IDENTITY)
                if s["cgroup_id"] == cg.cgroup.id]
    (listener,) = [n for n in appliance.status()["netns_listeners"] if n["netns"] == container.netns]
    assert sessions, f"no sessions audited from {cg.cgroup.path}"
    assert {(s["cgroup_path"], s["netns"], s["netns_cookie"], s["broker_address"]) for s in sessions} == {
        (cg.cgroup.path, container.netns, listener["netns_cookie"], BROKER_NETNS)}, sessions
    return sessions


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_in_the_container_produces_and_consumes_attributed_and_audited(
        family, container_trips, family_workloads, appliance, config_path, container):
    failure = container_trips[family].failure()
    if failure:
        pytest.fail(failure)
    cg = family_workloads[family]
    attributed_sessions(appliance, config_path, container, cg)
    # the audit counts every record produced (in the Produce requests) and fetched (in the responses), in
    # operations that name the topic (a fetch session's incremental requests name none; the responses do)
    traffic_until(config_path, cg, lambda t: t.get("Produce") == N and t.get("Fetch", 0) >= N,
                  f"{family}'s {N} records produced and fetched in the audit", topic=TOPICS[family])


def test_the_java_admin_client_in_the_container_is_answered_attributed_and_audited(
        container_trips, family_workloads, appliance, config_path, container):
    failure = admin_failure(container_trips["java-admin"], TOPICS["java-admin"])
    if failure:
        pytest.fail(failure)
    cg = family_workloads["java-admin"]
    attributed_sessions(appliance, config_path, container, cg)
    traffic_until(config_path, cg, lambda t: ADMIN_REQUESTS <= set(t), "the admin's requests in the audit")


@pytest.mark.parametrize("family", ["franz-go"])
def test_an_unenrolled_client_in_the_container_is_refused_audited_and_produces_nothing(
        family, family_workloads, appliance, config_path, container, make_cgroup, direct, sasl_args):
    attacker = make_cgroup("ctr-attacker")
    started = time.time()
    client = FAMILIES[family].produce(container.inside(attacker), BROKER_NETNS, TOPICS["attacked"], n=3,
                                      fmt="stolen-{i}", timeout=8)
    result = client.finish()
    assert result.summary["acked"] == 0 and result.summary["errors"], result
    refusals = eventually(lambda: [e for e in events_since(config_path, "refused-connect", started)
                                   if e["cgroup_path"] == attacker.cgroup.path], message="the refusals audited")
    assert {(json.loads(e["detail"])["reason"], e["pid"]) for e in refusals} == {("unenrolled", client.proc.pid)}
    assert [s for s in audit(config_path, "sessions") if s["cgroup_id"] == attacker.cgroup.id] == []
    end = json.loads(direct.run([PY, "-c", END_OFFSET, BROKER_NETNS, sasl_args[1], TOPICS["attacked"]]).stdout)
    assert end == {"end": 0}, f"the unenrolled client's records reached the broker: {end}"
