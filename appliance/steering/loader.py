"""Compile, load, attach, pin and talk to the steering programs of bpf/steering.c.

The only module of the appliance that imports bcc. `Steering.attach()` compiles
the programs (about a third of a second), attaches them ONCE at the cgroup v2
root with BPF_F_ALLOW_MULTI through the legacy BPF_PROG_ATTACH, and pins their
maps as `<bpffs_dir>/appliance_<map>`. A legacy attachment belongs to the
cgroup, not to this process: if the process dies, the programs keep steering
and refusing (fail closed: enrolled workloads are sent to a proxy port nobody
listens on). The next `attach()` with the same `bpffs_dir` finds that stale
set, carries its brokers and cgroups over into the new maps, attaches the new
programs and only then detaches the stale ones, so at no moment is a steered
broker reachable directly. `detach()` is the orderly stop: programs detached,
pins removed.

A program is "ours" by name (the five below). An attached program of ours
belongs to the bpffs directory where its maps are pinned; one whose maps are
pinned nowhere is an orphan of a crash. `attach()` replaces the programs
of its own directory and orphans, and leaves other directories' sets alone.

The proxy's accept path calls `take_connection`: one BPF_MAP_LOOKUP_AND_DELETE_ELEM
on a map fd opened once, a few microseconds.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from pathlib import Path
from typing import Iterable

from bcc import BPF, BPFAttachType
from bcc.libbcc import lib as _bcc_lib

from appliance.identity.cgroups import cgroup2_root
from appliance.steering import structs as S
from appliance.steering.structs import CgroupCounters, CgroupKind, ConnRecord, Refusal

__all__ = ["CgroupCounters", "CgroupKind", "ConnRecord", "Refusal", "Steering", "SteeringError", "attached_programs"]

DEFAULT_BPFFS_DIR = Path("/sys/fs/bpf/appliance")
# <repo>/bpf, found from this file: `appliance.__file__` is None when the
# package is imported as a namespace (the editable install's finder does so).
DEFAULT_BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
PIN_PREFIX = "appliance_"
BPF_F_ALLOW_MULTI = 1 << 1

# (program, program type, attach type); the names are how a stale set is recognised.
PROGRAMS: tuple[tuple[str, int, int], ...] = (
    ("sock4_connect", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET4_CONNECT),
    ("sock6_connect", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET6_CONNECT),
    ("sock4_getpeer", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET4_GETPEERNAME),
    ("sock6_getpeer", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET6_GETPEERNAME),
    ("sockops_estab", BPF.SOCK_OPS, BPFAttachType.CGROUP_SOCK_OPS),
)
ATTACH_TYPE_NAMES = {
    BPFAttachType.CGROUP_INET4_CONNECT: "cgroup_inet4_connect",
    BPFAttachType.CGROUP_INET6_CONNECT: "cgroup_inet6_connect",
    BPFAttachType.CGROUP_INET4_GETPEERNAME: "cgroup_inet4_getpeername",
    BPFAttachType.CGROUP_INET6_GETPEERNAME: "cgroup_inet6_getpeername",
    BPFAttachType.CGROUP_SOCK_OPS: "cgroup_sock_ops",
}
MAPS = ("brokers", "cgroups", "conn_by_cookie", "conn_by_peer", "orig_by_cookie", "counters", "config", "refusals")
CARRIED_OVER = ("brokers", "cgroups")  # the state that must survive a restart

# Our own handle on libbcc (and through it libbpf), so the argtypes set here
# never change bcc's. libbpf calls return -errno on failure.
_lib = ct.CDLL(_bcc_lib._name, use_errno=True)
_u32p = ct.POINTER(ct.c_uint32)
for _name, _args in {
    "bpf_prog_query": [ct.c_int, ct.c_int, ct.c_uint32, _u32p, _u32p, _u32p],
    "bpf_prog_get_fd_by_id": [ct.c_uint32],
    "bpf_obj_get_info_by_fd": [ct.c_int, ct.c_void_p, _u32p],
    "bpf_obj_get": [ct.c_char_p],
    "bpf_obj_pin": [ct.c_int, ct.c_char_p],
    "bpf_prog_detach2": [ct.c_int, ct.c_int, ct.c_int],
    "bpf_lookup_elem": [ct.c_int, ct.c_void_p, ct.c_void_p],
    "bpf_lookup_and_delete": [ct.c_int, ct.c_void_p, ct.c_void_p],
    "bpf_update_elem": [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_ulonglong],
    "bpf_delete_elem": [ct.c_int, ct.c_void_p],
    "bpf_get_next_key": [ct.c_int, ct.c_void_p, ct.c_void_p],
}.items():
    getattr(_lib, _name).argtypes = _args
    getattr(_lib, _name).restype = ct.c_int


class SteeringError(RuntimeError):
    """A steering operation the kernel refused, naming the object and the reason."""


# --- the kernel, read directly ---------------------------------------------------


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise SteeringError(f"{what}: {os.strerror(-rc)}")
    return rc


def _root_fd() -> int:
    return os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)


def _info(fd: int, info: ct.Structure) -> ct.Structure:
    """BPF_OBJ_GET_INFO_BY_FD into `info` (a S.ProgInfo or S.MapInfo, possibly with fields preset)."""
    size = ct.c_uint32(ct.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), f"BPF_OBJ_GET_INFO_BY_FD(fd {fd})")
    return info


def _query(cgroup_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached directly to the cgroup for attach_type (BPF_PROG_QUERY)."""
    capacity = 64
    while True:
        ids, count, flags = (ct.c_uint32 * capacity)(), ct.c_uint32(capacity), ct.c_uint32()
        rc = _lib.bpf_prog_query(cgroup_fd, attach_type, 0, ct.byref(flags), ids, ct.byref(count))
        if rc == -errno.ENOSPC and capacity < 1 << 16:
            capacity *= 16
            continue
        _check(rc, f"BPF_PROG_QUERY({ATTACH_TYPE_NAMES[attach_type]}) on {cgroup2_root()}")
        return list(ids[: count.value])


