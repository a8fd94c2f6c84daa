"""The kernel, read and written directly through libbpf: queries, pins, map elements, links.

The loader's toolbox, kept apart from the `Steering` lifecycle. Calls go
through our own ctypes handle on libbcc (and through it libbpf), so the
argtypes set here never change bcc's. libbpf calls return -errno on failure.

`attached_programs()` is what `appliance status` shows: every program of
ours (by name) attached at the cgroup v2 root or linked to this network
namespace's sk_lookup hook, and the bpffs directory where its maps are
pinned (None for an orphan of a crash).
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import socket
from pathlib import Path

from bcc import BPF, BPFAttachType
from bcc.libbcc import lib as _bcc_lib

from appliance.identity.cgroups import cgroup2_root
from appliance.identity.netns import cookie_of
from appliance.steering import structs as S

PIN_PREFIX = "appliance_"
LINK_PIN = "link_sklookup"  # not PIN_PREFIX: the map inventory must not take it for a map
BPF_F_ALLOW_MULTI = 1 << 1
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_PROG_TYPE_SK_LOOKUP = 30  # uapi linux/bpf.h; bcc 0.26's BPF class has no name for it
BPF_SK_LOOKUP = 36
OWN_NETNS = "/proc/self/ns/net"

# (program, program type, attach type); the names are how a stale set is recognised.
CGROUP_PROGRAMS: tuple[tuple[str, int, int], ...] = (
    ("sock4_connect", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET4_CONNECT),
    ("sock6_connect", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET6_CONNECT),
    ("sock4_getpeer", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET4_GETPEERNAME),
    ("sock6_getpeer", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET6_GETPEERNAME),
    ("sockops_estab", BPF.SOCK_OPS, BPFAttachType.CGROUP_SOCK_OPS),
)
LOOKUP_PROGRAM = ("sklookup_proxy", BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP)
MAX_NETNS = 32  # APPLIANCE_MAX_NETNS: workload namespace slots, 1 .. MAX_NETNS


def netns_lookup_program(slot: int) -> str:
    """The sk_lookup program of a workload namespace slot (bpf/steering.c SKLOOKUP_SLOT: octal row, column)."""
    return f"sklookup_ns{(slot - 1) // 8}{(slot - 1) % 8}"


def netns_link_pin(slot: int) -> str:
    return f"{LINK_PIN}_ns{slot}"


OUR_PROGRAMS = frozenset([*(name for name, _, _ in (*CGROUP_PROGRAMS, LOOKUP_PROGRAM)),
                          *(netns_lookup_program(slot) for slot in range(1, MAX_NETNS + 1))])
ATTACH_TYPE_NAMES = {
    BPFAttachType.CGROUP_INET4_CONNECT: "cgroup_inet4_connect",
    BPFAttachType.CGROUP_INET6_CONNECT: "cgroup_inet6_connect",
    BPFAttachType.CGROUP_INET4_GETPEERNAME: "cgroup_inet4_getpeername",
    BPFAttachType.CGROUP_INET6_GETPEERNAME: "cgroup_inet6_getpeername",
    BPFAttachType.CGROUP_SOCK_OPS: "cgroup_sock_ops",
    BPF_SK_LOOKUP: "sk_lookup",
}

lib = ct.CDLL(_bcc_lib._name, use_errno=True)
_u32p = ct.POINTER(ct.c_uint32)
for _name, _args in {
    "bpf_prog_query": [ct.c_int, ct.c_int, ct.c_uint32, _u32p, _u32p, _u32p],
    "bpf_prog_get_fd_by_id": [ct.c_uint32],
    "bpf_obj_get_info_by_fd": [ct.c_int, ct.c_void_p, _u32p],
    "bpf_obj_get": [ct.c_char_p],
    "bpf_obj_pin": [ct.c_int, ct.c_char_p],
    "bpf_prog_detach2": [ct.c_int, ct.c_int, ct.c_int],
    "bpf_link_create": [ct.c_int, ct.c_int, ct.c_int, ct.c_void_p],
    "bpf_link_detach": [ct.c_int],
    "bpf_lookup_elem": [ct.c_int, ct.c_void_p, ct.c_void_p],
    "bpf_lookup_and_delete": [ct.c_int, ct.c_void_p, ct.c_void_p],
    "bpf_update_elem": [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_ulonglong],
    "bpf_delete_elem": [ct.c_int, ct.c_void_p],
    "bpf_get_next_key": [ct.c_int, ct.c_void_p, ct.c_void_p],
}.items():
    getattr(lib, _name).argtypes = _args
    getattr(lib, _name).restype = ct.c_int


class SteeringError(RuntimeError):
    """A steering operation the kernel refused, naming the object and the reason."""


def check(rc: int, what: str) -> int:
    if rc < 0:
        raise SteeringError(f"{what}: {os.strerror(-rc)}")
    return rc


def root_fd() -> int:
    return os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)


def netns_fd() -> int:
    return os.open(OWN_NETNS, os.O_RDONLY)


def netns_cookie(sock: socket.socket | None = None) -> int:
    """The network namespace cookie of `sock` (the one bpf_get_netns_cookie gives), or of this process."""
    if sock is not None:
        return cookie_of(sock)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return netns_cookie(s)


def table_fd(bpf: BPF, name: str) -> int:
    """A map's fd by name; bcc's Python tables know no SOCKMAP or SK_STORAGE, libbcc does."""
    fd = _bcc_lib.bpf_table_fd(bpf.module, name.encode())
    if fd < 0:
        raise SteeringError(f"map {name} is not in the compiled program")
    return fd


def info(fd: int, into: ct.Structure) -> ct.Structure:
    """BPF_OBJ_GET_INFO_BY_FD into `into` (a S.ProgInfo or S.MapInfo, possibly with fields preset)."""
    size = ct.c_uint32(ct.sizeof(into))
    check(lib.bpf_obj_get_info_by_fd(fd, ct.byref(into), ct.byref(size)), f"BPF_OBJ_GET_INFO_BY_FD(fd {fd})")
    return into


def query(target_fd: int, attach_type: int, where: str) -> list[int]:
    """Ids of the programs attached to a cgroup or netns for attach_type (BPF_PROG_QUERY)."""
    capacity = 64
    while True:
        ids, count, flags = (ct.c_uint32 * capacity)(), ct.c_uint32(capacity), ct.c_uint32()
        rc = lib.bpf_prog_query(target_fd, attach_type, 0, ct.byref(flags), ids, ct.byref(count))
        if rc == -errno.ENOSPC and capacity < 1 << 16:
            capacity *= 16
            continue
        check(rc, f"BPF_PROG_QUERY({ATTACH_TYPE_NAMES[attach_type]}) on {where}")
        return list(ids[: count.value])


def program(prog_id: int) -> tuple[str, list[int]] | None:
    """(name, map ids) of a loaded program, or None if it is gone."""
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        count = info(fd, S.ProgInfo()).nr_map_ids
        maps = (ct.c_uint32 * max(count, 1))()
        got = info(fd, S.ProgInfo(nr_map_ids=count, map_ids=ct.addressof(maps)))
        return got.name.decode(), list(maps[: min(got.nr_map_ids, count)])
    finally:
        os.close(fd)


def pinned_map(path: Path) -> tuple[int, S.MapInfo] | None:
    """(fd, info) of a map pinned at path, or None; the caller closes the fd."""
    fd = lib.bpf_obj_get(os.fsencode(path))
    if fd < 0:
        return None
    try:
        return fd, info(fd, S.MapInfo())
    except SteeringError:
        os.close(fd)
        return None


def pin(fd: int, final: Path) -> None:
    """Pin fd at `final`, replacing an earlier pin atomically (bpffs supports rename)."""
    staging = final.with_name(final.name + "_new")  # bpffs forbids "." in names
    staging.unlink(missing_ok=True)
    check(lib.bpf_obj_pin(fd, os.fsencode(staging)), f"pinning {final.name} at {staging}")
    os.replace(staging, final)


def replace_link(link_fd: int, final: Path) -> None:
    """Pin a new link at `final` and detach the link pinned there before, if any.

    Dropping the old pin alone frees that link only after an RCU grace
    period and a work item; BPF_LINK_DETACH takes its program off the hook
    at once, so no query ever sees both.
    """
    old = lib.bpf_obj_get(os.fsencode(final))
    try:
        pin(link_fd, final)
        if old >= 0:
            check(lib.bpf_link_detach(old), f"detaching the stale link pinned at {final}")
    finally:
        if old >= 0:
            os.close(old)


def detach_link(link_fd: int, pin: Path) -> None:
    """Take a link's program off its hook now, remove its pin and close it.

    A netns link whose namespace died is already detached: no error then.
    """
    lib.bpf_link_detach(link_fd)
    pin.unlink(missing_ok=True)
    os.close(link_fd)


def drop_link(pin: Path) -> None:
    """Detach and unpin the link pinned at `pin` (a stale run's), if it is there."""
    fd = lib.bpf_obj_get(os.fsencode(pin))
    if fd >= 0:
        detach_link(fd, pin)
    else:
        pin.unlink(missing_ok=True)


def _pinned_owners() -> dict[int, str]:
    """Map id of every map pinned as `appliance_*` on any bpffs -> its directory."""
    owners: dict[int, str] = {}
    with open("/proc/mounts") as mounts:
        bpffs = {line.split()[1] for line in mounts if line.split()[2:3] == ["bpf"]}
    for mount in bpffs:
        for dirpath, _, files in os.walk(mount):
            for file in files:
                found = pinned_map(Path(dirpath) / file) if file.startswith(PIN_PREFIX) else None
                if found:
                    os.close(found[0])
                    owners[found[1].id] = dirpath
    return owners


def attached_programs() -> list[dict]:
    """Programs of ours (by name) attached right now, from BPF_PROG_QUERY.

    At the cgroup v2 root (cgroup "/") and on this process's network
    namespace's sk_lookup hook (netns "/proc/self/ns/net", cgroup None).
    Each: id, name, attach_type, cgroup, cgroup_dir, netns, bpffs_dir (where
    its maps are pinned; None for an orphan of a crash) and map_ids.
    """
    owners = _pinned_owners()
    found = []
    targets = [(root_fd(), str(cgroup2_root()), [t for _, _, t in CGROUP_PROGRAMS])]
    targets.append((netns_fd(), OWN_NETNS, [BPF_SK_LOOKUP]))
    for fd, where, types in targets:
        try:
            for attach_type in dict.fromkeys(types):
                for prog_id in query(fd, attach_type, where):
                    prog = program(prog_id)
                    if prog is None or prog[0] not in OUR_PROGRAMS:
                        continue
                    name, map_ids = prog
                    on_netns = attach_type == BPF_SK_LOOKUP
                    found.append({
                        "id": prog_id, "name": name, "attach_type": ATTACH_TYPE_NAMES[attach_type],
                        "cgroup": None if on_netns else "/", "cgroup_dir": None if on_netns else where,
                        "netns": where if on_netns else None,
                        "bpffs_dir": next((owners[m] for m in map_ids if m in owners), None), "map_ids": map_ids,
                    })
        finally:
            os.close(fd)
    return found


def map_keys(fd: int, key_size: int) -> list[bytes]:
    keys, key, nxt = [], None, ct.create_string_buffer(key_size)
    while lib.bpf_get_next_key(fd, key, nxt) == 0:
        keys.append(nxt.raw)
        key = ct.create_string_buffer(nxt.raw, key_size)
    return keys


def copy_map(src_fd: int, src: S.MapInfo, dst_fd: int) -> list[bytes]:
    """Copy every element; returns the keys copied."""
    value, copied = ct.create_string_buffer(src.value_size), []
    for key in map_keys(src_fd, src.key_size):
        if lib.bpf_lookup_elem(src_fd, key, value) == 0 and lib.bpf_update_elem(dst_fd, key, value, BPF_ANY) == 0:
            copied.append(key)
    return copied


def detach_id(root: int, prog_id: int, attach_type: int) -> None:
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return  # gone meanwhile
    try:
        rc = lib.bpf_prog_detach2(fd, root, attach_type)
        if rc < 0 and rc != -errno.ENOENT:
            raise SteeringError(f"detaching stale program {prog_id} ({ATTACH_TYPE_NAMES[attach_type]}): {os.strerror(-rc)}")
    finally:
        os.close(fd)
