"""The thin shell of `appliance doctor`: look at the host and the configuration, judge nothing.

Every function here reads one fact (a file, a syscall's answer, a connect)
and `collect` puts them in a `checks.Facts`; `checks.evaluate` decides.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import gzip
import os
import platform
import socket
import time
from pathlib import Path

from appliance.config import BrokerAddress, Config
from appliance.doctor.checks import (
    BrokerProbeResult,
    Clock,
    Facts,
    PortProbe,
    ProgramLoad,
    SecretFile,
    parse_kernel_config,
    parse_mounts,
)

BROKER_TIMEOUT_S = 3.0
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
# (what, program type, expected attach type) from uapi linux/bpf.h: the three kinds bpf/steering.c loads.
_PROBES = (
    ("sock_addr", 18, 10),  # BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT
    ("sock_ops", 13, 3),  # BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS
    ("sk_lookup", 30, 36),  # BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP
)
# r0 = 1; exit: "allow" / "pass" for each of the three types.
_RETURN_ONE = bytes.fromhex("b700000001000000" "9500000000000000")


def collect(config: Config) -> Facts:
    from appliance.service import serving_pid

    release = platform.release()
    kernel_config, kernel_config_source = _kernel_config(release)
    secrets = [("upstream_credentials", config.upstream_credentials)]
    if config.identity.static_credentials_file is not None:
        secrets.append(("static_credentials_file", config.identity.static_credentials_file))
    for provider in config.identity.providers:
        if provider.introspection_client_secret_file is not None:
            secrets.append(("introspection_client_secret_file", provider.introspection_client_secret_file))
    serving = serving_pid(config)
    return Facts(
        euid=os.geteuid(),
        kernel_release=release,
        kernel_config=kernel_config,
        kernel_config_source=kernel_config_source,
        program_loads=tuple(ProgramLoad(kind, _try_program(ptype, atype)) for kind, ptype, atype in _PROBES),
        bcc_error=_bcc_error(),
        mounts=parse_mounts(Path("/proc/mounts").read_text()),
        btf=Path("/sys/kernel/btf/vmlinux").exists(),
        headers_makefile=Path(f"/lib/modules/{release}/build/Makefile").exists(),
        bpffs_dir=str(config.bpffs_dir),
        listeners=tuple(PortProbe(host, config.listen_port, _bind_errno(host, config.listen_port))
                        for host in (config.listen_host4, config.listen_host6)),
        serving_pid=serving,
        secret_files=tuple(_secret_file(role, path) for role, path in secrets),
        brokers=_probe_brokers(config),
        clock=_clock(),
        tokens_in_use=bool(config.identity.providers) or _upstream_is_oauth(config.upstream_credentials),
        policy_file=str(config.policy_file),
        policy_error=_policy_error(config.policy_file),
        config_source=config.source,
        workload_ca=str(config.state_dir / "workload-ca.pem"),
        workload_ca_state=_workload_ca_state(config.state_dir),
    )


def _kernel_config(release: str) -> tuple[dict[str, str] | None, str | None]:
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release}")):
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = gzip.decompress(raw).decode(errors="replace") if path.suffix == ".gz" else raw.decode(errors="replace")
        return parse_kernel_config(text), str(path)
    return None, None


def _try_program(prog_type: int, attach_type: int) -> int:
    """Offer the verifier a two-instruction program of this type: 0 if it loads, else the errno."""
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        return errno.ENOSYS
    insns = ctypes.create_string_buffer(_RETURN_ONE, len(_RETURN_ONE))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)  # union bpf_attr, zeroed past the fields set
    ctypes.c_uint32.from_buffer(attr, 0).value = prog_type
    ctypes.c_uint32.from_buffer(attr, 4).value = len(_RETURN_ONE) // 8
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(insns)
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(license_)
    ctypes.c_uint32.from_buffer(attr, 68).value = attach_type  # expected_attach_type
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(ctypes.c_long(number), ctypes.c_int(_BPF_PROG_LOAD), attr, ctypes.c_uint(ctypes.sizeof(attr)))
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def _bcc_error() -> str | None:
    try:
        import bcc  # noqa: F401
    except Exception as e:  # ImportError, or a libbcc that fails to load
        return f"{type(e).__name__}: {e}"
    return None


def _bind_errno(host: str, port: int) -> int | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy's listener binds
        try:
            sock.bind((host, port))
        except OSError as e:
            return e.errno
    return None


def _secret_file(role: str, path: Path) -> SecretFile:
    try:
        info = os.lstat(path)
    except OSError:
        return SecretFile(role, str(path))
    try:
        dir_mode = os.stat(path.parent).st_mode
    except OSError:
        dir_mode = None
    return SecretFile(role, str(path), mode=info.st_mode, uid=info.st_uid, dir_mode=dir_mode,
                      load_error=_load_error(role, path))


def _load_error(role: str, path: Path) -> str | None:
    """The appliance's own loader over the file, as serve will run it at start."""
    from appliance.broker.credentials import CredentialsError, load_credentials
    from appliance.identity.static_credentials import StaticCredentialsError, load_static_credentials

    try:
        if role == "upstream_credentials":
            load_credentials(path)
        elif role == "static_credentials_file":
            load_static_credentials(path)
    except (CredentialsError, StaticCredentialsError) as e:
        return str(e)
    return None


