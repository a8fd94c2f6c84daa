"""Compile, load, attach, pin and talk to the steering programs of bpf/steering.c.

The only module of the appliance that loads BPF (with `kernel`, its libbpf
toolbox). `Steering.attach()` compiles the programs (about half a second),
then, in this order:

1. writes the config entry (proxy listener, the appliance's network
   namespace cookie) and puts the proxy's listening sockets (`listeners`, if
   given; a serving process passes them later with `admit()`, once ready) in
   the `proxy_socks` sockmap;
2. links `sklookup_proxy` to this network namespace (BPF_LINK_CREATE) and
   pins the link as `<bpffs_dir>/link_sklookup`, replacing a stale one;
3. attaches the cgroup programs ONCE at the cgroup v2 root with
   BPF_F_ALLOW_MULTI through the legacy BPF_PROG_ATTACH, then detaches the
   stale ones, so at no moment is a steered broker reachable directly;
4. pins the maps as `<bpffs_dir>/appliance_<map>`.

Workloads in other network namespaces: `listen_in_netns()` takes the proxy's
listening sockets inside one, gives them a slot of `proxy_socks`, links that
slot's own sk_lookup program to the namespace (pinned as
`<bpffs_dir>/link_sklookup_ns<slot>`) and only then adds the namespace's
cookie to `proxy_netns`, from when on its enrolled connects are steered;
`forget_netns()` undoes it in the reverse order. A stale run's namespace
links are detached by `attach()` once the stale cgroup programs are gone.

A legacy attachment belongs to the cgroup and a pinned link to bpffs, not to
this process: if the process dies, the programs keep steering and refusing,
and the sockmap entries vanish with the process's sockets, so every SYN to
the proxy's address is refused (the sk_lookup program drops it) whoever binds
that port. The next `attach()` with the same `bpffs_dir` carries the stale
set's brokers (with their reachability) and cgroups over into its new maps
before it replaces the stale programs. `detach()` is the orderly stop:
cgroup programs detached, then the link, pins removed.

A program is "ours" by name. An attached program of ours belongs to the
bpffs directory where its maps are pinned; one whose maps are pinned nowhere
is an orphan of a crash. `attach()` replaces the programs of its own
directory and orphans, and leaves other directories' sets alone.

The proxy's accept path calls `take_connection`: one BPF_MAP_LOOKUP_AND_DELETE_ELEM
on a map fd opened once, a few microseconds. Nothing here that `status()`
or `health()` does walks a map.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable

from bcc import BPF

from appliance.identity.cgroups import cgroup2_root
from appliance.steering import kernel as K
from appliance.steering import structs as S
from appliance.steering.kernel import SteeringError, attached_programs
from appliance.steering.structs import BrokerState, CgroupCounters, CgroupKind, ConnRecord, Refusal

__all__ = ["BrokerState", "CgroupCounters", "CgroupKind", "ConnRecord", "Refusal", "Steering", "SteeringError",
           "attached_programs"]

DEFAULT_BPFFS_DIR = Path("/sys/fs/bpf/appliance")


def _bpf_sources() -> Path:
    """<repo>/bpf in a checkout, found from this file (`appliance.__file__` is None when the package is
    imported as a namespace, as the editable install's finder does); else where a non-editable install
    puts them (pyproject.toml's data-files): <venv>/share/appliance/bpf."""
    checkout = Path(__file__).resolve().parents[2] / "bpf"
    return checkout if (checkout / "steering.c").is_file() else Path(sys.prefix) / "share" / "appliance" / "bpf"


DEFAULT_BPF_DIR = _bpf_sources()
MAPS = ("brokers", "cgroups", "socks", "conn_by_peer", "counters", "health", "proxy_socks", "config", "refusals",
        "proxy_netns")
CARRIED_OVER = ("brokers", "cgroups")  # the state that must survive a restart
_NO_ENTRY_COUNT = {"socks", "conn_by_peer", "counters", "proxy_socks", "refusals"}  # never walked for status
_SOCK_KEY = {socket.AF_INET: 0, socket.AF_INET6: 1}  # APPLIANCE_SOCK_KEY4, _KEY6


class Steering:
    """The steering programs and their maps; see the module docstring for the lifecycle."""

    def __init__(self, *, bpffs_dir: Path = DEFAULT_BPFFS_DIR, proxy_port: int, proxy_host4: str = "127.0.0.1",
                 proxy_host6: str = "::1", refuse_unenrolled: bool = True, bpf_dir: Path | None = None,
                 listeners: Iterable[socket.socket] = ()) -> None:
        if not 0 < proxy_port < 65536:
            raise ValueError(f"proxy_port {proxy_port} is out of range (1-65535)")
        self.bpffs_dir = Path(bpffs_dir)
        self.bpf_dir = Path(bpf_dir) if bpf_dir is not None else DEFAULT_BPF_DIR
        # The proxy's listening sockets, handed to the kernel on attach(), or later with admit().
        self.listeners: list = list(listeners)
        self._config = S.Config(proxy_port=proxy_port, refuse_unenrolled=int(refuse_unenrolled))
        try:
            self._config.proxy_ip4 = S.packed_word(proxy_host4)
            self._config.proxy_ip6 = S.packed_words6(proxy_host6)
        except OSError:
            raise ValueError(f"proxy hosts must be an IPv4 and an IPv6 literal, not {proxy_host4!r}, {proxy_host6!r}") from None
        self._bpf: BPF | None = None
        self._funcs: list[tuple[str, object, int]] = []
        self._lookup_fn = None
        self._link_fd = -1
        self._fds: dict[str, int] = {}
        self._ids: dict[str, int] = {}
        self._events: list[Refusal] = []
        self._brokers: dict[bytes, tuple[str, int]] = {}  # what the `brokers` map holds, so status walks nothing
        self._cgroup_count = 0
        self._netns: dict[int, tuple[int, int]] = {}  # workload namespace cookie -> (slot, link fd)
        self.stale_records = 0  # hand-off records refused for their age

    # -- lifecycle

    def attach(self) -> None:
        if self._bpf is not None:
            return
        if os.geteuid() != 0:
            raise SteeringError("attaching BPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")
        source = self.bpf_dir / "steering.c"
        if not source.is_file():
            raise SteeringError(f"BPF source {source} does not exist (pass bpf_dir= the directory holding steering.c)")
        try:
            bpf = BPF(src_file=os.fsencode(source), cflags=[f"-I{self.bpf_dir}", *S.size_flags()])
        except Exception as e:
            raise SteeringError(f"compiling {source} failed: {e} (the compiler's messages precede this on stderr)") from None
        attached: list[tuple[object, int]] = []
        link_fd = -1
        root = K.root_fd()
        try:
            funcs = [(name, bpf.load_func(name.encode(), ptype, None, atype if ptype == BPF.CGROUP_SOCK_ADDR else -1), atype)
                     for name, ptype, atype in K.CGROUP_PROGRAMS]
            name, ptype, atype = K.LOOKUP_PROGRAM
            lookup_fn = bpf.load_func(name.encode(), ptype, None, atype)
            fds = {name: K.table_fd(bpf, name) for name in MAPS}
            self._config.netns_cookie = K.netns_cookie()
            zero = ct.c_uint32(0)
            K.check(K.lib.bpf_update_elem(fds["config"], ct.byref(zero), ct.byref(self._config), K.BPF_ANY),
                    "writing config")
            self._put_listeners(fds["proxy_socks"])
            self._carry_over(fds)
            mine = str(self.bpffs_dir)
            stale = [p for p in attached_programs() if p["bpffs_dir"] in (None, mine) and p["cgroup"] == "/"]
            ns = K.netns_fd()
            try:
                link_fd = K.check(K.lib.bpf_link_create(lookup_fn.fd, ns, K.BPF_SK_LOOKUP, None),
                                  f"linking sklookup_proxy to {K.OWN_NETNS}")
            finally:
                os.close(ns)
            self.bpffs_dir.mkdir(parents=True, exist_ok=True)
            K.replace_link(link_fd, self.bpffs_dir / K.LINK_PIN)  # the stale link, if any, is detached
            for _, fn, atype in funcs:
                try:
                    BPF.attach_func(fn, root, atype, K.BPF_F_ALLOW_MULTI)
                except Exception as e:
                    raise SteeringError(f"attaching at cgroup root {cgroup2_root()}: {e}") from None
                attached.append((fn, atype))
            by_name = {n: t for t, n in K.ATTACH_TYPE_NAMES.items()}
            for p in stale:
                K.detach_id(root, p["id"], by_name[p["attach_type"]])
            # Only now, with no stale connect program left to steer into a
            # workload's namespace, may its stale sk_lookup link go.
            for pinned in self.bpffs_dir.glob(f"{K.LINK_PIN}_ns*"):
                K.drop_link(pinned)
            for name, fd in fds.items():
                K.pin(fd, self.bpffs_dir / (K.PIN_PREFIX + name))
            bpf[b"refusals"].open_ring_buffer(self._on_refusal)
        except BaseException:
            for fn, atype in attached:
                K.lib.bpf_prog_detach2(fn.fd, root, atype)
            if link_fd >= 0:
                (self.bpffs_dir / K.LINK_PIN).unlink(missing_ok=True)
                os.close(link_fd)
            bpf.cleanup()
            raise
        finally:
            os.close(root)
        self._bpf, self._funcs, self._fds, self._lookup_fn, self._link_fd = bpf, funcs, fds, lookup_fn, link_fd
        self._ids = {name: K.info(fn.fd, S.ProgInfo()).id for name, fn, _ in [*funcs, (K.LOOKUP_PROGRAM[0], lookup_fn, 0)]}

    def detach(self) -> None:
        if self._bpf is None:
            return
        root = K.root_fd()
        try:
            for _, fn, atype in self._funcs:
                rc = K.lib.bpf_prog_detach2(fn.fd, root, atype)
                if rc < 0 and rc != -errno.ENOENT:
                    raise SteeringError(f"detaching {K.ATTACH_TYPE_NAMES[atype]} from {cgroup2_root()}: {os.strerror(-rc)}")
        finally:
            os.close(root)
        for cookie in list(self._netns):
            self.forget_netns(cookie)
        link_pin = self.bpffs_dir / K.LINK_PIN
        pinned = K.lib.bpf_obj_get(os.fsencode(link_pin))
        if pinned >= 0:  # remove the pin only if it is still our link
            try:
                if K.info(pinned, S.MapInfo()).id == K.info(self._link_fd, S.MapInfo()).id:
                    link_pin.unlink(missing_ok=True)
            finally:
                os.close(pinned)
        os.close(self._link_fd)  # the last reference: the link goes, sk_lookup with it
        for name, fd in self._fds.items():
            path = self.bpffs_dir / (K.PIN_PREFIX + name)
            found = K.pinned_map(path)
            if found:
                os.close(found[0])
                if found[1].id == K.info(fd, S.MapInfo()).id:
                    path.unlink(missing_ok=True)
        try:
            self.bpffs_dir.rmdir()
        except OSError:
            pass  # not empty (someone else's pins) or already gone
        self._bpf.cleanup()
        self._bpf, self._funcs, self._fds, self._ids, self._lookup_fn, self._link_fd = None, [], {}, {}, None, -1

    def __enter__(self) -> Steering:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def admit(self, listeners: Iterable) -> None:
        """Put the proxy's listening sockets in `proxy_socks`: from now on SYNs to the proxy's address reach them.

        Until then (and again once they close) those SYNs are refused. A
        serving process calls this once it is ready to take sessions, so no
        connection it cannot serve yet is accepted and closed.
        """
        self.listeners = list(listeners)
        self._put_listeners(self._fd("proxy_socks"))

    def _put_listeners(self, fd: int, listeners: Iterable | None = None, slot: int = 0) -> None:
        for sock in self.listeners if listeners is None else listeners:
            key = ct.c_uint32(slot * 2 + _SOCK_KEY[sock.family])
            value = ct.c_int(sock.fileno())
            K.check(K.lib.bpf_update_elem(fd, ct.byref(key), ct.byref(value), K.BPF_ANY),
                    f"putting the proxy's listener {sock.getsockname()[:2]} in proxy_socks")

    # -- workloads' network namespaces

    def listen_in_netns(self, cookie: int, netns_fd: int, listeners: Iterable) -> int:
        """Steer enrolled connects made in another network namespace to the proxy's `listeners` there.

        `listeners` are the proxy's listening sockets inside that namespace
        (cookie `cookie`, opened as `netns_fd`). In order: they go in
        `proxy_socks` under a free slot, that slot's sk_lookup program is
        linked to the namespace (and pinned), and only then does the
        namespace enter `proxy_netns`, so no connect is steered there before
        the kernel hands it to these sockets alone. Returns the slot.
        """
        if cookie in self._netns:
            return self._netns[cookie][0]
        used = {slot for slot, _ in self._netns.values()}
        slot = next((n for n in range(1, K.MAX_NETNS + 1) if n not in used), None)
        if slot is None:
            raise SteeringError(f"the proxy already listens in {K.MAX_NETNS} workload network namespaces, the most "
                                "the kernel programs have slots for; workloads in others are refused")
        listeners = list(listeners)
        socks, link_fd = self._fd("proxy_socks"), -1
        name = K.netns_lookup_program(slot)
        try:
            self._put_listeners(socks, listeners, slot)
            fn = self._bpf.load_func(name.encode(), K.LOOKUP_PROGRAM[1], None, K.LOOKUP_PROGRAM[2])
            self._ids[name] = K.info(fn.fd, S.ProgInfo()).id
            link_fd = K.check(K.lib.bpf_link_create(fn.fd, netns_fd, K.BPF_SK_LOOKUP, None),
                              f"linking {name} to network namespace cookie {cookie}")
            K.replace_link(link_fd, self.bpffs_dir / K.netns_link_pin(slot))
            key, value = ct.c_uint64(cookie), ct.c_uint32(slot)
            K.check(K.lib.bpf_update_elem(self._fd("proxy_netns"), ct.byref(key), ct.byref(value), K.BPF_ANY),
                    f"adding network namespace cookie {cookie} to proxy_netns")
        except BaseException:
            if link_fd >= 0:
                K.detach_link(link_fd, self.bpffs_dir / K.netns_link_pin(slot))
            self._clear_slot(socks, slot)
            raise
        self._netns[cookie] = (slot, link_fd)
        return slot

    def forget_netns(self, cookie: int) -> None:
        """Stop steering connects of that namespace: refused again (FOREIGN_NETNS); its link and sockets go."""
        found = self._netns.pop(cookie, None)
        if found is None:
            return
        slot, link_fd = found
        key = ct.c_uint64(cookie)
        rc = K.lib.bpf_delete_elem(self._fd("proxy_netns"), ct.byref(key))
        if rc < 0 and rc != -errno.ENOENT:
            K.check(rc, f"removing network namespace cookie {cookie} from proxy_netns")
        self._clear_slot(self._fd("proxy_socks"), slot)  # SYNs to the proxy there are refused from now
        K.detach_link(link_fd, self.bpffs_dir / K.netns_link_pin(slot))

    def netns_slots(self) -> dict[int, int]:
        """Workload namespace cookie -> slot, for each namespace connects are steered in."""
        return {cookie: slot for cookie, (slot, _) in self._netns.items()}

    @staticmethod
    def _clear_slot(fd: int, slot: int) -> None:
        for family_key in _SOCK_KEY.values():
            key = ct.c_uint32(slot * 2 + family_key)
            K.lib.bpf_delete_elem(fd, ct.byref(key))  # ENOENT: the socket closed, or never was there

    def _carry_over(self, fds: dict[str, int]) -> None:
        """Copy brokers and cgroups from a previous run's pinned maps, if their layout matches."""
        for name in CARRIED_OVER:
            old = K.pinned_map(self.bpffs_dir / (K.PIN_PREFIX + name))
            if old is None:
                continue
            fd, info = old
            try:
                new = K.info(fds[name], S.MapInfo())
                if (info.key_size, info.value_size) == (new.key_size, new.value_size):
                    copied = K.copy_map(fd, info, fds[name])
                    if name == "brokers":
                        for key in copied:
                            a = S.Addr.from_buffer_copy(key)
                            self._brokers[key] = (S.addr_host(a), a.port)
                    else:
                        self._cgroup_count = len(copied)
            finally:
                os.close(fd)

    def _fd(self, name: str) -> int:
        if self._bpf is None:
            raise SteeringError(f"steering is not attached (call attach() before using map {name})")
        return self._fds[name]

    # -- configuration

    def set_brokers(self, addrs: Iterable[tuple[str, int]]) -> None:
        """Replace the set of steered broker endpoints (new ones added, as UP, before old ones go).

        An endpoint already in the map (carried over from a stale set) keeps
        its reachability until the next probe says otherwise.
        """
        fd = self._fd("brokers")
        wanted = {bytes(a): a for a in (S.make_addr(host, port) for host, port in addrs)}
        up = ct.c_uint32(BrokerState.UP)
        for a in wanted.values():
            rc = K.lib.bpf_update_elem(fd, ct.byref(a), ct.byref(up), K.BPF_NOEXIST)
            if rc != -errno.EEXIST:
                K.check(rc, f"adding broker {S.addr_host(a)}:{a.port} (at most the map's max_entries brokers)")
        for key in list(self._brokers) + K.map_keys(fd, ct.sizeof(S.Addr)):
            if key not in wanted:
                K.lib.bpf_delete_elem(fd, key)
        self._brokers = {key: (S.addr_host(a), a.port) for key, a in wanted.items()}

    def add_brokers(self, addrs: Iterable[tuple[str, int]], state: BrokerState = BrokerState.UP) -> None:
        """Add endpoints to the steered set (discovered brokers: UP) or mark them OUTSIDE (enrolled connects
        refused); one already in the map keeps its state. Raises SteeringError when the map is full."""
        fd, value = self._fd("brokers"), ct.c_uint32(BrokerState(state))
        for host, port in addrs:
            a = S.make_addr(host, port)
            rc = K.lib.bpf_update_elem(fd, ct.byref(a), ct.byref(value), K.BPF_NOEXIST)
            if rc != -errno.EEXIST:
                K.check(rc, f"adding broker {host}:{port} (at most the map's max_entries brokers)")
                self._brokers[bytes(a)] = (S.addr_host(a), a.port)

    def remove_brokers(self, addrs: Iterable[tuple[str, int]]) -> None:
        """Take endpoints discovery forgot out of the steered (or refused) set: one delete by key each, no
        walk. Connections already steered to them are not touched."""
        fd = self._fd("brokers")
        for host, port in addrs:
            a = S.make_addr(host, port)
            rc = K.lib.bpf_delete_elem(fd, ct.byref(a))
            if rc < 0 and rc != -errno.ENOENT:
                K.check(rc, f"removing broker {host}:{port} from brokers")
            self._brokers.pop(bytes(a), None)

    def set_broker_state(self, host: str, port: int, state: BrokerState) -> None:
        """Mark a steered broker reachable or not; enrolled connects to a DOWN one are refused."""
        key, value = S.make_addr(host, port), ct.c_uint32(BrokerState(state))
        K.check(K.lib.bpf_update_elem(self._fd("brokers"), ct.byref(key), ct.byref(value), K.BPF_EXIST),
                f"setting broker {host}:{port} {BrokerState(state).name} (is it in brokers?)")

    def broker_states(self) -> dict[tuple[str, int], BrokerState]:
        """Each steered broker's state: one lookup per broker this object set, no walk."""
        fd, value, out = self._fd("brokers"), ct.c_uint32(), {}
        for key, address in self._brokers.items():
            if K.lib.bpf_lookup_elem(fd, key, ct.byref(value)) == 0:
                out[address] = BrokerState(value.value)
        return out

    def set_cgroup(self, cgroup_id: int, kind: CgroupKind) -> None:
        key, value = ct.c_uint64(cgroup_id), ct.c_uint32(CgroupKind(kind))
        K.check(K.lib.bpf_update_elem(self._fd("cgroups"), ct.byref(key), ct.byref(value), K.BPF_ANY),
                f"setting cgroup {cgroup_id} to {CgroupKind(kind).name}")

    def clear_cgroup(self, cgroup_id: int) -> None:
        key = ct.c_uint64(cgroup_id)
        rc = K.lib.bpf_delete_elem(self._fd("cgroups"), ct.byref(key))
        if rc < 0 and rc != -errno.ENOENT:
            K.check(rc, f"clearing cgroup {cgroup_id}")

    def cgroups(self) -> dict[int, CgroupKind]:
        """Every entry of `cgroups` (at most APPLIANCE_MAX_CGROUPS); for enrolment sync, not status."""
        fd, value, out = self._fd("cgroups"), ct.c_uint32(), {}
        for key in K.map_keys(fd, 8):
            if K.lib.bpf_lookup_elem(fd, key, ct.byref(value)) == 0:
                out[int.from_bytes(key, "little")] = CgroupKind(value.value)
        self._cgroup_count = len(out)
        return out

    # -- data path

    def take_connection(self, client: tuple[str, int], proxy: tuple[str, int], netns_cookie: int,
                        max_age_s: float | None = None) -> ConnRecord | None:
        """The record of the steered connection the proxy accepted, removed; None if there is none.

        `client` is the accepted socket's peer, `proxy` its local address and
        `netns_cookie` its SO_NETNS_COOKIE: the record is found only under the
        very connection the kernel saw. One older than max_age_s is removed
        and refused (counted in `stale_records`).
        """
        key, rec = S.peer_key(client, proxy, netns_cookie), S.Conn()
        if K.lib.bpf_lookup_and_delete(self._fd("conn_by_peer"), ct.byref(key), ct.byref(rec)) < 0:
            return None
        if max_age_s is not None and time.monotonic_ns() - rec.connected_ns > max_age_s * 1e9:
            self.stale_records += 1
            return None
        return S.conn_record(rec)

    def _on_refusal(self, _ctx: object, data: int, _size: int) -> None:
        self._events.append(S.refusal(ct.cast(data, ct.POINTER(S.RefusalEvent)).contents))

    def poll_refusals(self, timeout_ms: int = 0) -> list[Refusal]:
        """Refusal events since the last call, waiting up to timeout_ms for the first one."""
        self._fd("refusals")
        self._bpf.ring_buffer_poll(timeout_ms)
        events, self._events = self._events, []
        return events

    def counters(self) -> dict[int, CgroupCounters]:
        """Every cgroup's counters: walks the map (up to APPLIANCE_MAX_COUNTED); use counters_of on hot paths."""
        fd = self._fd("counters")
        return self.counters_of(int.from_bytes(k, "little") for k in K.map_keys(fd, 8))

    def counters_of(self, cgroup_ids: Iterable[int]) -> dict[int, CgroupCounters]:
        """The counters of the given cgroups that have any: one lookup each."""
        fd, value, out = self._fd("counters"), S.Counters(), {}
        for cgroup_id in cgroup_ids:
            key = ct.c_uint64(cgroup_id)
            if K.lib.bpf_lookup_elem(fd, ct.byref(key), ct.byref(value)) == 0:
                out[cgroup_id] = CgroupCounters(value.steered, value.refused)
        return out

    def health(self) -> dict[str, int]:
        """Helper failures and lost events counted by the kernel programs (`health` array), and stale records."""
        fd, value, out = self._fd("health"), ct.c_uint64(), {}
        for slot, name in enumerate(S.HEALTH_SLOTS):
            key = ct.c_uint32(slot)
            K.check(K.lib.bpf_lookup_elem(fd, ct.byref(key), ct.byref(value)), f"reading health slot {name}")
            out[name] = value.value
        out["stale_records"] = self.stale_records
        return out

    def status(self) -> dict:
        """What is attached and where, and each map's size; walks no map."""
        programs = [{"name": name, "id": self._ids.get(name), "attach_type": K.ATTACH_TYPE_NAMES[atype],
                     "cgroup": "/", "cgroup_dir": str(cgroup2_root())} for name, _, atype in self._funcs]
        if self._lookup_fn is not None:
            name = K.LOOKUP_PROGRAM[0]
            programs.append({"name": name, "id": self._ids.get(name), "attach_type": "sk_lookup", "cgroup": None,
                             "cgroup_dir": None, "netns": K.OWN_NETNS,
                             "link_pinned": str(self.bpffs_dir / K.LINK_PIN)})
        for cookie, (slot, _) in self._netns.items():
            name = K.netns_lookup_program(slot)
            programs.append({"name": name, "id": self._ids.get(name), "attach_type": "sk_lookup", "cgroup": None,
                             "cgroup_dir": None, "netns": f"cookie {cookie}",
                             "link_pinned": str(self.bpffs_dir / K.netns_link_pin(slot))})
        entries = {"brokers": len(self._brokers), "cgroups": self._cgroup_count, "config": 1,
                   "health": len(S.HEALTH_SLOTS), "proxy_netns": len(self._netns)}
        maps = []
        for name, fd in self._fds.items():
            info = K.info(fd, S.MapInfo())
            maps.append({"name": name, "pinned": str(self.bpffs_dir / (K.PIN_PREFIX + name)), "id": info.id,
                         "entries": None if name in _NO_ENTRY_COUNT else entries.get(name),
                         "max_entries": info.max_entries})
        return {"attached": self._bpf is not None, "bpffs_dir": str(self.bpffs_dir), "programs": programs,
                "maps": maps, "listeners": [list(s.getsockname()[:2]) for s in self.listeners if s.fileno() >= 0]}


def release(bpffs_dir: Path = DEFAULT_BPFFS_DIR) -> list[str]:
    """Take down a set no process owns any more: one left on purpose (`serve --keep-steering`) or by a crash.

    Detaches our cgroup programs whose maps are pinned in `bpffs_dir` (and
    orphans, pinned nowhere), detaches the sk_lookup links pinned there (the appliance's and each workload
    namespace's), and
    removes the pins and the directory. Returns a line per thing removed. The
    caller makes sure no serving process uses `bpffs_dir`.
    """
    bpffs_dir = Path(bpffs_dir)
    removed: list[str] = []
    by_name = {n: t for t, n in K.ATTACH_TYPE_NAMES.items()}
    root = K.root_fd()
    try:
        for p in attached_programs():
            if p["cgroup"] == "/" and p["bpffs_dir"] in (str(bpffs_dir), None):
                K.detach_id(root, p["id"], by_name[p["attach_type"]])
                removed.append(f"program {p['name']} (id {p['id']}, {p['attach_type']}) at {cgroup2_root()}")
    finally:
        os.close(root)
    # With no connect program left to steer into a workload's namespace, its sk_lookup link may go.
    for pinned in sorted(bpffs_dir.glob(f"{K.LINK_PIN}_ns*")) if bpffs_dir.is_dir() else ():
        K.drop_link(pinned)
        removed.append(f"sk_lookup link {pinned}")
    link_pin = bpffs_dir / K.LINK_PIN
    link = K.lib.bpf_obj_get(os.fsencode(link_pin))
    if link >= 0:
        try:
            K.check(K.lib.bpf_link_detach(link), f"detaching the link pinned at {link_pin}")
        finally:
            os.close(link)
        link_pin.unlink(missing_ok=True)
        removed.append(f"sk_lookup link {link_pin}")
    for pin in sorted(bpffs_dir.glob(K.PIN_PREFIX + "*")) if bpffs_dir.is_dir() else ():
        pin.unlink()
        removed.append(f"pinned map {pin}")
    try:
        bpffs_dir.rmdir()
    except OSError:
        pass  # absent, or holding pins that are not ours
    return removed
