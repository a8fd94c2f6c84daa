"""What a host needs to run `appliance serve`, judged from facts collected elsewhere (pure: no I/O).

`appliance doctor` collects `Facts` (appliance/doctor/facts.py, the thin
shell) and `evaluate` turns them into one `Finding` per check, each with a
status and, unless it is ok, the command or setting that fixes it. Only
`fail` makes doctor exit non-zero; `warn` is a risk the appliance runs with,
`unknown` is a fact the host would not give (said so, not guessed).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath

# sk_lookup needs 5.9 and SO_NETNS_COOKIE 5.14; 5.15 is the oldest longterm kernel with both.
MIN_KERNEL = (5, 15)
KERNEL_OPTIONS = ("CONFIG_BPF_SYSCALL", "CONFIG_CGROUP_BPF", "CONFIG_BPF_JIT")
# adjtimex(2): the clock state TIME_ERROR and the status bit STA_UNSYNC both mean "not synchronized".
TIME_ERROR = 5
STA_UNSYNC = 0x0040


class Status(str, Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass(frozen=True, slots=True)
class Mount:
    point: str
    fstype: str


@dataclass(frozen=True, slots=True)
class ProgramLoad:
    """A minimal program of one type offered to the kernel's verifier: 0, or the errno it refused with."""

    kind: str
    errno: int


@dataclass(frozen=True, slots=True)
class PortProbe:
    host: str
    port: int
    errno: int | None  # None: bindable


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A file the appliance reads secrets from, as lstat(2) saw it (mode None: it does not exist)."""

    role: str  # "upstream_credentials", ...
    path: str
    mode: int | None = None  # st_mode, file type bits included
    uid: int | None = None
    dir_mode: int | None = None
    load_error: str | None = None  # what the appliance's own loader says of its content, if anything


@dataclass(frozen=True, slots=True)
class BrokerProbeResult:
    address: str
    reachable: bool
    detail: str  # "connected in 3 ms", "Connection refused", "no answer within 3 s"


@dataclass(frozen=True, slots=True)
class Clock:
    timesync_synchronized: bool  # /run/systemd/timesync/synchronized exists
    adjtimex_state: int | None = None  # None: the call failed
    adjtimex_status: int | None = None
    max_error_us: int | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    euid: int
    kernel_release: str
    kernel_config: dict[str, str] | None  # None: no /proc/config.gz or /boot/config-<release>
    kernel_config_source: str | None
    program_loads: tuple[ProgramLoad, ...]
    bcc_error: str | None
    mounts: tuple[Mount, ...]
    btf: bool
    headers_makefile: bool  # /lib/modules/<release>/build/Makefile exists
    bpffs_dir: str
    listeners: tuple[PortProbe, ...]
    serving_pid: int | None
    secret_files: tuple[SecretFile, ...]
    brokers: tuple[BrokerProbeResult, ...]
    clock: Clock
    tokens_in_use: bool  # workload token providers or OAUTHBEARER upstream: validation reads the clock
    policy_file: str
    policy_error: str | None
    config_source: str = "embedded defaults"
    workload_ca: str = ""  # the workload CA certificate's path
    workload_ca_state: str = "absent"  # absent (made at the first start) | ok | what serve would refuse


def parse_mounts(text: str) -> tuple[Mount, ...]:
    """/proc/mounts, octal escapes (a space is \\040) decoded."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].encode().decode("unicode_escape")
            mounts.append(Mount(point, parts[2]))
    return tuple(mounts)


def parse_kernel_config(text: str) -> dict[str, str]:
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value
    return config


def kernel_version(release: str) -> tuple[int, int] | None:
    head = release.split("-", 1)[0].split(".")
    try:
        return int(head[0]), int(head[1])
    except (IndexError, ValueError):
        return None


def covering_mount(mounts: tuple[Mount, ...], path: str) -> Mount | None:
    """The mount a path lives on: the longest mount point that contains it (the last one mounted wins)."""
    target = PurePosixPath(path)
    best: Mount | None = None
    for m in mounts:
        point = PurePosixPath(m.point)
        if target == point or point in target.parents:
            if best is None or len(point.parts) >= len(PurePosixPath(best.point).parts):
                best = m
    return best


