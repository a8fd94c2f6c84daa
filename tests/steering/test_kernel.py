"""The steering programs on the real kernel: cgroups, sockets and BPF, no mocks.

Every test creates its own cgroups under the v2 root (/appliance-test-<hex>/...),
its own listeners on loopback (a "broker" and a "proxy" on the same port for
IPv4 and IPv6) and its own Steering pinned under /sys/fs/bpf/appliance-test-<hex>.
Workloads are short `python -c` children that move themselves into a cgroup
before they connect and report what they saw as JSON. Needs root: without it
the run fails, it never skips.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.identity import cgroups as cg
from appliance.steering import (BrokerState, CgroupCounters, CgroupKind, ConnRecord, Refusal, RefusalReason, Steering,
                                attached_programs)

pytestmark = pytest.mark.integration
CGROUP_NAMES = {"sock4_connect", "sock6_connect", "sock4_getpeer", "sock6_getpeer", "sockops_estab"}
OUR_NAMES = CGROUP_NAMES | {"sklookup_proxy"}
SO_NETNS_COOKIE = 71

CHILD = textwrap.dedent("""
    import json, os, socket, sys
    family, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET)
    s.settimeout(5)
    out = {"pid": os.getpid(), "comm": open("/proc/self/comm").read().strip()}
    try:
        s.connect((host, port))
        out["peer"], out["local"] = list(s.getpeername()[:2]), list(s.getsockname()[:2])
    except OSError as e:
        out["errno"] = e.errno
    print(json.dumps(out), flush=True)
    if "errno" not in out:  # hold the connection, as a client does, until the other side closes it
        s.settimeout(3)
        try:
            s.recv(1)
        except OSError:
            pass
