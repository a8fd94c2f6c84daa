"""Attacks on max_netns_per_workload (appliance/workload_netns.py, docs/data-path.md "Workloads in their own
network namespace"): a workload getting more listeners than its bound, another workload losing its listener or
being charged, and the maintenance step made slow, with real processes against the real appliance.

Each namespace below is made the way any uid can (OWN_NETNS in test_container_netns): a user namespace owns it.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from appliance.identity import cgroups
from tests.integration.conftest import NETNS_PEER, PY, WORKLOAD_PARENT, Cgroup, cli, eventually
from tests.integration.test_container_netns import LIMIT, OWN_NETNS, broker_up

HOST_NETNS = Path("/proc/self/ns/net").stat().st_ino
AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def netns_of(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}/ns/net").stat().st_ino
    except OSError:
        return None


def own_namespaces(procs: list[subprocess.Popen], n: int) -> dict[int, int]:
    """pid -> namespace, once each of the n processes is in a namespace of its own."""
    def ready():
        inodes = {p.pid: netns_of(p.pid) for p in procs if p.poll() is None}
        return inodes if len(set(inodes.values()) - {HOST_NETNS, None}) == n else {}
    return eventually(ready, timeout=20, message=f"{n} namespaces of their own")


def listeners_by_cgroup(status: dict | None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for n in (status or {}).get("netns_listeners", []):
        out.setdefault(n["cgroup_path"], set()).add(n["netns"])
    return out


def watch_listeners(appliance, seconds: float) -> dict[str, int]:
    """The most listeners charged to each cgroup in any status snapshot over `seconds`."""
    most: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path, inodes in listeners_by_cgroup(appliance.status()).items():
            most[path] = max(most.get(path, 0), len(inodes))
        time.sleep(0.2)
    return most


# --- nested cgroups under the enrolled one ---------------------------------------------------------------

def test_namespaces_made_in_unenrolled_cgroups_below_an_enrolled_one_count_against_it(appliance, enroll,
                                                                                       remote_broker):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    hoarder = enroll("ns-nested")
    subs = [Cgroup(cgroups.ensure(f"{hoarder.cgroup.path}/sub{i}")) for i in range(3)]
    try:
        procs = [sub.popen(OWN_NETNS) for sub in subs for _ in range(3)]
        own_namespaces(procs, 9)
        eventually(lambda: (appliance.status() or {}).get("netns_beyond_limit", {}).get(hoarder.cgroup.path)
                   == 9 - LIMIT, timeout=15, message="the namespaces beyond the bound counted against the parent")
        most = watch_listeners(appliance, 3)
        assert most.get(hoarder.cgroup.path) == LIMIT, most
        assert not any(s.cgroup.path in most for s in subs), most  # the unenrolled children are not charged
    finally:
        for sub in subs:
            sub.cleanup()


# --- namespaces passed between two enrolled cgroups ------------------------------------------------------

def test_namespaces_passed_between_two_enrolled_cgroups_take_neither_past_its_bound(appliance, enroll,
                                                                                    remote_broker):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    a, b = enroll("ns-pass-a"), enroll("ns-pass-b")
    first = [a.popen(OWN_NETNS) for _ in range(LIMIT)]
    made = own_namespaces(first, LIMIT)
    eventually(lambda: len(listeners_by_cgroup(appliance.status()).get(a.cgroup.path, ())) == LIMIT, timeout=10,
               message="A listened in its 4")
    # B joins A's namespaces (setns), A leaves them and makes 4 more, then joins B's again, then B leaves.
    joined = [b.popen(["nsenter", f"--net=/proc/{pid}/ns/net", "sleep", "120"]) for pid in made]
    time.sleep(0.5)
    for p in first:
        p.kill()
        p.wait()
    second = [a.popen(OWN_NETNS) for _ in range(LIMIT)]
    again = own_namespaces(second, LIMIT)
    most = watch_listeners(appliance, 5)
    assert most.get(a.cgroup.path, 0) <= LIMIT and most.get(b.cgroup.path, 0) <= LIMIT, most
    back = [a.popen(["nsenter", f"--net=/proc/{p.pid}/ns/net", "sleep", "120"]) for p in joined]
    time.sleep(0.5)
    for p in joined:
        p.kill()
        p.wait()
    most2 = watch_listeners(appliance, 5)
    assert most2.get(a.cgroup.path, 0) <= LIMIT, most2
    final = listeners_by_cgroup(appliance.fresh_status())
    assert final.get(a.cgroup.path) == {f"net:[{i}]" for i in again.values()}, final
    assert b.cgroup.path not in final, final
    del back


# --- refusals from a namespace beyond the bound, with many enrolled cgroups ------------------------------

# Forks N processes in a namespace of its own (beyond its workload's bound, so its connects stay refused,
# foreign_netns); each connects to the broker about once a second.
FLOODER = r"""
import os, random, socket, sys, time
n, host, port, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + seconds
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        random.seed(os.getpid())
        time.sleep(random.random())
        while time.monotonic() < end:
            s = socket.socket()
            try:
                s.connect((host, port))
            except OSError:
                pass
            s.close()
            time.sleep(1.0)
        os._exit(0)
    kids.append(pid)