def _config(facts: Facts) -> str:
    """Where a setting goes: the file doctor read, or one to write when it ran on the embedded defaults."""
    return facts.config_source if facts.config_source != "embedded defaults" else "a configuration file (--config)"


def evaluate(facts: Facts) -> list[Finding]:
    return [
        _root(facts),
        _kernel(facts),
        _kernel_config(facts),
        *_program_loads(facts),
        _bcc(facts),
        _cgroup2(facts),
        _bpffs(facts),
        _btf(facts),
        _headers(facts),
        *_ports(facts),
        *_secrets(facts),
        *_brokers(facts),
        _clock(facts),
        _policy(facts),
        _workload_ca(facts),
    ]


def failed(findings: list[Finding]) -> bool:
    return any(f.status is Status.FAIL for f in findings)


def _root(facts: Facts) -> Finding:
    if facts.euid == 0:
        return Finding("root", Status.OK, "running as root, as serve does")
    return Finding("root", Status.FAIL, f"running as uid {facts.euid}: serve, and several checks here, need root",
                   "run `sudo appliance doctor`")


def _kernel(facts: Facts) -> Finding:
    version = kernel_version(facts.kernel_release)
    need = ".".join(map(str, MIN_KERNEL))
    if version is None:
        return Finding("kernel", Status.UNKNOWN, f"cannot read a version from release {facts.kernel_release!r}")
    if version >= MIN_KERNEL:
        return Finding("kernel", Status.OK, f"{facts.kernel_release} (needs {need} or later)")
    return Finding("kernel", Status.FAIL, f"{facts.kernel_release} is older than {need} (sk_lookup, netns cookies)",
                   "boot a newer kernel: apt-get install linux-image-amd64 (Debian 12: 6.1) and reboot")


def _kernel_config(facts: Facts) -> Finding:
    if facts.kernel_config is None:
        return Finding("kernel-config", Status.UNKNOWN,
                       "no /proc/config.gz or /boot/config-<release> to read; the program loads below decide")
    missing = [o for o in KERNEL_OPTIONS if facts.kernel_config.get(o) != "y"]
    if not missing:
        return Finding("kernel-config", Status.OK, f"{', '.join(KERNEL_OPTIONS)}=y ({facts.kernel_config_source})")
    return Finding("kernel-config", Status.FAIL,
                   f"{', '.join(missing)} not =y in {facts.kernel_config_source}",
                   "boot a kernel built with these options (Debian's linux-image-amd64 has them)")


def _program_loads(facts: Facts) -> list[Finding]:
    findings = []
    for load in facts.program_loads:
        name = f"bpf-{load.kind}"
        if load.errno == 0:
            findings.append(Finding(name, Status.OK, f"the kernel loads a {load.kind} program"))
        elif load.errno == errno.EPERM:
            findings.append(Finding(name, Status.FAIL, f"loading a {load.kind} program: not permitted",
                                    "run as root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); check "
                                    "kernel.unprivileged_bpf_disabled does not matter to root"))
        else:
            findings.append(Finding(name, Status.FAIL,
                                    f"the kernel refuses a {load.kind} program: {os.strerror(load.errno)}",
                                    "boot a kernel with cgroup BPF, sock_ops and sk_lookup support (5.15+)"))
    return findings


def _bcc(facts: Facts) -> Finding:
    if facts.bcc_error is None:
        return Finding("bcc", Status.OK, "bcc imports (it compiles bpf/steering.c at start)")
    return Finding("bcc", Status.FAIL, f"bcc does not import: {facts.bcc_error}",
                   "apt-get install python3-bpfcc; the venv must come from /usr/bin/python3 -m venv "
                   "--system-site-packages (scripts/install makes it so)")