""")
CHILDREN: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _root_and_bpf() -> None:
    if os.geteuid() != 0:
        pytest.fail("the steering tests need root (BPF programs, cgroup v2); run them as root, they never skip")
    if not Path("/sys/fs/bpf").is_dir() or " bpf " not in Path("/proc/mounts").read_text():
        pytest.fail("bpffs is not mounted at /sys/fs/bpf (scripts/setup mounts it)")


def reap_children() -> None:
    while CHILDREN:
        child = CHILDREN.pop()
        child.kill()
        child.wait()


def connect_from(cgroup: cg.Cgroup, host: str, port: int, family: int = 4, *, user: int | None = None,
                 netns: str | None = None) -> dict:
    """Run a child inside `cgroup` (as uid `user`, in the named network namespace `netns` if given) that
    connects to host:port; what it saw.

    The child keeps a connection it made open until the other side closes it
    (or 3 s pass), as a client would; the record of a steered connection goes
    when the client socket closes.
    """
    def enter() -> None:
        cg.move_process(os.getpid(), cgroup)
        if user is not None:
            os.setgid(user)
            os.setuid(user)

    proc = subprocess.Popen([*in_netns(netns), sys.executable, "-c", CHILD, str(family), host, str(port)],
                            preexec_fn=enter,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    CHILDREN.append(proc)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return json.loads(line)


def in_netns(name: str | None) -> list[str]:
    return ["ip", "netns", "exec", name] if name else []


def listen(family: int, host: str, port: int = 0) -> socket.socket:
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(16)
    return s


def accepted(listener: socket.socket, timeout: float = 5.0) -> tuple | None:
    """The peer of the next connection on listener, or None if none arrives in time."""
    listener.settimeout(timeout)
    try:
        conn, peer = listener.accept()
    except (TimeoutError, BlockingIOError):
        return None
    conn.close()
    return peer


def nothing_on(listener: socket.socket) -> bool:
    return accepted(listener, timeout=0.2) is None


def netns_cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def unmapped(address) -> tuple[str, int]:
    host = address[0][7:] if address[0].startswith("::ffff:") else address[0]
    return host, address[1]


def take(steering: Steering, listener: socket.socket, timeout: float = 5.0, **kwargs):
    """Accept the next connection and take its record as the proxy does: (peer, record)."""
    listener.settimeout(timeout)
    conn, peer = listener.accept()
    try:
        return peer, steering.take_connection(unmapped(peer), unmapped(conn.getsockname()), netns_cookie(conn), **kwargs)
    finally:
        conn.close()


@dataclass
class Net:
    broker4: socket.socket
    broker6: socket.socket
    proxy4: socket.socket
    proxy6: socket.socket
    other4: socket.socket
    proxy_port: int

    def port(self, s: socket.socket) -> int:
        return s.getsockname()[1]


@pytest.fixture
def net():
    for _ in range(50):  # one proxy port free on both 127.0.0.1 and ::1
        proxy4 = listen(socket.AF_INET, "127.0.0.1")
        try:
            proxy6 = listen(socket.AF_INET6, "::1", proxy4.getsockname()[1])
            break
        except OSError:
            proxy4.close()
    else:
        pytest.fail("no port free on both 127.0.0.1 and ::1")
    n = Net(listen(socket.AF_INET, "127.0.0.1"), listen(socket.AF_INET6, "::1"), proxy4, proxy6,
            listen(socket.AF_INET, "127.0.0.1"), proxy4.getsockname()[1])
    yield n
    for s in (n.broker4, n.broker6, n.proxy4, n.proxy6, n.other4):
        s.close()


@pytest.fixture
def bpffs_dir() -> Path:
    return Path(f"/sys/fs/bpf/appliance-test-{secrets.token_hex(4)}")


@pytest.fixture
def steering(net: Net, bpffs_dir: Path):
    s = Steering(bpffs_dir=bpffs_dir, proxy_port=net.proxy_port, listeners=[net.proxy4, net.proxy6])
    try:
        s.attach()
        s.set_brokers([("127.0.0.1", net.port(net.broker4)), ("::1", net.port(net.broker6))])
        s.poll_refusals()  # other tests' leftovers, if any
        yield s
    finally:
        s.detach()


@pytest.fixture
def cgroup():
    """make(path) creates /appliance-test-<hex>/<path>; all are removed afterwards, deepest first."""
    base = cg.ensure(f"/appliance-test-{secrets.token_hex(4)}")
    made = [base]

    def make(path: str) -> cg.Cgroup:
        made.append(cg.ensure(f"{base.path}/{path}"))
        return made[-1]

    try:
        yield make
    finally:
        reap_children()
        for c in sorted(made, key=lambda c: c.path.count("/"), reverse=True):
            cg.remove(c)


def test_enrolled_connect_lands_on_the_proxy_which_learns_who_and_where(steering, net, cgroup):
    enrolled = cgroup("orders")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    broker_port = net.port(net.broker4)

    seen = connect_from(enrolled, "127.0.0.1", broker_port)

    assert "errno" not in seen
    assert seen["peer"] == ["127.0.0.1", broker_port]  # getpeername shows the broker, not the proxy
    net.proxy4.settimeout(5)
    conn, peer = net.proxy4.accept()
    assert peer[1] == seen["local"][1]
    assert nothing_on(net.broker4)
    where = (peer[:2], conn.getsockname()[:2], netns_cookie(conn))
    record = steering.take_connection(*where)
    conn.close()
    assert record == ConnRecord(
        socket.AF_INET, "127.0.0.1", broker_port, enrolled.id, enrolled.id,
        seen["pid"], seen["pid"], os.getuid(), os.getgid(), seen["comm"], record.connected_ns, where[2])
    assert 0 < time.monotonic_ns() - record.connected_ns < 5e9  # the kernel's clock is CLOCK_MONOTONIC
    assert steering.take_connection(*where) is None  # taken means gone
    assert steering.counters()[enrolled.id] == CgroupCounters(steered=1, refused=0)


def test_descendants_are_steered_and_the_deepest_known_cgroup_wins(steering, net, cgroup):
    enrolled, child = cgroup("app"), cgroup("app/worker")
    exempt, inner = cgroup("app/tools"), cgroup("app/tools/job")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    steering.set_cgroup(exempt.id, CgroupKind.EXEMPT)
    steering.set_cgroup(inner.id, CgroupKind.ENROLLED)
    broker_port = net.port(net.broker4)

    seen = connect_from(child, "127.0.0.1", broker_port)
    _, record = take(steering, net.proxy4)
    assert (record.cgroup_id, record.enrolled_cgroup_id, record.tgid) == (child.id, enrolled.id, seen["pid"])

    seen = connect_from(exempt, "127.0.0.1", broker_port)
    assert "errno" not in seen and accepted(net.broker4) is not None and nothing_on(net.proxy4)

    connect_from(inner, "127.0.0.1", broker_port)
    _, record = take(steering, net.proxy4)
    assert (record.cgroup_id, record.enrolled_cgroup_id) == (inner.id, inner.id)
    assert steering.counters()[enrolled.id].steered == 1  # charged to the enrolled cgroup that matched


def test_unenrolled_cgroup_is_refused_with_econnrefused_and_reported(steering, net, cgroup):
    stranger = cgroup("stranger")
    broker_port = net.port(net.broker4)

    seen = connect_from(stranger, "127.0.0.1", broker_port)

    assert seen.get("errno") == errno.ECONNREFUSED, f"expected ECONNREFUSED, got {seen}"
    assert nothing_on(net.broker4) and nothing_on(net.proxy4)
    refusals = [r for r in steering.poll_refusals(timeout_ms=1000) if r.cgroup_id == stranger.id]
    assert refusals == [Refusal(stranger.id, seen["pid"], seen["pid"], os.getuid(), seen["comm"],
                                socket.AF_INET, "127.0.0.1", broker_port, RefusalReason.UNENROLLED)]
    assert steering.counters()[stranger.id] == CgroupCounters(steered=0, refused=1)


def test_unenrolled_goes_direct_when_refusal_is_off(net, bpffs_dir, cgroup):
    with Steering(bpffs_dir=bpffs_dir, proxy_port=net.proxy_port, refuse_unenrolled=False) as s:
        s.set_brokers([("127.0.0.1", net.port(net.broker4))])
        seen = connect_from(cgroup("stranger"), "127.0.0.1", net.port(net.broker4))
        assert "errno" not in seen and accepted(net.broker4) is not None


def test_exempt_cgroup_goes_direct(steering, net, cgroup):
    exempt = cgroup("proxy")
    steering.set_cgroup(exempt.id, CgroupKind.EXEMPT)

    seen = connect_from(exempt, "127.0.0.1", net.port(net.broker4))

    assert seen["peer"] == ["127.0.0.1", net.port(net.broker4)]
    assert accepted(net.broker4)[1] == seen["local"][1]
    assert nothing_on(net.proxy4)
    assert exempt.id not in steering.counters()


def test_destinations_that_are_not_brokers_are_left_alone(steering, net, cgroup):
    enrolled, stranger = cgroup("orders"), cgroup("stranger")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    for who in (enrolled, stranger):
        seen = connect_from(who, "127.0.0.1", net.port(net.other4))
        assert seen["peer"] == ["127.0.0.1", net.port(net.other4)]
        assert accepted(net.other4) is not None
    assert nothing_on(net.proxy4) and steering.poll_refusals() == []


def test_ipv6_is_steered_to_the_ipv6_proxy_and_refused_likewise(steering, net, cgroup):
    enrolled, stranger = cgroup("orders"), cgroup("stranger")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    broker_port = net.port(net.broker6)

    seen = connect_from(enrolled, "::1", broker_port, family=6)
    assert seen["peer"] == ["::1", broker_port]
    _, record = take(steering, net.proxy6)
    assert (record.family, record.broker_host, record.broker_port) == (socket.AF_INET6, "::1", broker_port)
    assert (record.cgroup_id, record.tgid) == (enrolled.id, seen["pid"])
    assert nothing_on(net.broker6)

    refused = connect_from(stranger, "::1", broker_port, family=6)
    assert refused.get("errno") == errno.ECONNREFUSED
    (refusal,) = [r for r in steering.poll_refusals(timeout_ms=1000) if r.cgroup_id == stranger.id]
    assert (refusal.family, refusal.dst_host, refusal.dst_port) == (socket.AF_INET6, "::1", broker_port)


def test_ipv4_broker_through_an_ipv6_socket_is_steered_as_ipv4(steering, net, cgroup):
    """Java clients use AF_INET6 sockets with IPv4-mapped addresses by default."""
    enrolled = cgroup("java")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    broker_port = net.port(net.broker4)

    seen = connect_from(enrolled, "::ffff:127.0.0.1", broker_port, family=6)

    assert seen["peer"] == ["::ffff:127.0.0.1", broker_port]
    net.proxy4.settimeout(5)
    conn, peer = net.proxy4.accept()
    # a dual-stack proxy would see the same peer as ::ffff:127.0.0.1
    record = steering.take_connection((f"::ffff:{peer[0]}", peer[1]), conn.getsockname()[:2], netns_cookie(conn))
    conn.close()
    assert (record.family, record.broker_host, record.broker_port) == (socket.AF_INET, "127.0.0.1", broker_port)
    assert nothing_on(net.broker4)


def test_brokers_and_cgroups_are_replaced_and_listed(steering, net, cgroup):
    enrolled, stranger = cgroup("orders"), cgroup("stranger")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    steering.set_cgroup(stranger.id, CgroupKind.EXEMPT)
    steering.clear_cgroup(stranger.id)
    steering.clear_cgroup(stranger.id)  # clearing twice is fine
    assert steering.cgroups() == {enrolled.id: CgroupKind.ENROLLED}

    steering.set_brokers([("127.0.0.1", net.port(net.other4))])
    assert connect_from(stranger, "127.0.0.1", net.port(net.broker4)).get("errno") is None  # no longer steered
    assert accepted(net.broker4) is not None
    assert connect_from(stranger, "127.0.0.1", net.port(net.other4)).get("errno") == errno.ECONNREFUSED
    with pytest.raises(ValueError, match="not an IP address"):
        steering.set_brokers([("broker.example", 9092)])


def test_status_names_programs_attach_points_and_pinned_maps(steering, bpffs_dir):
    status = steering.status()
    assert status["attached"] is True
    assert {(p["name"], p["cgroup"]) for p in status["programs"]} == {(n, "/") for n in CGROUP_NAMES} | {
        ("sklookup_proxy", None)}
    ids = {p["id"] for p in status["programs"]}
    assert {p["id"] for p in attached_programs() if p["bpffs_dir"] == str(bpffs_dir)} == ids
    (lookup,) = [p for p in attached_programs() if p["id"] in ids and p["name"] == "sklookup_proxy"]
    assert (lookup["attach_type"], lookup["netns"]) == ("sk_lookup", "/proc/self/ns/net")
    assert (bpffs_dir / "link_sklookup").exists()
    maps = {m["name"]: m for m in status["maps"]}
    assert maps["brokers"]["entries"] == 2 and maps["cgroups"]["max_entries"] == 4096
    assert maps["conn_by_peer"]["entries"] is None  # never walked for status
    for m in maps.values():
        assert Path(m["pinned"]).name == f"appliance_{m['name']}" and Path(m["pinned"]).exists()


def test_detach_removes_every_program_and_pin(net, bpffs_dir, cgroup):
    s = Steering(bpffs_dir=bpffs_dir, proxy_port=net.proxy_port, listeners=[net.proxy4])
    s.attach()
    ids = {p["id"] for p in s.status()["programs"]}
    s.set_brokers([("127.0.0.1", net.port(net.broker4))])

    s.detach()
    s.detach()  # idempotent

    assert [p for p in attached_programs() if p["id"] in ids or p["bpffs_dir"] in (None, str(bpffs_dir))] == []
    assert not bpffs_dir.exists()
    assert connect_from(cgroup("stranger"), "127.0.0.1", net.port(net.broker4)).get("errno") is None
    assert connect_from(cgroup("direct"), "127.0.0.1", net.proxy_port).get("errno") is None  # sk_lookup gone too


CRASHING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from appliance.steering import CgroupKind, Steering
    bpffs_dir, proxy_port, broker_port, enrolled = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    s = Steering(bpffs_dir=bpffs_dir, proxy_port=proxy_port)
    s.attach()
    s.set_brokers([("127.0.0.1", broker_port)])
    s.set_cgroup(enrolled, CgroupKind.ENROLLED)
    print("ready", flush=True)
    time.sleep(600)
""")


