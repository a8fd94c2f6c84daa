"""The embedded broker: one Apache Kafka 4.1 node (KRaft, broker and controller in one JVM), run as a daemon.

    broker = EmbeddedBroker(config.embedded_broker)
    broker.start()          # formats the data directory on first use, then waits until it answers
    broker.status()         # pid, client addresses, log file
    broker.stop()           # SIGTERM, then SIGKILL after the timeout

The JVM runs from the jars scripts/setup resolved into the jar cache
(`java -cp <cache>/kafka-4.1.1/* kafka.Kafka server.properties`), detached in its
own session, with its pid in `<data_dir>/broker.pid`, so it outlives the
command that started it. A `sh` wrapper writes its own pid into the broker's
cgroup before it execs java, so every socket the broker opens belongs to that
cgroup and steering can exempt it; with `netns`, `ip netns exec` comes after the
cgroup move because it remounts /sys, hiding the cgroup tree from the broker.

Users: `appliance` (the only client principal with rights: a super user) and
`intruder` (valid credentials, no ACLs; tests use it to prove a stranger can do
nothing). Both get SCRAM-SHA-512 and SCRAM-SHA-256 credentials at format time and
a PLAIN entry in the JAAS configuration; their passwords are in
`<data_dir>/{appliance,intruder}-credentials.json` (mode 0600). The listener
layout and its reasons are in appliance/broker/properties.py.

start() holds a lock file in the data directory, so two processes starting the
same broker get one JVM. It returns once every client listener answers an
ApiVersions request (probe.py), which Kafka allows only after the node has
loaded its metadata, SCRAM credentials and ACLs.

Costs: the JVM takes a 512 MiB heap by default (config `heap`). On two cores a
cold start (format, then start) takes 3-4 s, a warm start about 2.5 s and a stop
about 0.5 s; most of the start is JVM and Scala class loading.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import daemon
from appliance.broker import jvm, probe
from appliance.broker.credentials import UpstreamCredentials, load_credentials
from appliance.broker.errors import BrokerError
from appliance.broker.netns import exists as netns_exists
from appliance.broker.netns import run_in
from appliance.broker.properties import (
    APPLIANCE_USER,
    ClusterMember,
    TOOLS_LOG4J2,
    BrokerFiles,
    client_addresses,
    client_properties,
    internal_port,
    jvm_system_properties,
    listening_addresses,
    log4j2_properties,
    oauth_address,
    server_properties,
    tls_listeners,
)
from appliance.broker.storage import ensure_credentials, ensure_tls_files, format_storage, write_private
from appliance.config import BrokerAddress, EmbeddedBrokerConfig
from appliance.identity import cgroups

__all__ = ["BrokerError", "BrokerStatus", "EmbeddedBroker"]

log = logging.getLogger(__name__)

_TAIL_LINES = 40
# $1 is the cgroup directory; the rest is the command to exec inside it.
_CGROUP_WRAPPER = 'echo $$ > "$1/cgroup.procs" || exit 125; shift; exec "$@"'


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """What `appliance broker status` reports."""

    running: bool
    pid: int | None
    answering: bool
    client_addresses: tuple[str, ...]
    log_path: Path
    data_dir: Path
    netns: str | None = None
    oauth_address: str | None = None  # the OAUTHBEARER listener, when configured
    tls_listeners: tuple[tuple[str, str], ...] = ()  # (name, address) of each TLS listener, when configured
    tls_ca: Path | None = None  # the CA their certificates chain to


class EmbeddedBroker:
    """One embedded Kafka node, identified by its data directory."""

    def __init__(self, config: EmbeddedBrokerConfig, *, netns: str | None = None,
                 cluster: ClusterMember | None = None):
        """`cluster`: this node is one of a multi-node cluster (properties.ClusterMember); its start() returns
        once a quorum of the nodes runs, so start the nodes side by side."""
        self.config = config
        self.netns = netns
        self.cluster = cluster
        self.files = BrokerFiles(Path(config.data_dir))
        self._child: subprocess.Popen | None = None
        self._log_offsets: dict[Path, int] = {}  # log sizes at our launch: a failure shows only this run's lines

    def __repr__(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        return f"<EmbeddedBroker {self.files.data_dir} {', '.join(map(str, self.addresses))}{where}>"

    # -- public API ------------------------------------------------------------------

    @property
    def addresses(self) -> tuple[BrokerAddress, ...]:
        """The client listeners, IPv4 first."""
        return client_addresses(self.config)

    @property
    def oauth_address(self) -> BrokerAddress | None:
        """The OAUTHBEARER listener (config `oauth`), or None."""
        return oauth_address(self.config)

    @property
    def jar_dir(self) -> Path:
        return jvm.jar_dir(self.config.jar_cache)

    @property
    def credentials(self) -> UpstreamCredentials:
        """The appliance's credentials, read from `<data_dir>/appliance-credentials.json`."""
        return load_credentials(self.files.appliance_credentials)

    def start(self, timeout: float = 90) -> None:
        """Start the node (formatting its data directory on first use) and wait until every client listener answers.

        Idempotent: if this data directory's broker is already running, only waits for it to answer.
        Raises BrokerError, with the tail of the logs, if the JVM exits or does not answer in `timeout` seconds.
        """
        started = time.monotonic()
        deadline = started + timeout
        java = jvm.find_java(self.jar_dir)
        self._prepare_directories()
        with self._start_lock(deadline):
            pid = self._running_pid()
            if pid is not None:
                self._wait_until_answering(pid, deadline)
                return
            self._start_locked(java, started, deadline)

    def _start_locked(self, java: str, started: float, deadline: float) -> None:
        if self.netns is not None:
            self._prepare_netns()
        self._check_ports_free()
        appliance, intruder = ensure_credentials(self.files)
        if self.config.tls is not None:
            ensure_tls_files(self.files, self.config, datetime.datetime.now(datetime.timezone.utc))
        write_private(
            self.files.server_properties,
            server_properties(
                self.config,
                self.files,
                appliance=appliance,
                intruder=intruder,
                node_password=secrets.token_urlsafe(24) if self.cluster is None else self.cluster.node_password,
                cluster=self.cluster,
            ),
        )
        self.files.log4j2_config.write_text(log4j2_properties(self.files.server_log))
        self.files.tools_log4j2_config.write_text(TOOLS_LOG4J2)
        if not self.files.meta_properties.exists():
            format_storage(self.files, java, self.jar_dir, (appliance, intruder), deadline - time.monotonic(),
                           cluster=None if self.cluster is None else self.cluster.cluster_id)
        formatted = time.monotonic()
        pid = self._launch(java)
        try:
            self._wait_until_answering(pid, deadline)
        except BrokerError:
            self._terminate(pid, 10)  # a half-started broker must not linger
            self.files.pid_file.unlink(missing_ok=True)
            raise
        log.info(
            "embedded broker pid %d answering on %s after %.1f s (format %.1f s)",
            pid, ", ".join(map(str, self.addresses)), time.monotonic() - started, formatted - started,
        )

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the broker, SIGKILL it if it has not exited after `timeout` seconds; no-op if it is not running."""
        pid = self._running_pid()
        if pid is not None:
            self._terminate(pid, timeout)
        self.files.pid_file.unlink(missing_ok=True)

    def status(self) -> BrokerStatus:
        """Whether this data directory's broker runs and answers, where it listens and where it logs."""
        pid = self._running_pid()
        answering = pid is not None and self._answering()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            answering=answering,
            client_addresses=tuple(str(a) for a in self.addresses),
            log_path=self.files.server_log,
            data_dir=self.files.data_dir,
            netns=self.netns,
            oauth_address=None if self.oauth_address is None else str(self.oauth_address),
            tls_listeners=tuple((name, str(a)) for name, a in tls_listeners(self.config).items()),
            tls_ca=self.files.ca_cert if self.config.tls is not None else None,
        )

    def java_tool(
        self, main_class: str, *args: object, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a Kafka command-line tool (e.g. org.apache.kafka.tools.TopicCommand) from the cached jars.

        Runs in the broker's network namespace if it has one; logs warnings to stderr.
        Output is text; the caller checks returncode.
        """
        java = jvm.find_java(self.jar_dir)
        self.files.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.files.tools_log4j2_config.exists():
            self.files.tools_log4j2_config.write_text(TOOLS_LOG4J2)
        argv = [*self._netns_prefix(),
                *jvm.tool_argv(java, self.jar_dir, self.files.tools_log4j2_config, main_class, *map(str, args))]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)

    def client_properties(
        self, path: Path, *, user: str = APPLIANCE_USER, mechanism: str = "SCRAM-SHA-512"
    ) -> Path:
        """Write a SASL_PLAINTEXT client .properties (mode 0600) for `user` (`appliance` or `intruder`),
        for the Java tools' --command-config / --producer.config / --consumer.config."""
        stored = load_credentials(self.files.credentials_file(user))
        credentials = UpstreamCredentials(mechanism, stored.username, stored.password)
        path = Path(path)
        write_private(path, client_properties(credentials))
        return path

    # -- start-up steps --------------------------------------------------------------

    def _netns_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @contextlib.contextmanager
    def _start_lock(self, deadline: float):
        """Serialise start() across processes (a demo and a test fixture may share a data directory)."""
        with open(self.files.data_dir / ".start.lock", "w") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise BrokerError(f"another process is starting the broker in {self.files.data_dir}") from None
                    time.sleep(0.1)
            yield

    def _prepare_directories(self) -> None:
        data = self.files.data_dir
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)  # credentials, passwords in server.properties, the data itself
        self.files.log_dir.mkdir(exist_ok=True)

    def _prepare_netns(self) -> None:
        if not netns_exists(self.netns):
            raise BrokerError(f"network namespace {self.netns!r} does not exist (no /run/netns/{self.netns})")
        # The controller and inter-broker listeners are on 127.0.0.1 inside the namespace.
        done = subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"cannot bring up lo in network namespace {self.netns!r}: {done.stderr.strip()}")

    def _check_ports_free(self) -> None:
        """Fail early, naming the address, rather than after format with Kafka's bind error in the log."""
        node_host = "127.0.0.1" if self.cluster is None else self.config.host4
        wanted = [*listening_addresses(self.config), *tls_listeners(self.config).values(),
                  BrokerAddress(node_host, self.config.controller_port),
                  BrokerAddress(node_host, internal_port(self.config))]
        where = f" in network namespace {self.netns}" if self.netns else ""
        for address in wanted:
            try:
                run_in(self.netns, lambda: _try_bind(address))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    raise BrokerError(f"cannot listen on {address}{where}: no interface has {address.host}") from None
                raise BrokerError(
                    f"cannot listen on {address}{where}: {e.strerror}; another process (another broker?) holds it. "
                    f"Give this broker other ports, or stop the other one"
                ) from None

    def _launch(self, java: str) -> int:
        cgroup = cgroups.ensure(self.config.cgroup)
        argv = [
            "sh", "-c", _CGROUP_WRAPPER, "appliance-broker", str(cgroup.directory),
            *self._netns_prefix(),
            *jvm.server_argv(java, self.jar_dir, self.files.log4j2_config, self.config.heap,
                             self.files.server_properties, jvm_system_properties(self.config)),
        ]
        self._log_offsets = {path: _size(path) for path in (self.files.server_log, self.files.console_log)}
        with open(self.files.console_log, "ab") as console:
            console.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            console.flush()
            self._child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=self.files.data_dir, start_new_session=True,
            )
        self.files.pid_file.write_text(f"{self._child.pid}\n")
        return self._child.pid

    def _answering(self) -> bool:
        cgroup = cgroups.ensure(self.config.cgroup)
        return probe.answers_from_cgroup(listening_addresses(self.config), cgroup_dir=cgroup.directory,
                                         netns=self.netns)

    def _wait_until_answering(self, pid: int, deadline: float) -> None:
        while True:
            if not self._alive(pid):
                status = ""
                if self._child is not None and self._child.pid == pid and self._child.returncode is not None:
                    status = f" with status {self._child.returncode}"
                self.files.pid_file.unlink(missing_ok=True)
                raise BrokerError(f"the embedded broker (pid {pid}) exited{status} while starting"
                                  f"{self._jwks_failure()}\n{self._log_tail()}")
            if self._answering():
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the embedded broker (pid {pid}) did not answer on {', '.join(map(str, self.addresses))} "
                    f"in time\n{self._log_tail()}"
                )
            time.sleep(0.1)

    # -- the process -----------------------------------------------------------------

    def _running_pid(self) -> int | None:
        """The pid in the pid file, if that process is alive and is this data directory's broker."""
        try:
            pid = int(self.files.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not self._alive(pid):
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # Between fork and exec it is still the sh wrapper, whose arguments hold the same path.
        if str(self.files.server_properties).encode() not in argv:
            return None  # the pid was reused by something else
        return pid

    def _alive(self, pid: int) -> bool:
        return daemon.alive(pid, self._child)

    def _terminate(self, pid: int, timeout: float) -> None:
        daemon.terminate(pid, timeout, what="embedded broker", error=BrokerError, child=self._child)

    def _jwks_failure(self) -> str:
        """Why the OAUTHBEARER listener stopped the start, if it did: Kafka's BrokerJwtValidator fetches the
        JWKS when the broker starts, and a fetch that fails is fatal to the whole broker."""
        if self.config.oauth is None:
            return ""
        try:
            with open(self.files.server_log, "rb") as f:
                f.seek(self._log_offsets.get(self.files.server_log, 0))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        marker = "sasl.oauthbearer.jwt.validator.class configuration encountered an error on configure():"
        at = text.find(marker)
        if at < 0:
            return ""
        cause = text[at + len(marker):].split("(org.apache", 1)[0].strip()[:300]
        return (f": its OAUTHBEARER listener could not load the JWKS at {self.config.oauth.jwks_url} ({cause}); "
                "Kafka fetches it when the broker starts and exits if it cannot, so the identity provider must "
                "answer first")

    def _log_tail(self) -> str:
        parts = []
        for path in (self.files.server_log, self.files.console_log):
            try:
                with open(path, "rb") as f:
                    f.seek(self._log_offsets.get(path, 0))
                    lines = f.read().decode(errors="replace").splitlines()[-_TAIL_LINES:]
            except OSError:
                continue
            if not lines:
                continue
            parts.append(f"--- last {len(lines)} lines of {path}:\n" + "\n".join(lines))
        return "\n".join(parts) or f"(no log in {self.files.log_dir})"


def _try_bind(address: BrokerAddress) -> None:
    family = socket.AF_INET6 if address.family == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Kafka does: TIME_WAIT is no obstacle
        s.bind((address.host, address.port))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