def _cgroup2(facts: Facts) -> Finding:
    found = [m.point for m in facts.mounts if m.fstype == "cgroup2"]
    if found:
        return Finding("cgroup2", Status.OK, f"cgroup v2 mounted at {found[0]}")
    return Finding("cgroup2", Status.FAIL, "no cgroup v2 hierarchy in /proc/mounts",
                   "mount -t cgroup2 none /sys/fs/cgroup/unified (or boot with systemd.unified_cgroup_hierarchy=1)")


def _bpffs(facts: Facts) -> Finding:
    mount = covering_mount(facts.mounts, facts.bpffs_dir)
    if mount is not None and mount.fstype == "bpf":
        return Finding("bpffs", Status.OK, f"bpffs_dir {facts.bpffs_dir} is on the bpffs mounted at {mount.point}")
    where = f"on {mount.fstype} mounted at {mount.point}" if mount else "on no mount"
    return Finding("bpffs", Status.FAIL, f"bpffs_dir {facts.bpffs_dir} is {where}, not on a bpf filesystem: "
                   "maps cannot be pinned there", "mount -t bpf bpf /sys/fs/bpf, and set bpffs_dir in "
                   f"{_config(facts)} to a directory under it (default /sys/fs/bpf/appliance)")


def _btf(facts: Facts) -> Finding:
    if facts.btf:
        return Finding("btf", Status.OK, "/sys/kernel/btf/vmlinux present")
    return Finding("btf", Status.FAIL, "/sys/kernel/btf/vmlinux is missing (the socket storage map needs BTF)",
                   "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's are)")


def _headers(facts: Facts) -> Finding:
    build = f"/lib/modules/{facts.kernel_release}/build"
    if facts.headers_makefile:
        return Finding("kernel-headers", Status.OK, f"{build} holds kernel headers for bcc")
    return Finding("kernel-headers", Status.FAIL, f"{build}/Makefile is missing: bcc cannot compile the programs",
                   f"apt-get install linux-headers-{facts.kernel_release}, or run scripts/install, which links "
                   "Debian's newest headers there when the running kernel has none packaged")


def _ports(facts: Facts) -> list[Finding]:
    findings = []
    for p in facts.listeners:
        where = f"[{p.host}]:{p.port}" if ":" in p.host else f"{p.host}:{p.port}"
        name = f"port {where}"
        if p.errno is None:
            findings.append(Finding(name, Status.OK, "free for the proxy's listener"))
        elif p.errno == errno.EADDRINUSE and facts.serving_pid is not None:
            findings.append(Finding(name, Status.OK, f"in use by appliance serve (pid {facts.serving_pid})"))
        elif p.errno == errno.EADDRINUSE:
            findings.append(Finding(name, Status.FAIL, "in use by another process",
                                    f"find it with `ss -ltnp 'sport = :{p.port}'` and stop it, or set listen_port "
                                    f"in {_config(facts)}"))
        elif p.errno == errno.EADDRNOTAVAIL:
            findings.append(Finding(name, Status.FAIL, "the address is not on this host",
                                    f"set listen_host4/listen_host6 in {_config(facts)} to this host's loopback"))
        else:
            findings.append(Finding(name, Status.FAIL, f"cannot bind: {os.strerror(p.errno)}",
                                    "run as root"))
    return findings