def test_a_crash_leaves_the_programs_failing_closed_and_the_next_attach_replaces_them(net, bpffs_dir, cgroup):
    enrolled, stranger = cgroup("orders"), cgroup("stranger")
    broker_port = net.port(net.broker4)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]  # bound, never listening: a proxy that is down
    crashing = subprocess.Popen([sys.executable, "-c", CRASHING, str(bpffs_dir), str(dead_port), str(broker_port),
                                 str(enrolled.id)], stdout=subprocess.PIPE, text=True)
    try:
        assert crashing.stdout.readline().strip() == "ready"
        os.kill(crashing.pid, signal.SIGKILL)
        crashing.wait(timeout=10)

        stale = [p for p in attached_programs() if p["bpffs_dir"] == str(bpffs_dir)]
        assert sorted(p["name"] for p in stale) == sorted(OUR_NAMES)
        assert connect_from(enrolled, "127.0.0.1", broker_port).get("errno") == errno.ECONNREFUSED
        assert connect_from(stranger, "127.0.0.1", broker_port).get("errno") == errno.ECONNREFUSED
        assert nothing_on(net.broker4)

        with Steering(bpffs_dir=bpffs_dir, proxy_port=net.proxy_port, listeners=[net.proxy4, net.proxy6]) as s:
            now = [p for p in attached_programs() if p["bpffs_dir"] in (str(bpffs_dir), None)]
            assert sorted(p["name"] for p in now) == sorted(OUR_NAMES)
            assert not {p["id"] for p in stale} & {p["id"] for p in attached_programs()}
            assert s.cgroups() == {enrolled.id: CgroupKind.ENROLLED}  # carried over: no unsteered gap
            seen = connect_from(enrolled, "127.0.0.1", broker_port)
            assert take(s, net.proxy4)[1].tgid == seen["pid"]
        assert [p for p in attached_programs() if p["bpffs_dir"] in (str(bpffs_dir), None)] == []
    finally:
        if crashing.poll() is None:
            crashing.kill()
            crashing.wait()
        dead.close()
        if any(p["bpffs_dir"] in (str(bpffs_dir), None) for p in attached_programs()):
            with Steering(bpffs_dir=bpffs_dir, proxy_port=net.proxy_port, listeners=[net.proxy4]):
                pass  # attaching replaces the stale set; leaving detaches it