print("forked", flush=True)
for pid in kids:
    os.waitpid(pid, 0)
"""

# Asks the proxy (steered from the host namespace) ApiVersions once every 100 ms; prints each round trip.
PROBER = r"""
import json, socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
trips = []
body = struct.pack(">hhih", 18, 0, 1, 5) + b"probe"
while time.monotonic() < end:
    t = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=20)
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
        s.recv(size, socket.MSG_WAITALL)
        s.close()
    except OSError:
        pass
    trips.append(time.monotonic() - t)
    time.sleep(0.1)
print(json.dumps({"trips": trips}))
"""

MANY = 300  # enrolled cgroups, by one pattern (a host running that many containers)
FLOOD = 1024  # processes refused; _PENDING_MAX takes this many pids per maintenance step


def probe(cg: Cgroup, seconds: float) -> list[float]:
    out = cg.run([PY, "-c", PROBER, NETNS_PEER, "39092", str(seconds)], timeout=seconds + 60).stdout
    return json.loads(out.strip().splitlines()[-1])["trips"]


@pytest.fixture
def many_enrolled(appliance, config_path):
    parent = f"{WORKLOAD_PARENT}/att12-many-{secrets.token_hex(3)}"
    made = [Cgroup(cgroups.ensure(f"{parent}/c{i:03d}")) for i in range(MANY)]
    pattern = f"/{parent}/c*"
    cli(config_path, "enroll", "--glob", pattern, "--identity", "many")
    ids = {c.cgroup.id for c in made}
    eventually(lambda: len(ids & {w["cgroup_id"] for w in (appliance.status() or {}).get("workloads", [])})
               == MANY, timeout=15, message=f"{MANY} cgroups enrolled by the pattern")
    yield made
    cli(config_path, "unenroll", pattern, check=False)
    for c in made:
        c.cleanup()
    cgroups.remove(cgroups.resolve(parent))


def test_refusals_from_a_namespace_beyond_the_bound_do_not_stall_the_proxy(appliance, enroll, remote_broker,
                                                                            many_enrolled):
    eventually(lambda: broker_up(appliance), message="remote broker seen as reachable")
    victim = enroll("stall-victim")
    baseline = probe(victim, 3)
    assert max(baseline) < 1.0, f"the proxy is slow before any attack: {max(baseline):.2f}s"
    flooder = enroll("stall-flooder")
    own_namespaces([flooder.popen(OWN_NETNS) for _ in range(LIMIT)], LIMIT)  # its bound taken: the next is refused
    eventually(lambda: len(listeners_by_cgroup(appliance.status()).get(flooder.cgroup.path, ())) == LIMIT,
               timeout=10, message="the flooder's first namespaces listened in")
    attack = flooder.popen([*AS_NOBODY, "unshare", "--user", "--map-root-user", "--net",
                            PY, "-c", FLOODER, str(FLOOD), NETNS_PEER, "39092", "25"])
    try:
        assert attack.stdout.readline().strip() == "forked", attack.stderr.read()
        time.sleep(2)
        during = probe(victim, 8)
    finally:
        attack.kill()
        subprocess.run(["kill", "-9", *[str(p) for p in
                                          map(int, (flooder.cgroup.directory / "cgroup.procs").read_text().split())]],
                       check=False)
    worst, median = max(during), statistics.median(during)
    assert worst < 1.0, (f"with {MANY} enrolled cgroups, {FLOOD} processes refused in one namespace stall the "
                         f"proxy: an ApiVersions round trip took up to {worst:.2f}s (median {median:.2f}s, "
                         f"baseline max {max(baseline):.3f}s, {len(during)} trips in 8 s)")