def _program(prog_id: int) -> tuple[str, list[int]] | None:
    """(name, map ids) of a loaded program, or None if it is gone."""
    fd = _lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        count = _info(fd, S.ProgInfo()).nr_map_ids
        maps = (ct.c_uint32 * max(count, 1))()
        info = _info(fd, S.ProgInfo(nr_map_ids=count, map_ids=ct.addressof(maps)))
        return info.name.decode(), list(maps[: min(info.nr_map_ids, count)])
    finally:
        os.close(fd)


def _pinned_map(path: Path) -> tuple[int, S.MapInfo] | None:
    """(fd, info) of a map pinned at path, or None; the caller closes the fd."""
    fd = _lib.bpf_obj_get(os.fsencode(path))
    if fd < 0:
        return None
    try:
        return fd, _info(fd, S.MapInfo())
    except SteeringError:
        os.close(fd)
        return None


def _pinned_owners() -> dict[int, str]:
    """Map id of every map pinned as `appliance_*` on any bpffs -> its directory."""
    owners: dict[int, str] = {}
    with open("/proc/mounts") as mounts:
        bpffs = {line.split()[1] for line in mounts if line.split()[2:3] == ["bpf"]}
    for mount in bpffs:
        for dirpath, _, files in os.walk(mount):
            for file in files:
                found = _pinned_map(Path(dirpath) / file) if file.startswith(PIN_PREFIX) else None
                if found:
                    os.close(found[0])
                    owners[found[1].id] = dirpath
    return owners


def attached_programs() -> list[dict]:
    """Programs of ours (by name) attached at the cgroup v2 root right now, from BPF_PROG_QUERY.

    Each: id, name, attach_type, cgroup ("/"), cgroup_dir, bpffs_dir (where its
    maps are pinned; None for an orphan of a crash) and map_ids.
    """
    ours = {name for name, _, _ in PROGRAMS}
    owners = _pinned_owners()
    fd = _root_fd()
    try:
        found = []
        for attach_type in dict.fromkeys(t for _, _, t in PROGRAMS):
            for prog_id in _query(fd, attach_type):
                prog = _program(prog_id)
                if prog is None or prog[0] not in ours:
                    continue
                name, map_ids = prog
                owner = next((owners[m] for m in map_ids if m in owners), None)
                found.append({
                    "id": prog_id, "name": name, "attach_type": ATTACH_TYPE_NAMES[attach_type],
                    "cgroup": "/", "cgroup_dir": str(cgroup2_root()), "bpffs_dir": owner, "map_ids": map_ids,
                })
        return found
    finally:
        os.close(fd)


def _map_keys(fd: int, key_size: int) -> list[bytes]:
    keys, key, nxt = [], None, ct.create_string_buffer(key_size)
    while _lib.bpf_get_next_key(fd, key, nxt) == 0:
        keys.append(nxt.raw)
        key = ct.create_string_buffer(nxt.raw, key_size)
    return keys


def _copy_map(src_fd: int, info: S.MapInfo, dst_fd: int) -> None:
    value = ct.create_string_buffer(info.value_size)
    for key in _map_keys(src_fd, info.key_size):
        if _lib.bpf_lookup_elem(src_fd, key, value) == 0:
            _lib.bpf_update_elem(dst_fd, key, value, 0)