ATTACKER = textwrap.dedent("""
    import json, os, socket, sys
    family, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    os.setgid(65534)
    os.setuid(65534)
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    print(json.dumps({"ready": True, "uid": os.getuid()}), flush=True)
    s.settimeout(float(sys.argv[4]))
    got = []
    try:
        while True:
            conn, peer = s.accept()
            conn.settimeout(0.5)
            try:
                data = conn.recv(100)
            except OSError:
                data = b""
            got.append({"peer": list(peer[:2]), "bytes": len(data)})
    except (TimeoutError, socket.timeout):
        pass
    print(json.dumps({"received": got}), flush=True)
""")


def squat(host: str, port: int, seconds: float, netns: str | None = None) -> subprocess.Popen:
    """An unprivileged process (uid 65534) listening on host:port, reporting what it received."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    proc = subprocess.Popen([*in_netns(netns), sys.executable, "-c", ATTACKER, str(int(family)), host, str(port),
                             str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    CHILDREN.append(proc)
    line = proc.stdout.readline()
    assert json.loads(line or "{}").get("uid") == 65534, proc.stderr.read()
    return proc


def test_a_dead_proxy_is_refused_whoever_binds_its_port(steering, net, cgroup):
    enrolled = cgroup("orders")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    net.proxy4.close()  # what a crash does to the listener: its sockmap entry goes with it
    attacker = squat("127.0.0.1", net.proxy_port, seconds=2)

    started = time.monotonic()
    seen = connect_from(enrolled, "127.0.0.1", net.port(net.broker4))
    assert seen.get("errno") == errno.ECONNREFUSED, seen
    assert time.monotonic() - started < 1.0
    direct = connect_from(cgroup("stranger"), "127.0.0.1", net.proxy_port)  # even addressed to the port itself
    assert direct.get("errno") == errno.ECONNREFUSED, direct

    out, _ = attacker.communicate(timeout=10)
    assert json.loads(out.strip().splitlines()[-1]) == {"received": []}
    assert steering.health()["no_listener_drops"] >= 2


@pytest.mark.parametrize("host, family, canonical", [
    ("0.0.0.0", 4, "127.0.0.1"), ("::ffff:0.0.0.0", 6, "127.0.0.1"), ("127.0.0.7", 4, "127.0.0.1"),
    ("::", 6, "::1"),
])
def test_wildcard_and_loopback_destinations_count_as_the_broker_they_reach(steering, net, cgroup, host, family,
                                                                            canonical):
    enrolled, stranger = cgroup("orders"), cgroup("stranger")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    broker, proxy = (net.broker6, net.proxy6) if canonical == "::1" else (net.broker4, net.proxy4)
    port = net.port(broker)

    seen = connect_from(enrolled, host, port, family=family)
    assert "errno" not in seen, seen
    _, record = take(steering, proxy)
    assert (record.broker_host, record.broker_port, record.tgid) == (canonical, port, seen["pid"])
    assert nothing_on(broker)

    refused = connect_from(stranger, host, port, family=family)
    assert refused.get("errno") == errno.ECONNREFUSED, refused
    (refusal,) = [r for r in steering.poll_refusals(timeout_ms=1000) if r.cgroup_id == stranger.id]
    assert (refusal.dst_host, refusal.dst_port, refusal.reason) == (canonical, port, RefusalReason.UNENROLLED)
    assert nothing_on(broker)


def test_the_hand_off_is_found_only_under_the_whole_connection(steering, net, cgroup):
    enrolled = cgroup("orders")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    seen = connect_from(enrolled, "127.0.0.1", net.port(net.broker4))
    net.proxy4.settimeout(5)
    conn, peer = net.proxy4.accept()
    try:
        client, local, cookie = peer[:2], conn.getsockname()[:2], netns_cookie(conn)
        assert steering.take_connection(client, local, cookie + 1) is None  # another network namespace
        assert steering.take_connection(client, (local[0], local[1] + 1), cookie) is None  # another destination
        assert steering.take_connection((client[0], client[1] + 1), local, cookie) is None  # another client port
        assert steering.take_connection(client, local, cookie).tgid == seen["pid"]  # the misses took nothing
    finally:
        conn.close()


def test_a_record_goes_with_its_client_socket_and_an_old_one_is_refused(steering, net, cgroup):
    enrolled = cgroup("orders")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    port = net.port(net.broker4)

    connect_from(enrolled, "127.0.0.1", port)
    CHILDREN[-1].kill()  # the client closes before the proxy accepts
    CHILDREN[-1].wait()
    time.sleep(0.1)
    assert take(steering, net.proxy4)[1] is None

    connect_from(enrolled, "127.0.0.1", port)
    time.sleep(0.05)
    assert take(steering, net.proxy4, max_age_s=0.01)[1] is None
    assert steering.stale_records == 1
    assert steering.health()["stale_records"] == 1


NETNS_CHILD = textwrap.dedent("""
    import json, os, socket, subprocess, sys
    proxy_port, broker_port = int(sys.argv[1]), int(sys.argv[2])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    trap = socket.socket()
    trap.bind(("127.0.0.1", proxy_port))  # where steering would send this namespace's connects
    trap.listen()
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", broker_port))
        out = {"errno": 0, "local": list(s.getsockname())}
    except OSError as e:
        out = {"errno": e.errno}
    print(json.dumps(out), flush=True)
