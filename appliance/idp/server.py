"""The local Keycloak: one dev-mode server per state directory, run as a daemon.

    idp = LocalKeycloak(Path("/var/lib/appliance/idp"), port=18080, realm=DEMO_REALM)
    idp.start()               # copy the distribution on first use, write the realm, wait for discovery
    idp.status()              # pid, port, issuer, endpoints, uptime, clients
    idp.token("orders")       # a client_credentials access token (a JWT)
    idp.stop()                # SIGTERM, then SIGKILL after the timeout

    LocalKeycloak(..., https=HttpsListener(18443, Path("server.pem"), Path("server.key")))
    idp.https_endpoints       # the token endpoint and JWKS on the https port (the issuer stays the http one)

The server is `kc.sh start-dev` from a private copy of the distribution in the
state directory (Keycloak writes its build output and data into its home, so
two instances must not share one), on 127.0.0.1 only, with `--hostname` fixed
to `http://127.0.0.1:<port>` so the issuer of every token is the same however
the server was reached. Its database is H2 in memory (`--db dev-mem`): every
start imports the realm file afresh, so what the realm table says is what the
server serves. Service-account user ids, client secrets and the realm's
signing key are fixed by the realm table and the state directory, so a restart
changes neither a token's `sub`, nor a secret, nor the JWKS: a token issued
before a restart still verifies after it.

With `https`, the same server also listens on an https port with the given
certificate and key (PEM). The issuer stays `http://127.0.0.1:<port>/...`,
so a token's `iss` is the same whichever port issued it; with
`--hostname-backchannel-dynamic` the back-channel URLs (token endpoint, JWKS)
that discovery names follow the port they were asked on, so the https port's
discovery names https ones. Tests use it to reach the token endpoint and the
JWKS over verified TLS without a second server.

It runs detached in its own session, with the pid of kc.sh (the session
leader; java is its child, or kc.sh itself after a rebuild's re-exec) in
`instance.json`, so it outlives the command that started it and stop()
signals the whole process group. start() holds a lock file in the state
directory, so two processes starting the same instance get one server.

Costs (measured on two cores): the distribution is a 157 MiB zip unpacked to
175 MiB, copied once per state directory; the first start of a copy runs
Keycloak's build step and took 41-60 s, later starts 18-34 s, a stop about
0.6 s; the server's resident memory is about 0.5 GiB (470-550 MiB).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import daemon
from appliance.idp import tokens
from appliance.idp.client_secrets import ensure_admin_password, ensure_secrets, load_secrets, write_private
from appliance.idp.distribution import KEYCLOAK_VERSION, check_distribution, distribution_dir, find_java
from appliance.idp.errors import IdpError
from appliance.idp.files import IdpFiles
from appliance.idp.instance import ClientInfo, InstanceRecord, RecordError
from appliance.idp.realm import DEMO_REALM, Endpoints, Realm, representation
from appliance.idp.signing_key import ensure_signing_key, keycloak_form

__all__ = ["DEFAULT_PORT", "DEFAULT_JAR_CACHE", "HttpsListener", "IdpStatus", "LocalKeycloak"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 18080
DEFAULT_JAR_CACHE = Path(os.environ.get("APPLIANCE_JAR_CACHE", "/var/cache/appliance"))
ADMIN_USER = "admin"
HOST = "127.0.0.1"

_TAIL_LINES = 40


@dataclass(frozen=True, slots=True)
class HttpsListener:
    """An https port beside the http one: Keycloak serves the same realm on it with this certificate and key (PEM)."""

    port: int
    certificate_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class IdpStatus:
    """What `appliance idp status` reports. Endpoints and clients are those of the running (or last) instance."""

    running: bool
    answering: bool
    pid: int | None
    port: int | None
    realm: str | None
    audience: str | None
    endpoints: Endpoints | None
    started_at: float | None
    uptime_s: float | None
    clients: tuple[ClientInfo, ...]
    secrets_file: Path
    log_path: Path
    state_dir: Path

    def as_dict(self) -> dict:
        return {
            "running": self.running,
            "answering": self.answering,
            "pid": self.pid,
            "port": self.port,
            "realm": self.realm,
            "audience": self.audience,
            "issuer": self.endpoints.issuer if self.endpoints else None,
            "discovery": self.endpoints.discovery if self.endpoints else None,
            "token_endpoint": self.endpoints.token if self.endpoints else None,
            "jwks_uri": self.endpoints.jwks if self.endpoints else None,
            "started_at": self.started_at,
            "uptime_s": self.uptime_s,
            "clients": [{"client_id": c.client_id, "groups": list(c.groups), "sub": c.sub,
                         "token_lifespan_s": c.token_lifespan_s} for c in self.clients],
            "secrets_file": str(self.secrets_file),
            "log": str(self.log_path),
            "state_dir": str(self.state_dir),
        }


class LocalKeycloak:
    """One local Keycloak, identified by its state directory."""

    def __init__(self, state_dir: Path, *, port: int = DEFAULT_PORT, realm: Realm = DEMO_REALM,
                 jar_cache: Path = DEFAULT_JAR_CACHE, https: HttpsListener | None = None):
        for p in (port,) + ((https.port,) if https else ()):
            if not 1 <= int(p) <= 65535:
                raise IdpError(f"port {p!r} is not a number from 1 to 65535")
        if https is not None and int(https.port) == int(port):
            raise IdpError(f"the https port {https.port} must differ from the http port")
        self.files = IdpFiles(Path(state_dir).absolute())
        self.port = int(port)
        self.https = https
        self.realm = realm
        self.jar_cache = Path(jar_cache)
        self._child: subprocess.Popen | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"<LocalKeycloak {self.files.state_dir} {HOST}:{self.port} realm {self.realm.name}>"

    # -- public API ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.of(self.base_url, self.realm.name)

    @property
    def https_endpoints(self) -> Endpoints:
        """The realm's URLs on the https port; the issuer is the http one, as in every token."""
        if self.https is None:
            raise IdpError(f"{self!r} was not given an https listener")
        on_https = Endpoints.of(f"https://{HOST}:{self.https.port}", self.realm.name)
        return Endpoints(issuer=self.endpoints.issuer, discovery=on_https.discovery, token=on_https.token,
                         jwks=on_https.jwks)

    @property
    def secrets_file(self) -> Path:
        return self.files.client_secrets

    def client_secret(self, client_id: str) -> str:
        self.realm.client(client_id)  # KeyError naming the realm's clients
        try:
            return load_secrets(self.files.client_secrets)[client_id]
        except KeyError:
            raise IdpError(f"{self.files.client_secrets} has no secret for {client_id!r}; start the provider first") from None

    def token_response(self, client_id: str, *, secret: str | None = None) -> dict:
        """The token endpoint's answer for `client_id` (its own secret unless `secret` is given)."""
        return tokens.client_credentials_token(
            self.endpoints.token, client_id, secret if secret is not None else self.client_secret(client_id))

    def token(self, client_id: str) -> str:
        """A fresh client_credentials access token (a signed JWT) for `client_id`."""
        return self.token_response(client_id)["access_token"]

    def start(self, timeout: float = 180) -> IdpStatus:
        """Start the server (copying the distribution on first use) and wait until the realm's discovery answers.

        Idempotent: if this state directory's server already runs on the same port with the same realm, only waits
        for it. Raises IdpError, with the tail of the log, if Keycloak exits or does not answer within `timeout`.
        """
        started = time.monotonic()
        deadline = started + timeout
        find_java()
        distribution = check_distribution(distribution_dir(self.jar_cache))
        self._prepare_state_dir()
        with self._start_lock(deadline):
            record = self._running_record()
            if record is not None:
                https_port = self.https.port if self.https else None
                if (record.port, record.https_port, record.realm, record.audience) != \
                        (self.port, https_port, self.realm.name, self.realm.audience):
                    raise IdpError(
                        f"the identity provider in {self.files.state_dir} already runs (pid {record.pid}) on port "
                        f"{record.port} (https port {record.https_port}) with realm {record.realm!r} and audience "
                        f"{record.audience!r}; stop it first "
                        f"(appliance idp stop --state-dir {self.files.state_dir})"
                    )
                self._wait_until_answering(record.pid, deadline)
                return self.status()
            self._start_locked(distribution, started, deadline)
        return self.status()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the server, SIGKILL it if it has not exited after `timeout` seconds; no-op if it is not running."""
        record = self._running_record()
        if record is not None:
            self._terminate(record.pid, timeout)
        self._forget_pid()

    def status(self) -> IdpStatus:
        """Whether this state directory's server runs and answers, with what it was started with."""
        record = self._read_record()
        running = self._running_record() is not None
        answering = running and self._answers(record.endpoints)
        return IdpStatus(
            running=running,
            answering=answering,
            pid=record.pid if running else None,
            port=record.port if record else None,
            realm=record.realm if record else None,
            audience=record.audience if record else None,
            endpoints=record.endpoints if record else None,
            started_at=record.started_at if record else None,
            uptime_s=(time.time() - record.started_at) if running else None,
            clients=record.clients if record else (),
            secrets_file=self.files.client_secrets,
            log_path=self.files.log,
            state_dir=self.files.state_dir,
        )

    # -- start-up steps --------------------------------------------------------------

    def _start_locked(self, distribution: Path, started: float, deadline: float) -> None:
        self._check_port_free()
        self._copy_distribution(distribution)
        client_secrets = ensure_secrets(self.files.client_secrets, self.realm.client_ids)
        admin_password = ensure_admin_password(self.files.admin_password)
        signing_key = ensure_signing_key(self.files.signing_key, f"{self.realm.name} realm, local identity provider")
        self._write_realm(client_secrets, keycloak_form(signing_key))
        pid = self._launch(admin_password)
        try:
            self._wait_until_answering(pid, deadline)
        except IdpError:
            self._terminate(pid, 10)  # a half-started server must not linger
            self._forget_pid()
            raise
        log.info("local Keycloak pid %d answering at %s after %.1f s", pid, self.endpoints.issuer,
                 time.monotonic() - started)

    def _prepare_state_dir(self) -> None:
        state = self.files.state_dir
        try:
            state.mkdir(parents=True, exist_ok=True)
            state.chmod(0o700)  # client secrets, the admin password, the realm file with secrets in it
        except OSError as e:
            raise IdpError(f"cannot use {state} as the identity provider's state directory: {e.strerror}") from None

    @contextlib.contextmanager
    def _start_lock(self, deadline: float):
        """Serialise start() across processes (the demo and a test may share a state directory)."""
        with open(self.files.start_lock, "w") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise IdpError(f"another process is starting the identity provider in "
                                       f"{self.files.state_dir}") from None
                    time.sleep(0.1)
            yield

    def _check_port_free(self) -> None:
        """Fail early, naming the port, rather than after Keycloak's 20 s start with a bind error in its log."""
        for port in (self.port,) + ((self.https.port,) if self.https else ()):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((HOST, port))
                except OSError as e:
                    if e.errno == errno.EADDRINUSE:
                        raise IdpError(
                            f"cannot listen on {HOST}:{port}: another process holds it (another identity provider?). "
                            "Choose another --port, or stop the other process"
                        ) from None
                    raise IdpError(f"cannot listen on {HOST}:{port}: {e.strerror}") from None

    def _copy_distribution(self, distribution: Path) -> None:
        """A private home for this instance, copied from the cache once (and again if a copy was interrupted)."""
        if self.files.home_complete.exists():
            return
        home = self.files.home
        log.info("copying Keycloak %s from %s to %s", KEYCLOAK_VERSION, distribution, home)
        shutil.rmtree(home, ignore_errors=True)
        # The cache's own data/ and build output, if any, are not this instance's.
        shutil.copytree(distribution, home, symlinks=True, ignore=shutil.ignore_patterns("data"))
        (home / "bin" / "kc.sh").chmod(0o755)
        self.files.home_complete.touch()

    def _write_realm(self, client_secrets: dict[str, str], signing_key: tuple[str, str]) -> None:
        import_dir = self.files.import_dir
        if import_dir.exists():
            for stale in import_dir.glob("*.json"):  # only the realm of this start is imported
                stale.unlink()
        import_dir.mkdir(parents=True, exist_ok=True)
        import_dir.chmod(0o700)
        write_private(self.files.realm_file(self.realm.name),
                      json.dumps(representation(self.realm, client_secrets, signing_key), indent=2) + "\n")

    def _argv(self) -> list[str]:
        argv = [
            "sh", str(self.files.kc_sh), "start-dev",
            "--http-host", HOST,
            "--http-port", str(self.port),
            # Fixes the issuer (and every URL in discovery), whatever Host header a client sends.
            "--hostname", self.base_url,
            "--db", "dev-mem",
            "--import-realm",
        ]
        if self.https is not None:
            for what, path in (("certificate", self.https.certificate_file), ("key", self.https.key_file)):
                if not Path(path).is_file():
                    raise IdpError(f"the https {what} file {path} does not exist")
            argv += [
                "--https-port", str(self.https.port),
                "--https-certificate-file", str(Path(self.https.certificate_file).absolute()),
                "--https-certificate-key-file", str(Path(self.https.key_file).absolute()),
                # Token endpoint and JWKS URLs follow the listener asked; the issuer stays --hostname's.
                "--hostname-backchannel-dynamic", "true",
            ]
        return argv

    def _launch(self, admin_password: str) -> int:
        argv = self._argv()
        env = {
            **os.environ,
            "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
        }
        # kc.sh's own JVM options (a 512 MiB heap ceiling) are right for dev mode; an inherited
        # JAVA_OPTS would replace all of them.
        env.pop("JAVA_OPTS", None)
        self._log_offset = _size(self.files.log)
        with open(self.files.log, "ab") as console:
            console.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            console.flush()
            self._child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=self.files.home, env=env, start_new_session=True,
            )
        self._write_record(self._child.pid)
        return self._child.pid

    def _write_record(self, pid: int) -> None:
        record = InstanceRecord.of(self.realm, pid=pid, port=self.port, started_at=time.time(),
                                   keycloak_version=KEYCLOAK_VERSION, endpoints=self.endpoints,
                                   https_port=self.https.port if self.https else None)
        write_private(self.files.instance, record.to_json())

    def _answers(self, endpoints: Endpoints) -> bool:
        try:
            discovery = tokens.get_json(endpoints.discovery, timeout=2)
        except IdpError:
            return False
        return isinstance(discovery, dict) and discovery.get("issuer") == endpoints.issuer

    def _wait_until_answering(self, pid: int, deadline: float) -> None:
        while True:
            if not self._alive(pid):
                status = ""
                if self._child is not None and self._child.pid == pid and self._child.returncode is not None:
                    status = f" with status {self._child.returncode}"
                self._forget_pid()
                raise IdpError(f"Keycloak (pid {pid}) exited{status} while starting\n{self._log_tail()}")
            if self._answers(self.endpoints):
                return
            if time.monotonic() >= deadline:
                raise IdpError(
                    f"Keycloak (pid {pid}) did not serve {self.endpoints.discovery} in time\n{self._log_tail()}"
                )
            time.sleep(0.25)

    # -- the process -----------------------------------------------------------------

    def _read_record(self) -> InstanceRecord | None:
        try:
            return InstanceRecord.from_json(self.files.instance.read_text())
        except FileNotFoundError:
            return None
        except (OSError, RecordError) as e:
            log.warning("ignoring %s: %s", self.files.instance, e)
            return None

    def _running_record(self) -> InstanceRecord | None:
        """instance.json, if its pid is alive and is this state directory's Keycloak."""
        record = self._read_record()
        if record is None or record.pid is None or not self._alive(record.pid):
            return None
        try:
            argv = Path(f"/proc/{record.pid}/cmdline").read_bytes()
        except OSError:
            return None
        # The sh running kc.sh names this home, and so does java (kc.home.dir) if kc.sh exec'd it.
        if str(self.files.home).encode() not in argv:
            return None  # the pid was reused by something else
        return record

    def _forget_pid(self) -> None:
        record = self._read_record()
        if record is not None and record.pid is not None:
            write_private(self.files.instance, record.stopped().to_json())

    def _alive(self, pid: int) -> bool:
        return daemon.alive(pid, self._child)

    def _terminate(self, pid: int, timeout: float) -> None:
        daemon.terminate(pid, timeout, what="Keycloak", error=IdpError, child=self._child)

    def _log_tail(self) -> str:
        try:
            with open(self.files.log, "rb") as f:
                f.seek(self._log_offset)
                lines = f.read().decode(errors="replace").splitlines()[-_TAIL_LINES:]
        except OSError:
            lines = []
        if not lines:
            return f"(nothing in {self.files.log})"
        return f"--- last {len(lines)} lines of {self.files.log}:\n" + "\n".join(lines)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