# --- one loaded set of programs ------------------------------------------------------


class Steering:
    """The steering programs and their maps; see the module docstring for the lifecycle."""

    def __init__(self, *, bpffs_dir: Path = DEFAULT_BPFFS_DIR, proxy_port: int, proxy_host4: str = "127.0.0.1",
                 proxy_host6: str = "::1", refuse_unenrolled: bool = True, bpf_dir: Path | None = None) -> None:
        if not 0 < proxy_port < 65536:
            raise ValueError(f"proxy_port {proxy_port} is out of range (1-65535)")
        self.bpffs_dir = Path(bpffs_dir)
        self.bpf_dir = Path(bpf_dir) if bpf_dir is not None else DEFAULT_BPF_DIR
        self._config = S.Config(proxy_port=proxy_port, refuse_unenrolled=int(refuse_unenrolled))
        try:
            self._config.proxy_ip4 = S.packed_word(proxy_host4)
            self._config.proxy_ip6 = S.packed_words6(proxy_host6)
        except OSError:
            raise ValueError(f"proxy hosts must be an IPv4 and an IPv6 literal, not {proxy_host4!r}, {proxy_host6!r}") from None
        self._bpf: BPF | None = None
        self._funcs: list[tuple[str, object, int]] = []
        self._fds: dict[str, int] = {}
        self._ids: dict[str, int] = {}
        self._events: list[Refusal] = []

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
        root_fd = _root_fd()
        try:
            funcs = [(name, bpf.load_func(name.encode(), ptype, None, atype if ptype == BPF.CGROUP_SOCK_ADDR else -1), atype)
                     for name, ptype, atype in PROGRAMS]
            fds = {name: bpf[name.encode()].map_fd for name in MAPS}
            zero = ct.c_uint32(0)
            _check(_lib.bpf_update_elem(fds["config"], ct.byref(zero), ct.byref(self._config), 0), "writing config")
            self._carry_over(fds)
            mine = str(self.bpffs_dir)
            stale = [p for p in attached_programs() if p["bpffs_dir"] in (None, mine)]
            for _, fn, atype in funcs:
                try:
                    BPF.attach_func(fn, root_fd, atype, BPF_F_ALLOW_MULTI)
                except Exception as e:
                    raise SteeringError(f"attaching at cgroup root {cgroup2_root()}: {e}") from None
                attached.append((fn, atype))
            by_name = {n: t for t, n in ATTACH_TYPE_NAMES.items()}
            for p in stale:
                self._detach_id(root_fd, p["id"], by_name[p["attach_type"]])
            self._pin(fds)
            bpf[b"refusals"].open_ring_buffer(self._on_refusal)
        except BaseException:
            for fn, atype in attached:
                _lib.bpf_prog_detach2(fn.fd, root_fd, atype)
            bpf.cleanup()
            raise
        finally:
            os.close(root_fd)
        self._bpf, self._funcs, self._fds = bpf, funcs, fds
        self._ids = {name: _info(fn.fd, S.ProgInfo()).id for name, fn, _ in funcs}

    def detach(self) -> None:
        if self._bpf is None:
            return
        root_fd = _root_fd()
        try:
            for _, fn, atype in self._funcs:
                rc = _lib.bpf_prog_detach2(fn.fd, root_fd, atype)
                if rc < 0 and rc != -errno.ENOENT:
                    raise SteeringError(f"detaching {ATTACH_TYPE_NAMES[atype]} from {cgroup2_root()}: {os.strerror(-rc)}")
        finally:
            os.close(root_fd)
        for name, fd in self._fds.items():
            path = self.bpffs_dir / (PIN_PREFIX + name)
            pinned = _pinned_map(path)
            if pinned:
                os.close(pinned[0])
                if pinned[1].id == _info(fd, S.MapInfo()).id:
                    path.unlink(missing_ok=True)
        try:
            self.bpffs_dir.rmdir()
        except OSError:
            pass  # not empty (someone else's pins) or already gone
        self._bpf.cleanup()
        self._bpf, self._funcs, self._fds, self._ids = None, [], {}, {}

    def __enter__(self) -> Steering:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _carry_over(self, fds: dict[str, int]) -> None:
        """Copy brokers and cgroups from a previous run's pinned maps, if their layout matches."""
        for name in CARRIED_OVER:
            old = _pinned_map(self.bpffs_dir / (PIN_PREFIX + name))
            if old is None:
                continue
            fd, info = old
            try:
                new = _info(fds[name], S.MapInfo())
                if (info.key_size, info.value_size) == (new.key_size, new.value_size):
                    _copy_map(fd, info, fds[name])
            finally:
                os.close(fd)

    def _pin(self, fds: dict[str, int]) -> None:
        """Pin every map, replacing any earlier pin atomically (bpffs supports rename)."""
        self.bpffs_dir.mkdir(parents=True, exist_ok=True)
        for name, fd in fds.items():
            final = self.bpffs_dir / (PIN_PREFIX + name)
            staging = self.bpffs_dir / f"{PIN_PREFIX}{name}_new"  # bpffs forbids "." in names
            staging.unlink(missing_ok=True)
            _check(_lib.bpf_obj_pin(fd, os.fsencode(staging)), f"pinning map {name} at {staging}")
            os.replace(staging, final)

    @staticmethod
    def _detach_id(root_fd: int, prog_id: int, attach_type: int) -> None:
        fd = _lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            return  # gone meanwhile
        try:
            rc = _lib.bpf_prog_detach2(fd, root_fd, attach_type)
            if rc < 0 and rc != -errno.ENOENT:
                raise SteeringError(f"detaching stale program {prog_id} ({ATTACH_TYPE_NAMES[attach_type]}): {os.strerror(-rc)}")
        finally:
            os.close(fd)

    def _fd(self, name: str) -> int:
        if self._bpf is None:
            raise SteeringError(f"steering is not attached (call attach() before using map {name})")
        return self._fds[name]

    # -- configuration

    def set_brokers(self, addrs: Iterable[tuple[str, int]]) -> None:
        """Replace the set of steered broker endpoints (new ones added before old ones go)."""
        fd = self._fd("brokers")
        wanted = {bytes(a): a for a in (S.make_addr(host, port) for host, port in addrs)}
        one = ct.c_uint32(1)
        for a in wanted.values():
            _check(_lib.bpf_update_elem(fd, ct.byref(a), ct.byref(one), 0),
                   f"adding broker {S.addr_host(a)}:{a.port} (at most the map's max_entries brokers)")
        for key in _map_keys(fd, ct.sizeof(S.Addr)):
            if key not in wanted:
                _lib.bpf_delete_elem(fd, key)

    def set_cgroup(self, cgroup_id: int, kind: CgroupKind) -> None:
        key, value = ct.c_uint64(cgroup_id), ct.c_uint32(CgroupKind(kind))
        _check(_lib.bpf_update_elem(self._fd("cgroups"), ct.byref(key), ct.byref(value), 0),
               f"setting cgroup {cgroup_id} to {CgroupKind(kind).name}")

    def clear_cgroup(self, cgroup_id: int) -> None:
        key = ct.c_uint64(cgroup_id)
        rc = _lib.bpf_delete_elem(self._fd("cgroups"), ct.byref(key))
        if rc < 0 and rc != -errno.ENOENT:
            _check(rc, f"clearing cgroup {cgroup_id}")

    def cgroups(self) -> dict[int, CgroupKind]:
        fd, value, out = self._fd("cgroups"), ct.c_uint32(), {}
        for key in _map_keys(fd, 8):
            if _lib.bpf_lookup_elem(fd, key, ct.byref(value)) == 0:
                out[int.from_bytes(key, "little")] = CgroupKind(value.value)
        return out

    # -- data path

    def take_connection(self, family: int, peer_host: str, peer_port: int) -> ConnRecord | None:
        """The record of the steered client at peer_host:peer_port (the accepted socket's peer), removed."""
        key, rec = S.peer_key(family, peer_host, peer_port), S.Conn()
        if _lib.bpf_lookup_and_delete(self._fd("conn_by_peer"), ct.byref(key), ct.byref(rec)) < 0:
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
        fd, value, out = self._fd("counters"), S.Counters(), {}
        for key in _map_keys(fd, 8):
            if _lib.bpf_lookup_elem(fd, key, ct.byref(value)) == 0:
                out[int.from_bytes(key, "little")] = CgroupCounters(value.steered, value.refused)
        return out

    def status(self) -> dict:
        programs = [{"name": name, "id": self._ids.get(name), "attach_type": ATTACH_TYPE_NAMES[atype],
                     "cgroup": "/", "cgroup_dir": str(cgroup2_root())} for name, _, atype in self._funcs]
        maps = []
        for name, fd in self._fds.items():
            info = _info(fd, S.MapInfo())
            entries = None if name == "refusals" else len(_map_keys(fd, info.key_size))
            maps.append({"name": name, "pinned": str(self.bpffs_dir / (PIN_PREFIX + name)), "id": info.id,
                         "entries": entries, "max_entries": info.max_entries})
        return {"attached": self._bpf is not None, "bpffs_dir": str(self.bpffs_dir), "programs": programs, "maps": maps}