def _secrets(facts: Facts) -> list[Finding]:
    findings = []
    for f in facts.secret_files:
        name = f.role
        if f.mode is None:
            findings.append(Finding(name, Status.FAIL, f"{f.path} does not exist",
                                    f"write it (docs/configuration.md, the credentials file; mode 0600, owner root), "
                                    f"set {f.role} in {_config(facts)}, or run `appliance broker start` when "
                                    "the embedded broker is the upstream"))
            continue
        if stat.S_ISLNK(f.mode) or not stat.S_ISREG(f.mode):
            findings.append(Finding(name, Status.FAIL, f"{f.path} is not a regular file (a symlink is refused)",
                                    f"replace it with the file itself: cp --remove-destination \"$(readlink -f "
                                    f"{f.path})\" {f.path}"))
            continue
        faults = []
        if f.uid != 0:
            faults.append(f"owned by uid {f.uid}, not root")
        if stat.S_IMODE(f.mode) & 0o077:
            faults.append(f"mode {stat.S_IMODE(f.mode):04o} lets group or others read it")
        if f.dir_mode is not None and stat.S_IMODE(f.dir_mode) & 0o022:
            faults.append(f"its directory (mode {stat.S_IMODE(f.dir_mode):04o}) lets others replace it")
        if faults:
            findings.append(Finding(name, Status.FAIL, f"{f.path}: {'; '.join(faults)}",
                                    f"chown root:root {f.path} && chmod 600 {f.path} && chmod go-w "
                                    f"{PurePosixPath(f.path).parent}"))
        elif f.load_error is not None:
            findings.append(Finding(name, Status.FAIL, f"root's alone, but serve would refuse it: {f.load_error}",
                                    f"correct {f.path} (docs/configuration.md has the format)"))
        else:
            findings.append(Finding(name, Status.OK, f"{f.path} is root's alone (mode {stat.S_IMODE(f.mode):04o})"))
    return findings


def _brokers(facts: Facts) -> list[Finding]:
    findings = []
    for b in facts.brokers:
        name = f"broker {b.address}"
        if b.reachable:
            findings.append(Finding(name, Status.OK, f"reachable: {b.detail}"))
        else:
            findings.append(Finding(name, Status.FAIL, f"unreachable: {b.detail}",
                                    f"start the broker or correct `brokers` in {_config(facts)}; check routes "
                                    "and firewalls from this host"))
    return findings


def _clock(facts: Facts) -> Finding:
    clock = facts.clock
    why = ("token expiry and not-before are checked against this clock (leeway_s)" if facts.tokens_in_use else
           "no token validation is configured, so nothing depends on it yet")
    fix = "apt-get install systemd-timesyncd (or chrony), then timedatectl set-ntp true"
    if clock.timesync_synchronized:
        return Finding("clock", Status.OK, "systemd-timesyncd reports the clock synchronized")
    if clock.adjtimex_state is None:
        return Finding("clock", Status.UNKNOWN, f"cannot tell whether the clock is synchronized (adjtimex failed); {why}",
                       fix)
    unsynced = clock.adjtimex_state == TIME_ERROR or bool((clock.adjtimex_status or 0) & STA_UNSYNC)
    if not unsynced:
        error = f", estimated error up to {clock.max_error_us / 1000:.0f} ms" if clock.max_error_us is not None else ""
        return Finding("clock", Status.OK, f"the kernel reports the clock synchronized by NTP{error}")
    # An unsynchronized kernel clock may still be right (a guest set by its host), so this warns, never fails.
    return Finding("clock", Status.WARN, f"the kernel reports no NTP synchronization (adjtimex state "
                   f"{clock.adjtimex_state}, STA_UNSYNC); {why}", fix)


def _policy(facts: Facts) -> Finding:
    if facts.policy_error is None:
        return Finding("policy", Status.OK, f"{facts.policy_file} loads")
    return Finding("policy", Status.FAIL, facts.policy_error,
                   f"correct the policy (appliance policy check) or set policy_file in {_config(facts)}")


def _workload_ca(facts: Facts) -> Finding:
    if facts.workload_ca_state == "absent":
        return Finding("workload CA", Status.OK, f"{facts.workload_ca} not made yet: serve makes it at its first "
                       "start (or run appliance workload-ca)")
    if facts.workload_ca_state == "ok":
        return Finding("workload CA", Status.OK, f"{facts.workload_ca} and its root-only key load; workloads "
                       "enrolled with --workload-tls terminate trust it")
    return Finding("workload CA", Status.FAIL, f"serve would refuse to start: {facts.workload_ca_state}",
                   "restore the file; or remove workload-ca.pem and workload-ca.key to make a new CA, and give its "
                   "certificate to every workload enrolled with --workload-tls terminate (docs/tls.md)")