""")


def test_enrolled_connects_from_another_network_namespace_are_refused(steering, net, cgroup):
    enrolled = cgroup("container")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", NETNS_CHILD, str(net.proxy_port),
                           str(net.port(net.broker4))], preexec_fn=lambda: cg.move_process(os.getpid(), enrolled),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["errno"] == errno.ECONNREFUSED
    (refusal,) = [r for r in steering.poll_refusals(timeout_ms=1000) if r.cgroup_id == enrolled.id]
    assert refusal.reason == RefusalReason.FOREIGN_NETNS
    assert steering.counters()[enrolled.id] == CgroupCounters(steered=0, refused=1)


def test_a_broker_marked_down_refuses_enrolled_connects_until_it_is_up(steering, net, cgroup):
    enrolled, exempt = cgroup("orders"), cgroup("proxy")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    steering.set_cgroup(exempt.id, CgroupKind.EXEMPT)
    port = net.port(net.broker4)
    assert steering.broker_states()[("127.0.0.1", port)] == BrokerState.UP

    steering.set_broker_state("127.0.0.1", port, BrokerState.DOWN)
    assert connect_from(enrolled, "127.0.0.1", port).get("errno") == errno.ECONNREFUSED
    (refusal,) = [r for r in steering.poll_refusals(timeout_ms=1000) if r.cgroup_id == enrolled.id]
    assert refusal.reason == RefusalReason.BROKER_DOWN
    assert "errno" not in connect_from(exempt, "127.0.0.1", port)  # the appliance's own probe still gets through
    assert accepted(net.broker4) is not None
    steering.set_brokers([("127.0.0.1", port), ("::1", net.port(net.broker6))])  # a re-apply keeps the state
    assert steering.broker_states()[("127.0.0.1", port)] == BrokerState.DOWN

    steering.set_broker_state("127.0.0.1", port, BrokerState.UP)
    assert "errno" not in connect_from(enrolled, "127.0.0.1", port)
    assert take(steering, net.proxy4)[1] is not None


FLOOD = textwrap.dedent("""
    import errno, socket, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    refused = 0
    for _ in range(n):
        s = socket.socket()
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            refused += 1
        s.close()
    print(refused)