def _upstream_is_oauth(path: Path) -> bool:
    from appliance.broker.credentials import CredentialsError, OAuthBearerCredentials, load_credentials

    try:
        return isinstance(load_credentials(path), OAuthBearerCredentials)
    except CredentialsError:
        return False


def _probe_brokers(config: Config) -> tuple[BrokerProbeResult, ...]:
    # From the proxy's own cgroup: when steering is attached, it is exempt, so this connect goes where the
    # proxy's would, not into the steering (which refuses this unenrolled shell's connects to the brokers).
    if os.geteuid() == 0:
        from appliance.identity import cgroups

        try:
            cgroups.move_process(os.getpid(), cgroups.ensure(config.proxy_cgroup))
        except (OSError, cgroups.CgroupError):
            pass  # the cgroup2 check says why
    results = []
    for b in config.brokers:
        if isinstance(b, BrokerAddress):
            results.append(_broker_reachable(b, config.upstream_tls))
            continue
        try:  # a broker given by name: each address it resolves to, as serve steers them
            addresses = list(dict.fromkeys(i[4][0] for i in socket.getaddrinfo(b.name, b.port, type=socket.SOCK_STREAM)))
        except OSError as e:
            results.append(BrokerProbeResult(str(b), False, f"does not resolve: {e.strerror or e}"))
            continue
        for host in addresses:
            result = _broker_reachable(BrokerAddress(host, b.port), config.upstream_tls, name=b.name)
            results.append(dataclasses.replace(result, address=f"{b} ({result.address})"))
    return tuple(results)


def _broker_reachable(broker: BrokerAddress, tls=None, timeout_s: float = BROKER_TIMEOUT_S,
                      name: str | None = None) -> BrokerProbeResult:
    """One TCP connect to the broker, named in the result; with `upstream_tls` (`tls`), one TLS handshake as
    the proxy makes it instead, so doctor and serve name the same fault."""
    started = time.monotonic()
    if tls is not None and tls.enabled:
        from appliance.proxy.upstream_tls import probe

        fault = probe(tls, broker, timeout_s=timeout_s, name=name)
        if fault is not None:
            return BrokerProbeResult(str(broker), False, fault)
        return BrokerProbeResult(str(broker), True, f"TLS handshake in {(time.monotonic() - started) * 1000:.0f} ms")
    family = socket.AF_INET6 if broker.family == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect((broker.host, broker.port))
    except socket.timeout:
        return BrokerProbeResult(str(broker), False, f"no answer within {timeout_s:g} s")
    except OSError as e:
        return BrokerProbeResult(str(broker), False, f"TCP connect failed: {e.strerror or e}")
    return BrokerProbeResult(str(broker), True, f"TCP connect in {(time.monotonic() - started) * 1000:.0f} ms")


class _Timex(ctypes.Structure):
    # struct timex (adjtimex(2)) up to `status`; the kernel writes the rest into the padding.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("_rest", ctypes.c_byte * 256)]


def _clock() -> Clock:
    synchronized = Path("/run/systemd/timesync/synchronized").exists()
    timex = _Timex()  # modes 0: read only
    state = ctypes.CDLL(None, use_errno=True).adjtimex(ctypes.byref(timex))
    if state < 0:
        return Clock(synchronized)
    return Clock(synchronized, adjtimex_state=state, adjtimex_status=timex.status, max_error_us=timex.maxerror)


def _workload_ca_state(state_dir: Path) -> str:
    from appliance.proxy.workload_tls import CaFiles, WorkloadCaError, existing

    try:
        return "absent" if existing(CaFiles.under(state_dir), time.time()) is None else "ok"
    except WorkloadCaError as e:
        return str(e)


def _policy_error(path: Path) -> str | None:
    from appliance.policy.parser import PolicyError, load_policy

    try:
        load_policy(path)
    except PolicyError as e:
        return str(e)
    except OSError as e:
        return f"{path}: cannot read the policy: {e.strerror}"
    return None