""")


def test_a_forgotten_broker_is_no_longer_steered_or_refused(steering, net, cgroup):
    """remove_brokers, for an endpoint discovery forgot: deleted by key, and connects to it are left alone."""
    enrolled = cgroup("orders")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    other = ("127.0.0.1", net.port(net.other4))
    steering.add_brokers([other], BrokerState.OUTSIDE)
    assert connect_from(enrolled, *other).get("errno") == errno.ECONNREFUSED

    steering.remove_brokers([other, ("10.9.9.9", 9092)])  # one that was never there is no error
    assert other not in steering.broker_states()
    seen = connect_from(enrolled, *other)
    assert seen["peer"] == list(other) and accepted(net.other4) is not None
    assert nothing_on(net.proxy4)
    assert ("127.0.0.1", net.port(net.broker4)) in steering.broker_states()  # the others stay


def test_lost_refusal_events_are_counted(steering, net, cgroup):
    stranger = cgroup("flood")
    n = 8000  # the ring buffer holds about 3,600 events
    proc = subprocess.run([sys.executable, "-c", FLOOD, "127.0.0.1", str(net.port(net.broker4)), str(n)],
                          preexec_fn=lambda: cg.move_process(os.getpid(), stranger),
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == str(n), proc.stderr
    delivered = len([r for r in steering.poll_refusals(timeout_ms=100) if r.cgroup_id == stranger.id])
    dropped = steering.health()["ringbuf_drops"]
    assert dropped > 0 and delivered + dropped == n
    assert steering.counters()[stranger.id].refused == n


@pytest.fixture
def workload_netns():
    """A named network namespace with its loopback up (as a container's): (name, inode)."""
    from pyroute2 import NetNS
    from pyroute2 import netns as named

    name = f"appliance-test-k{secrets.token_hex(3)}"
    named.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield name, os.stat(f"/run/netns/{name}").st_ino
    finally:
        reap_children()
        named.remove(name)


def test_a_workload_namespace_is_steered_to_the_proxy_socket_inside_it_alone(steering, net, cgroup, workload_netns):
    from appliance.identity import netns

    name, inode = workload_netns
    enrolled, stranger = cgroup("container"), cgroup("stranger")
    steering.set_cgroup(enrolled.id, CgroupKind.ENROLLED)
    broker_port = net.port(net.broker4)
    assert connect_from(enrolled, "127.0.0.1", broker_port, netns=name).get("errno") == errno.ECONNREFUSED
    (refusal,) = [r for r in steering.poll_refusals(timeout_ms=1000) if r.cgroup_id == enrolled.id]
    assert refusal.reason == RefusalReason.FOREIGN_NETNS

    with netns.entered(f"/run/netns/{name}", inode):
        inside = listen(socket.AF_INET, "127.0.0.1")  # a free port: the namespace's sk_lookup hands it the proxy's
    assert netns.own_inode() != inode  # this thread came back
    cookie = netns.cookie_of(inside)
    assert cookie != netns_cookie(net.proxy4)
    fd = netns.fd_of(inside)
    try:
        assert os.fstat(fd).st_ino == inode
        assert steering.listen_in_netns(cookie, fd, [inside]) == 1
    finally:
        os.close(fd)
    trap = squat("127.0.0.1", net.proxy_port, seconds=3, netns=name)  # the proxy's port, bound inside
    try:
        seen = connect_from(enrolled, "127.0.0.1", broker_port, netns=name)
        assert "errno" not in seen and seen["peer"] == ["127.0.0.1", broker_port], seen
        peer, record = take(steering, inside)
        assert record is not None and record.tgid == seen["pid"] and record.netns_cookie == cookie
        assert nothing_on(net.proxy4)  # nothing crossed into the proxy's own namespace
        direct = connect_from(stranger, "127.0.0.1", net.proxy_port, netns=name)
        assert "errno" not in direct  # reaches the proxy's socket there, which finds no record
        assert take(steering, inside)[1] is None
        assert {p["name"] for p in steering.status()["programs"]} >= {"sklookup_ns00"}

        inside.close()  # the appliance gone: nothing there receives what is addressed to the proxy
        assert connect_from(enrolled, "127.0.0.1", broker_port, netns=name).get("errno") == errno.ECONNREFUSED
        assert connect_from(stranger, "127.0.0.1", net.proxy_port, netns=name).get("errno") == errno.ECONNREFUSED
    finally:
        out, _ = trap.communicate(timeout=10)
    assert json.loads(out.strip().splitlines()[-1]) == {"received": []}

    steering.forget_netns(cookie)
    assert steering.netns_slots() == {}
    assert not list(steering.bpffs_dir.glob("link_sklookup_ns*"))
    steering.poll_refusals()
    assert connect_from(enrolled, "127.0.0.1", broker_port, netns=name).get("errno") == errno.ECONNREFUSED
    (refusal,) = [r for r in steering.poll_refusals(timeout_ms=1000) if r.cgroup_id == enrolled.id]
    assert refusal.reason == RefusalReason.FOREIGN_NETNS
