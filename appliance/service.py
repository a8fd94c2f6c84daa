"""`appliance serve`: the serving process, wiring steering, identity, proxy and audit together.

Owns the lifecycle: enter the appliance's own (exempt) cgroup, attach the
kernel programs, start the proxy listeners, keep the kernel's view of
enrolments in line with the enrolment file, turn the kernel's refusal events
into audit rows, publish a status snapshot for `appliance status`, tell
systemd when it is ready and that it is alive (sd_notify), and on
SIGINT/SIGTERM close every session and detach everything (with
keep_steering, leave the steering attached so connects stay refused).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import errno
import gc
import json
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

from appliance.audit import store
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.records import Event
from appliance.audit.writer import AuditWriter
from appliance.broker.credentials import ClientCertificateOnly, OAuthBearerCredentials, load_credentials
from appliance.broker.oauth_token import TokenUnavailable
from appliance.broker.token_source import TokenSource
from appliance.config import BrokerAddress, Config, ConfigError
from appliance.identity import cgroups, containers
from appliance.identity.enrollment import Enrollment, EnrollmentStore
from appliance.identity.introspection import IntrospectionError
from appliance.identity.providers import TokenProviders
from appliance.identity.revocations import RevocationError, RevocationStore
from appliance.identity.static_credentials import StaticCredentialsError, load_static_credentials
from appliance.identity.workloads import WorkloadIdentity
from appliance.masking.secret import load_or_create_secret
from appliance.proxy.upstream_tls import TlsFileError, upstream_tls
from appliance.proxy.workload_tls import CaFiles, WorkloadCaError, WorkloadTls, load_or_create
from appliance.policy.model import Policy
from appliance.policy.parser import PolicyError, load_policy
from appliance.proxy.audit_gate import AUDIT_FAILING_ERROR
from appliance.proxy.discovery import Discovery, describe, expiry_interval_s, forgotten_events, parse_snapshot
from appliance.proxy.limits import Limits
from appliance.proxy.original_dst import kernel_lookup
from appliance.proxy.server import ProxyServer
from appliance.sd_notify import Notifier
from appliance.steering.loader import BrokerState, CgroupKind, Steering
from appliance.steering.names import BrokerNames
from appliance.steering.probe import BrokerProbe
from appliance.steering.structs import RefusalReason
from appliance.workload_netns import WorkloadNamespaces
from appliance.approvals.desk import Desk
from appliance.approvals.store import ApprovalStore
from appliance.approvals.webhook import Webhooks
from appliance.identity.provider_http import ProviderHttp

log = logging.getLogger("appliance")
# How long start-up waits for the first upstream OAuth token before serving anyway: sessions
# meanwhile fail their upstream authentication with the provider's error, audited.
_FIRST_TOKEN_WAIT_S = 10.0
# While the audit fails, the log says so again this often.
_AUDIT_FAILING_REMINDER_S = 10.0
# File descriptors beside two per session: listeners, pooled connections, SQLite, bcc, logs.
_FDS_BESIDE_SESSIONS = 128
_SYNC_INTERVAL_S = 0.25
_RESOLVE_INTERVAL_S = 2.0
_PATTERN_INTERVAL_S = 0.5  # pattern enrolments: a new container is enrolled this soon after its cgroup appears
_PATTERN_SKIPS_KEPT = 4096
_REFUSAL_WINDOW_NOTE = "refusals from one cgroup to one address within one poll (250 ms) share one event"
_STATUS_INTERVAL_S = 1.0
_REFUSERS_KEPT = 1024  # cgroups whose kernel counters status shows beside the enrolled and exempt ones
_REFUSAL_WORDS = {
    RefusalReason.UNENROLLED: "from unenrolled cgroup",
    RefusalReason.NO_PROXY: "(no proxy configured yet) from enrolled cgroup",
    RefusalReason.BROKER_DOWN: "(the appliance cannot reach that broker now) from enrolled cgroup",
    RefusalReason.FOREIGN_NETNS: "(a network namespace the proxy does not listen in yet) from enrolled cgroup",
    RefusalReason.NO_RECORD: "(no room to record the caller) from enrolled cgroup",
    RefusalReason.OUTSIDE: "(a broker a steered broker named, outside discovery.allowed_networks) from enrolled cgroup",
}


class Appliance:
    def __init__(self, config: Config, *, keep_steering: bool = False) -> None:
        self.config = config
        # On stop, leave the programs attached and the maps pinned (as a crash would): connects to the
        # brokers stay refused until the next serve takes the set over (systemd's restart, an upgrade).
        self.keep_steering = keep_steering
        self.notifier = Notifier()
        self.store = EnrollmentStore(config.enrollments_file)
        self.by_cgroup_id: dict[int, Enrollment] = {}
        self.enrolled_dirs: dict[int, Path] = {}  # cgroup id -> its directory, where its processes are listed
        self.namespaces: WorkloadNamespaces | None = None
        self.desk: Desk | None = None
        self.webhooks: Webhooks | None = None
        self.exempt: dict[int, str] = {}
        self._store_stamp: float | None = None
        self._last_full_sync = 0.0
        self._has_patterns = False
        # pattern -> matched path -> what its label gave (read once per container)
        self._pattern_identities: dict[str, dict[str, containers.PatternMatch]] = {}
        self._pattern_skips: dict[str, str] = {}  # cgroup path -> why a pattern's match is not enrolled (reported)
        self._stopping = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self.policy: Policy | None = None
        self._policy_stamp: float | None = None
        self.steering: Steering | None = None
        self.server: ProxyServer | None = None
        self.writer: AuditWriter | None = None
        self.probe: BrokerProbe | None = None
        # Brokers the cluster's answers name (proxy/discovery.py); None with discovery.enabled false.
        self.discovery = Discovery(config.discovery, config.broker_addresses) if config.discovery.enabled else None
        self._discovery_seeded = False  # until then the file is the previous run's, and is not overwritten
        self.names = BrokerNames(config.broker_names)  # brokers given by DNS name, and what they resolve to
        self.token_source: TokenSource | None = None  # with OAUTHBEARER upstream credentials
        self._refusers: dict[int, None] = {}  # insertion-ordered, bounded
        self.started_at = time.time()
        self.max_sessions = config.max_sessions
        self._audit_failing_logged: str | None = None
        self._audit_failing_reminded = 0.0

    # ---- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        config = self.config
        if config.upstream_credentials is None:  # no SASL: the client certificate is the principal (SSL)
            credentials = ClientCertificateOnly(config.upstream_tls.client_cert)
        else:
            credentials = load_credentials(config.upstream_credentials)
        # Built once: every upstream connection shares it. Its files were checked when the config loaded.
        try:
            tls = upstream_tls(config.upstream_tls)
        except (TlsFileError, ssl.SSLError) as e:  # a file changed since the load checked it
            raise ConfigError(f"{config.source}: key 'upstream_tls': {e}") from None
        workload_tls = self._workload_tls()  # a bad workload CA file stops the start, naming the file
        upstream = credentials
        if isinstance(credentials, OAuthBearerCredentials):
            self.token_source = upstream = TokenSource(credentials)
            self.token_source.start()  # the first fetch runs while the rest starts
        self._secret = load_or_create_secret(config.masking_secret)
        signing_key = load_or_create_signing_key(config.audit_signing_key)
        self.policy = self._load_policy()  # a bad policy at start stops here, naming the fault
        self._policy_stamp = _mtime(config.policy_file)
        self.workloads = self._workload_identity()  # so does a bad migration file or revocation file
        config.run_dir.mkdir(parents=True, exist_ok=True)
        own = cgroups.ensure(config.proxy_cgroup)
        cgroups.move_process(os.getpid(), own)
        previous_run = self._claim_run_marker()
        closed = self._close_orphan_sessions(previous_run)
        self.writer = AuditWriter(config.audit_db, flush_ms=config.audit_flush_ms, queue_max=config.audit_queue_max,
                                  signing_key=signing_key, checkpoint_dir=config.checkpoint_dir,
                                  max_age_days=config.audit_retention.max_age_days,
                                  max_bytes=config.audit_retention.max_bytes)
        self._record_unclean_stop(previous_run, closed)
        if self.token_source is not None:
            first = await self.token_source.first_token(_FIRST_TOKEN_WAIT_S)
            if isinstance(first, TokenUnavailable):
                log.error("no upstream OAUTHBEARER token yet: %s; serving anyway, sessions fail their upstream "
                          "authentication with this reason until a token is obtained", first.reason)
                self._event("error", f"no upstream OAUTHBEARER token at start: {first.reason}")
        self.max_sessions = _sessions_the_fd_limit_allows(config.max_sessions, config.upstream_pool * len(config.brokers))
        self.steering = Steering(
            bpffs_dir=config.bpffs_dir, proxy_port=config.listen_port, proxy_host4=config.listen_host4,
            proxy_host6=config.listen_host6, refuse_unenrolled=config.refuse_unenrolled,
        )
        self.probe = BrokerProbe([(b.host, b.port) for b in config.broker_addresses], self._mark_broker,
                                 interval_s=config.broker_probe_interval_ms / 1000)
        probing = watchdog = resolving = None
        try:
            # Listen before steering anything; the kernel hands steered
            # connections to these sockets alone, once admitted below.
            def make_server(port: int) -> ProxyServer:
                return ProxyServer(
                    hosts=(config.listen_host4, config.listen_host6), port=port,
                    lookup=kernel_lookup(self.steering, max_age_s=config.handoff_max_age_ms / 1000),
                    identity_of=self.by_cgroup_id.get, credentials=upstream, policy=lambda: self.policy,
                    audit=self.writer.submit, max_frame_bytes=config.max_frame_bytes,
                    upstream_pool=config.upstream_pool, upstream_failed=self.probe.failed,
                    workloads=self.workloads, upstream_tls=tls, discovery=self.discovery,
                    steer=self._steer_discovered, workload_tls=workload_tls, desk=self.desk, **self._bounds(),
                )

            self.webhooks = Webhooks(ProviderHttp(), self._event,
                                     console_url=config.console.base_url if config.console.enabled else None)
            self.desk = Desk(ApprovalStore(config.approvals_db, busy_timeout_ms=200), lambda: self.policy, self._event,
                             notify=self.webhooks.notify)
            self.server = make_server(config.listen_port)
            try:
                await self.server.start()
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                # Another process bound the port (possibly while we were down). It
                # receives nothing: sk_lookup hands every SYN to that address to our
                # sockets wherever they are bound, so listen on free ports instead.
                await self.server.stop()
                self.server = make_server(0)
                await self.server.start()
                taken = f"port {config.listen_port} on {config.listen_host4}/{config.listen_host6}"
                log.warning("%s is bound by another process; listening on free ports instead, and the kernel "
                            "hands steered connections to them (that process receives none)", taken)
                self._event("error", f"{taken} is bound by another process; the appliance listens on free ports "
                            "and the kernel still hands steered connections only to them")
            self.steering.attach()
            self.steering.set_brokers((b.host, b.port) for b in config.broker_addresses)
            await self.resolve_broker_names(start=True)
            self._seed_discovered()
            probing = asyncio.get_running_loop().create_task(self.probe.run())
            if self.names.names:
                resolving = asyncio.get_running_loop().create_task(self._resolve_names_periodically())
            self.exempt = {own.id: own.path}
            for path in config.exempt_cgroups:
                cg = cgroups.ensure(path)
                self.exempt[cg.id] = cg.path
            for cgroup_id in self.exempt:
                self.steering.set_cgroup(cgroup_id, CgroupKind.EXEMPT)
            self.sync_enrollments(force=True)
            # Ready: only now does the kernel hand steered connections to the
            # listeners; until here (and during a restart) they are refused.
            self.steering.admit(self.server.listening_sockets())
            self.namespaces = WorkloadNamespaces(self.server, self.steering, self._event,
                                                 per_workload=config.max_netns_per_workload)
            await self.namespaces.step(self.enrolled_dirs.values(), time.monotonic())
            self._event("start", f"appliance serving on port {config.listen_port}, steering "
                        f"{', '.join(map(str, config.brokers))}", detail={"config": config.source,
                        "exempt": sorted(self.exempt.values())})
            log.info("serving: listener %s/%s port %d; steering %s; config %s", config.listen_host4,
                     config.listen_host6, config.listen_port, ", ".join(map(str, config.brokers)), config.source)
            if tls is not None:
                log.info("upstream TLS to every broker (%s), verifying against %s%s, at least %s%s",
                         "SSL, no SASL" if config.upstream_credentials is None else "SASL_SSL", tls.trust, "" if tls.config.verify_hostname else " without checking host names",
                         tls.config.min_version, ", with a client certificate" if tls.config.client_cert else "")
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
            self._event("policy-load", f"policy {config.policy_file} in force: {len(self.policy.rules)} rules",
                        detail={"path": str(config.policy_file)})
            # What start-up made lives as long as the process: out of the cyclic
            # collector's sight, so the collection after sessions let go of a
            # lot of memory (proxy.server.release_freed_heap) stays short.
            gc.collect()
            gc.freeze()
            # systemd (Type=notify): ready once programs are attached and the listeners admitted; the
            # watchdog pings come from this event loop, so a loop that stops turning stops them.
            self.notifier.send(ready=True, status=f"serving on port {config.listen_port}")
            if self.notifier.watchdog_s is not None:
                watchdog = loop.create_task(self._ping_watchdog(self.notifier.watchdog_s))
            await self._maintain()
        finally:
            if probing is not None:
                probing.cancel()
            if resolving is not None:
                resolving.cancel()
            if watchdog is not None:
                watchdog.cancel()
            self.notifier.send(stopping=True)
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    async def _ping_watchdog(self, interval_s: float) -> None:
        while True:
            self.notifier.send(watchdog=True)
            await asyncio.sleep(interval_s)

    async def _maintain(self) -> None:
        last_status = last_expiry = last_retention = 0.0
        last_checkpoint = time.monotonic()
        retention = self.config.audit_retention
        expiry_every = None if self.discovery is None else expiry_interval_s(self.config.discovery)
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), _SYNC_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            try:
                self.sync_enrollments()
                self.reload_revocations_if_changed()
                self.reload_policy_if_changed()
                self._drain_refusals()
                self.desk.step()
                await self.namespaces.step(self.enrolled_dirs.values(), time.monotonic())
                self._watch_audit()
                if time.monotonic() - last_checkpoint >= self.config.audit_checkpoint_interval_s:
                    last_checkpoint = time.monotonic()
                    self.writer.checkpoint()  # signed in the writer thread, after what is queued
                if retention.enabled and time.monotonic() - last_retention >= retention.interval_s:
                    last_retention = time.monotonic()
                    self.writer.enforce_retention()  # pruned in the writer thread, one bounded batch at a time
                if expiry_every is not None and time.monotonic() - last_expiry >= expiry_every:
                    last_expiry = time.monotonic()
                    self._forget_discovered()
                if time.monotonic() - last_status >= _STATUS_INTERVAL_S:
                    self.write_status()
                    last_status = time.monotonic()
            except Exception as e:  # keep serving; the cause is logged and audited
                log.exception("maintenance step failed")
                self._event("error", f"maintenance step failed: {e}")

    async def _shutdown(self) -> None:
        if self.desk is not None:
            await self.webhooks.close()
        if self._discovery_seeded:
            self._save_discovered()  # the listings each endpoint was last named in, for the next start's seed
        if self.server is not None:
            await self.server.stop()
        if self.desk is not None:
            try:  # no connection charges a use any more: write those not yet in approvals.db, before the audit closes
                self.desk.close()
            except Exception:
                log.exception("writing the counted grants' uses at stop failed")
        if self.token_source is not None:
            await self.token_source.stop()
        if self.steering is not None and not self.keep_steering:
            self.steering.detach()
        if self.writer is not None:
            if self.keep_steering:
                self._event("stop", f"appliance stopped; steering left in place ({self.config.bpffs_dir}): "
                            "connects to the brokers are refused until the appliance serves again "
                            "(`appliance detach` removes it)")
            else:
                self._event("stop", "appliance stopped; steering detached")
            self.writer.close()
            self.config.run_marker.unlink(missing_ok=True)  # only now: this run's audit is complete
        try:
            self.config.status_file.unlink()
        except FileNotFoundError:
            pass

    # ---- the audit: unclean stops and failure; the proxy's bounds --------------

    def _workload_tls(self) -> WorkloadTls:
        """The workload CA (made on the first start) and a certificate for each configured broker, for
        enrolments that terminate workload TLS; brokers learned later get theirs on first use."""
        config, now = self.config, time.time()
        files = CaFiles.under(config.state_dir)
        try:
            authority, made = load_or_create(files, now)
        except WorkloadCaError as e:
            raise ConfigError(f"workload CA: {e}") from None
        if made:
            log.info("made the workload CA %s (its key %s, root-only); workloads enrolled with --workload-tls "
                     "terminate must trust it (docs/tls.md)", files.cert, files.key)
        tls = config.upstream_tls

        def names(broker: BrokerAddress) -> tuple[str, ...]:
            # The upstream SNI name, and each `brokers` DNS name that resolves to this address now.
            found = [tls.server_name(broker)] if tls is not None else []
            found += [n.name for n, addresses in self.names.addresses.items()
                      if n.port == broker.port and broker.host in addresses]
            return tuple(dict.fromkeys(found))

        workload_tls = WorkloadTls(authority, names=names)
        for broker in config.broker_addresses:  # a broker given by name gets its leaf at its first session
            workload_tls.context_for(broker, now)
        return workload_tls

    def _bounds(self) -> dict:
        """The proxy's budgets, deadlines, session limits and audit-failure decision, from the config."""
        config = self.config
        return dict(
            limits=Limits.of(config), max_request_bytes=config.max_request_bytes, max_sessions=self.max_sessions,
            max_sessions_per_workload=min(config.max_sessions_per_workload, self.max_sessions),
            audit_failing=(lambda: self.writer.failing) if config.audit_failure == "refuse" else None,
        )

    def _claim_run_marker(self) -> dict | None:
        """Write this run's marker; return the previous run's if it is still there (it did not stop cleanly)."""
        marker = self.config.run_marker
        previous: dict | None = None
        try:
            previous = json.loads(marker.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            previous = {"unreadable": str(e)}
        pid = previous.get("pid") if previous else None
        if isinstance(pid, int) and pid != os.getpid() and _is_serving(pid):
            raise AlreadyServing(f"another `appliance serve` (pid {pid}) is running with the audit in "
                                 f"{marker.parent} (its run marker is {marker}); stop it first")
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            marker.write_text(json.dumps({"pid": os.getpid(), "started_at": self.started_at}))
        except OSError as e:  # the audit beside it is probably failing too; that is reported as it happens
            log.error("cannot write the run marker %s: %s; an unclean stop of this run will not be noticed", marker, e)
        return previous

    def _close_orphan_sessions(self, previous: dict | None) -> int:
        """End the sessions the audit holds without an end, before anything is served; returns how many."""
        if previous is not None:
            since = previous.get("started_at")
            when_ = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "an unknown time"
            reason = (f"appliance stopped uncleanly (pid {previous.get('pid', '?')}, serving since {when_}); "
                      "the session's end was not recorded, ended_at is the last time the audit saw it")
        else:
            reason = "the session's end was not recorded (its audit records were lost); ended_at is the last time the audit saw it"
        try:
            db = store.open_db(self.config.audit_db)
            try:
                closed = store.close_orphan_sessions(db, reason)
            finally:
                db.conn.close()
        except Exception as e:  # noqa: BLE001 - the audit's own failure handling reports it from here on
            log.error("could not close the sessions the previous run left open: %s", e)
            return 0
        if previous is None and closed:
            log.warning("%d session(s) without an end in the audit were closed: %s", closed, reason)
        return closed

    def _record_unclean_stop(self, previous: dict | None, closed: int) -> None:
        if previous is not None:
            message = (f"the previous run (pid {previous.get('pid', '?')}) did not stop cleanly; "
                       f"{closed} session(s) it left open were closed in the audit")
            log.warning("%s", message)
            self._event("unclean-stop", message, pid=previous.get("pid"),
                        detail={"previous": previous, "sessions_closed": closed})

    def _watch_audit(self) -> None:
        """Say loudly, once and then every few seconds, that the audit is failing, and when it recovers."""
        failing = self.writer.failing
        if failing is not None:
            refusing = self.config.audit_failure == "refuse"
            consequence = (f"new requests are refused with {AUDIT_FAILING_ERROR.name.upper()} "
                           f"({int(AUDIT_FAILING_ERROR)})" if refusing else
                           "requests are forwarded without audit records (audit_failure: forward)")
            if failing != self._audit_failing_logged:
                self._audit_failing_logged = failing
                self._audit_failing_reminded = time.monotonic()
                log.critical("AUDIT FAILING: %s; %s", failing, consequence)
                self._event("audit-failing", f"audit records cannot be written: {failing}; {consequence}",
                            detail={"reason": failing, "audit_failure": self.config.audit_failure})
            elif time.monotonic() - self._audit_failing_reminded >= _AUDIT_FAILING_REMINDER_S:
                self._audit_failing_reminded = time.monotonic()
                log.critical("AUDIT STILL FAILING since %s: %s; %s; %d records lost so far",
                             time.strftime("%H:%M:%S", time.localtime(self.writer.failing_since or 0)), failing,
                             consequence, self.writer.lost)
        elif self._audit_failing_logged is not None:
            self._audit_failing_logged = None
            log.warning("audit writing again; %d records lost in all (the gaps table says when)", self.writer.lost)

    # ---- policy ----------------------------------------------------------------

    def _workload_identity(self) -> WorkloadIdentity:
        identity = self.config.identity
        statics = None
        if identity.static_credentials_file is not None:
            try:
                statics = load_static_credentials(identity.static_credentials_file)
            except StaticCredentialsError as e:
                raise ConfigError(str(e)) from None
        self.revocation_store = RevocationStore(self.config.revocations_file)
        self._revocations_stamp = self.revocation_store.stamp()
        try:
            revocations = self.revocation_store.load()
        except RevocationError as e:
            raise ConfigError(str(e)) from None
        try:
            providers = TokenProviders(identity.providers)
        except IntrospectionError as e:
            raise ConfigError(str(e)) from None
        return WorkloadIdentity(providers=providers, statics=statics,
                                revocations=revocations, max_lifetime_s=identity.max_session_lifetime_s,
                                policy=lambda: self.policy)

    def reload_revocations_if_changed(self) -> None:
        """Within a second of `appliance revoke`, the sessions it covers end and their credentials are refused."""
        stamp = self.revocation_store.stamp()
        if stamp == self._revocations_stamp:
            return
        self._revocations_stamp = stamp
        try:
            revocations = self.revocation_store.load()
        except RevocationError as e:  # the revocations in force stay so; a damaged file never lifts them
            log.error("%s", e)
            self._event("error", f"revocations not reloaded: {e}")
            return
        self.workloads.revocations = revocations
        ended = self.server.revoke_credentials(time.time())
        self._event("revoke", f"revocations reloaded: {len(revocations.entries)} in force; {ended} live "
                    f"session(s) ended", detail={"in_force": len(revocations.entries), "ended": ended})

    def _load_policy(self) -> Policy:
        """The policy file, with its masking rules bound to the appliance's secret (for `hash`)."""
        policy = load_policy(self.config.policy_file)
        return dataclasses.replace(policy, masking=policy.masking.with_secret(self._secret))

    def reload_policy_if_changed(self) -> None:
        """Reload on SIGHUP or when the file changes; a policy that fails to load leaves the old one in force."""
        path = self.config.policy_file
        stamp = _mtime(path)
        if not self._reload_requested.is_set() and stamp == self._policy_stamp:
            return
        self._reload_requested.clear()
        self._policy_stamp = stamp
        try:
            policy = self._load_policy()
        except PolicyError as e:
            log.error("policy not reloaded, the previous one stays in force: %s", e)
            self._event("policy-error", f"policy not reloaded, the previous one stays in force: {e}",
                        detail={"path": str(path)})
            return
        self.policy = policy
        log.info("policy reloaded from %s: %d rules", path, len(policy.rules))
        self._event("policy-load", f"policy {path} in force: {len(policy.rules)} rules", detail={"path": str(path)})

    # ---- enrolment -----------------------------------------------------------

    def sync_enrollments(self, *, force: bool = False) -> None:
        """Bring the kernel map in line with the enrolment file; revoke sessions of removed workloads.

        Runs when the file changes, and every few seconds regardless, so a
        cgroup removed and recreated under an enrolled path (a new id) is found.
        """
        stamp = self.store.stamp()
        interval = _PATTERN_INTERVAL_S if self._has_patterns else _RESOLVE_INTERVAL_S
        if stamp == self._store_stamp and not force and time.monotonic() - self._last_full_sync < interval:
            return
        self._store_stamp = stamp
        self._last_full_sync = time.monotonic()
        wanted: dict[int, Enrollment] = {}
        changed = False
        records = list(self.store.load().values())
        self._has_patterns = any(r.is_pattern for r in records)
        for record in records:
            if record.is_pattern:
                continue
            try:
                cg = cgroups.resolve(record.cgroup_path)
            except cgroups.CgroupError as e:
                log.warning("enrolment of %s skipped: %s", record.identity, e)
                continue
            wanted[cg.id] = record
            self.enrolled_dirs[cg.id] = cg.directory
        for record in records:  # a cgroup enrolled by its own path is not taken over by a pattern
            if record.is_pattern:
                self._expand_pattern(record, wanted)
        for cgroup_id, record in list(self.by_cgroup_id.items()):
            if wanted.get(cgroup_id) != record:
                self.steering.clear_cgroup(cgroup_id)
                del self.by_cgroup_id[cgroup_id]
                changed = True
                closed = self.server.revoke(cgroup_id, f"workload {record.identity} was unenrolled")
                log.info("unenrolled %s (%s); closed %d live session(s)", record.identity, record.cgroup_path, closed)
        for cgroup_id, record in wanted.items():
            if cgroup_id not in self.by_cgroup_id:
                self.by_cgroup_id[cgroup_id] = record
                self.steering.set_cgroup(cgroup_id, CgroupKind.ENROLLED)
                changed = True
                log.info("enrolled %s: cgroup %s (id %d)", record.identity, record.cgroup_path, cgroup_id)
        # The kernel map may hold entries this process never set: carried over
        # from a run that was killed. Anything neither enrolled nor exempt goes.
        for cgroup_id in set(self.steering.cgroups()) - set(self.by_cgroup_id) - set(self.exempt):
            self.steering.clear_cgroup(cgroup_id)
            log.info("cleared stale steering entry for cgroup id %d", cgroup_id)
        self.enrolled_dirs = {cid: d for cid, d in self.enrolled_dirs.items() if cid in self.by_cgroup_id}
        if changed and self.namespaces is not None:
            self.namespaces.rescan = True  # where the new workloads live, or which namespaces lost theirs

    def _expand_pattern(self, record: Enrollment, wanted: dict[int, Enrollment]) -> None:
        try:
            known = self._pattern_identities.setdefault(record.cgroup_path, {})
            matches = containers.expand(record.cgroup_path, record.identity, record.identity_from,
                                        cgroups.cgroup2_root(), self.config.container_roots, known)
        except containers.ContainerError as e:
            self._skip_once(record.cgroup_path, str(e))
            return
        for gone in set(known) - {m.path for m in matches}:
            del known[gone]  # its container stopped: one started under that name later is read afresh
        seen = set()
        for match in matches:
            seen.add(match.path)
            if match.identity is None:
                self._skip_once(match.path, match.reason)
                continue
            try:
                cg = cgroups.resolve(match.path)
            except cgroups.CgroupError:
                continue  # removed since it was listed
            if cg.id in wanted or cg.id in self.exempt:
                continue
            wanted[cg.id] = dataclasses.replace(record, identity=match.identity, cgroup_path=cg.path,
                                                cgroup_id=cg.id, kind="cgroup", identity_from="")
            self.enrolled_dirs[cg.id] = cg.directory
            self._pattern_skips.pop(match.path, None)
        for path in [p for p in self._pattern_skips if p.startswith("/") and p not in seen and "*" not in p]:
            del self._pattern_skips[path]  # gone: a later cgroup of that name is judged afresh

    def _skip_once(self, path: str, reason: str) -> None:
        """Log and audit a pattern's cgroup that cannot be enrolled, once per cgroup and reason."""
        if self._pattern_skips.get(path) == reason:
            return
        if len(self._pattern_skips) >= _PATTERN_SKIPS_KEPT:
            self._pattern_skips.pop(next(iter(self._pattern_skips)))
        self._pattern_skips[path] = reason
        log.warning("cgroup %s matches an enrolment pattern but is not enrolled: %s", path, reason)
        self._event("enroll-skipped", f"cgroup {path} matches an enrolment pattern but is not enrolled: {reason}",
                    cgroup_path=path)

    # ---- brokers given by DNS name (steering/names.py) -----------------------------

    async def _resolve_names_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.broker_resolve_interval_s)
            try:
                await self.resolve_broker_names()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                log.exception("resolving the brokers given by name failed")
                self._event("error", f"resolving the brokers given by name failed: {e}")

    async def resolve_broker_names(self, *, start: bool = False) -> None:
        """Resolve each broker given by name (the host's resolver, off the event loop) and steer new addresses.
        A name that does not resolve is logged and audited; the other brokers keep working."""
        loop = asyncio.get_running_loop()
        for name in self.names.names:
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(name.name, name.port, type=socket.SOCK_STREAM), 5.0)
            except (OSError, asyncio.TimeoutError) as e:
                why = "no answer within 5 s" if isinstance(e, asyncio.TimeoutError) else (e.strerror or str(e))
                message = (f"broker {name} (config {self.config.source}, key 'brokers') does not resolve: {why}; "
                           f"addresses it resolved to before stay steered, and it is tried again in "
                           f"{self.config.broker_resolve_interval_s:g} s")
                log.error("%s", message)
                self._event("error", message, detail={"broker": str(name)})
                continue
            new = self.names.resolved(name, [info[4][0] for info in infos])
            if self.server is not None:  # the brokers' certificates carry the name, not the addresses
                self.server.tls.named([(a, name.port) for a in self.names.addresses[name]], name.name)
            if not new:
                continue
            self.steering.add_brokers(new, BrokerState.UP)
            for endpoint in new:
                if self.discovery is not None:
                    if endpoint in self.discovery.outside:  # refused before, configured now
                        self.discovery.outside.pop(endpoint)
                        self.steering.set_broker_state(*endpoint, BrokerState.UP)
                    self.discovery.add_configured(endpoint)
                self.probe.add(endpoint)
                where = describe(endpoint)
                message = f"broker {name} resolves to {where}{' at start' if start else ''}; connects to it are steered"
                log.info("%s", message)
                self._event("broker-resolved", message, detail={"broker": str(name), "address": where})

    # ---- brokers learned from the cluster's answers (proxy/discovery.py) ------------

    @property
    def discovered_file(self) -> Path:
        return self.config.state_dir / "discovered-brokers.json"

    def _seed_discovered(self) -> None:
        """Steer again what the previous run discovered (under the networks allowed now), before serving:
        workloads that know those brokers reconnect to them without asking Metadata first."""
        if self.discovery is None:
            return
        self._discovery_seeded = True
        try:
            endpoints, listings = parse_snapshot(json.loads(self.discovered_file.read_text()))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.error("%s is unreadable (%s); brokers are learned again from the cluster's answers",
                      self.discovered_file, e)
            return
        learned = self.discovery.seed(endpoints, time.time(), listings)
        self._steer_discovered(learned.steer, learned.outside if self.config.discovery.refuse_outside else ())
        if learned.steer or learned.outside:
            log.info("steering %d broker(s) a previous run discovered; %d outside discovery.allowed_networks",
                     len(learned.steer), len(learned.outside))

    def _steer_discovered(self, steer: tuple, outside: tuple) -> None:
        """The kernel's side of discovery: steer brokers it allowed, refuse enrolled connects to ones outside."""
        if steer:
            self.steering.add_brokers(steer, BrokerState.UP)
            for endpoint in steer:
                self.probe.add(endpoint)
        if outside:
            self.steering.add_brokers(outside, BrokerState.OUTSIDE)
        if steer or outside:
            self._save_discovered()

    def _save_discovered(self) -> None:
        discovery = self.discovery
        tmp = self.discovered_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(discovery.snapshot()))
            os.replace(tmp, self.discovered_file)
        except OSError as e:  # the kernel has them now; only a restart would need the file
            log.error("cannot write %s: %s; a restart learns these brokers again from Metadata", self.discovered_file, e)

    def _forget_discovered(self) -> None:
        """Un-steer (or stop refusing) the discovered brokers the cluster has moved on from (Discovery.expire
        decides); each is one delete by key in the kernel, then the file and the audit follow."""
        now = time.time()
        forgotten = self.discovery.expire(now, self.server.brokers_in_use())
        if not forgotten:
            return
        gone = [f.endpoint for f in forgotten]
        for endpoint in gone:
            self.probe.remove(endpoint)
        try:
            self.steering.remove_brokers(gone)
        except Exception as e:  # noqa: BLE001 - they stay steered, the safe side; learned again when named
            log.error("could not remove forgotten brokers from the kernel: %s; they stay steered", e)
            self._event("error", f"forgotten brokers could not be removed from the kernel, and stay steered: {e}")
        self._save_discovered()
        for level, event in forgotten_events(forgotten, now, self.config.discovery.forget_after_s):
            log.log(logging.INFO if level == "info" else logging.WARNING, "%s", event.message)
            self.writer.submit(event)

    # ---- brokers' reachability ---------------------------------------------

    def _mark_broker(self, address: tuple[str, int], up: bool) -> None:
        host, port = address
        self.steering.set_broker_state(host, port, BrokerState.UP if up else BrokerState.DOWN)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if up:
            log.info("broker %s is reachable again; enrolled connects to it are steered", where)
            self._event("broker-up", f"broker {where} is reachable again; enrolled connects to it are steered",
                        detail={"broker": where})
        else:
            log.warning("broker %s is unreachable; enrolled connects to it are refused (ECONNREFUSED)", where)
            self._event("broker-down", f"broker {where} is unreachable from the appliance; enrolled connects "
                        "to it are refused with ECONNREFUSED until it answers again", detail={"broker": where})

    # ---- kernel refusals, status -------------------------------------------

    def _drain_refusals(self) -> None:
        """Audit the kernel's refusals; repeats from one cgroup to one address for one reason in one poll share an event."""
        grouped: dict[tuple[int, str, RefusalReason], list] = {}
        for refusal in self.steering.poll_refusals(0):
            host, port = refusal.dst_host, refusal.dst_port
            dst = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            grouped.setdefault((refusal.cgroup_id, dst, refusal.reason), []).append(refusal)
        for refusal in (r for rs in grouped.values() for r in rs if r.reason == RefusalReason.FOREIGN_NETNS):
            self.namespaces.refused(refusal.tgid)
        for (cgroup_id, dst, reason), refusals in grouped.items():
            if self.discovery is not None:  # a process still holds that broker: it is not forgotten for a while
                self.discovery.used(refusals[0].dst_host, refusals[0].dst_port, time.time())
            self._refusers.pop(cgroup_id, None)
            self._refusers[cgroup_id] = None
            if len(self._refusers) > _REFUSERS_KEPT:
                del self._refusers[next(iter(self._refusers))]
            first = refusals[0]
            path = cgroups.path_of_id(cgroup_id)
            pids = sorted({r.tgid for r in refusals})
            times = f"{len(refusals)} connects" if len(refusals) > 1 else "connect"
            self._event(
                "refused-connect",
                f"refused {times} to {dst} {_REFUSAL_WORDS[reason]} {path or cgroup_id} (pid {first.tgid}, {first.comm})",
                cgroup_id=cgroup_id, cgroup_path=path, pid=first.tgid,
                detail={"uid": first.uid, "comm": first.comm, "destination": dst, "count": len(refusals), "pids": pids,
                        "reason": reason.name.lower()},
            )

    def _event(self, kind: str, message: str, *, detail: dict | None = None, **fields) -> None:
        self.writer.submit(Event(at=time.time(), kind=kind, message=message,
                                 detail=json.dumps(detail) if detail else None, **fields))

    def write_status(self) -> None:
        # Lookups by key only: status never walks a kernel map on the event loop.
        counters = self.steering.counters_of([*self.by_cgroup_id, *self.exempt, *self._refusers])
        states = self.steering.broker_states()
        snapshot = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "written_at": time.time(),
            "config": self.config.source,
            "policy": {"path": str(self.config.policy_file), "rules": len(self.policy.rules)},
            "listener": {"hosts": [self.config.listen_host4, self.config.listen_host6], "port": self.config.listen_port},
            "brokers": [str(b) for b in self.config.brokers],
            "broker_names": self.names.status(),
            "discovered_brokers": ([] if self.discovery is None else
                                   [describe(e) for e in sorted(self.discovery.discovered)]),
            "outside_brokers": ([] if self.discovery is None else
                                [describe(e) for e in sorted(self.discovery.outside)]),
            "forgotten_brokers": 0 if self.discovery is None else self.discovery.forgotten,
            "steering": self.steering.status(),
            "kernel_health": self.steering.health(),
            "broker_states": {describe(e): s.name.lower() for e, s in states.items()},
            "workloads": [
                {"identity": r.identity, "groups": ",".join(r.groups), "cgroup_path": r.cgroup_path, "cgroup_id": cid,
                 **_counts(counters, cid)}
                for cid, r in self.by_cgroup_id.items()
            ],
            "exempt": [{"cgroup_path": p, "cgroup_id": cid, **_counts(counters, cid)} for cid, p in self.exempt.items()],
            "counters": {str(cid): _counts(counters, cid) for cid in counters},
            "sessions": [vars_of(s) for s in self.server.sessions()],
            "upstream_pool": self.server.pool.ready(),
            "upstream_auth": (self.token_source.status(time.time()) if self.token_source is not None else
                              {"mechanism": self.server.credentials.mechanism}),
            "audit": {"path": str(self.config.audit_db), "written": self.writer.written,
                      "failed_batches": self.writer.failed_batches, "state": "failing" if self.writer.failing else "ok",
                      "failing": self.writer.failing, "failing_since": self.writer.failing_since,
                      "lost": self.writer.lost, "gaps_written": self.writer.gaps_written,
                      "queued": self.writer.queued, "queue_max": self.writer.queue_max,
                      "audit_failure": self.config.audit_failure, "bytes": _audit_bytes(self.config.audit_db),
                      "excerpts": _excerpt_budget(),
                      "retention": {"max_age_days": self.config.audit_retention.max_age_days,
                                    "max_bytes": self.config.audit_retention.max_bytes,
                                    "interval_s": self.config.audit_retention.interval_s,
                                    "pruning": self.writer.pruning, "last_prune": self.writer.last_prune,
                                    "error": self.writer.prune_error}},
            "limits": self.server.limits_status(),
            "netns_listeners": self.namespaces.status() if self.namespaces is not None else [],
            "approvals_holding": self.desk.holding if self.desk is not None else 0,
            "netns_beyond_limit": self.namespaces.beyond_status() if self.namespaces is not None else {},
        }
        tmp = self.config.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot, indent=2, default=str))
        os.replace(tmp, self.config.status_file)


def _excerpt_budget() -> dict[str, int]:
    """Record batches held for the audit's excerpts (docs/recording.md, Depth): now, the bound, and how many
    operations' excerpts were not kept because the bound was reached."""
    from appliance.masking.excerpts import SHARED_BUDGET
    return {"held_bytes": SHARED_BUDGET.held, "limit_bytes": SHARED_BUDGET.limit, "not_kept": SHARED_BUDGET.refused}


def _audit_bytes(path: Path) -> dict[str, int]:
    """The audit database's file and its write-ahead log, in bytes (0 for one not there)."""
    sizes = {}
    for name, file in (("database", path), ("wal", path.with_name(path.name + "-wal"))):
        try:
            sizes[name] = file.stat().st_size
        except OSError:
            sizes[name] = 0
    return sizes


class AlreadyServing(RuntimeError):
    """Another serving process holds this audit database (its run marker names a live `appliance serve`)."""


def serving_pid(config: Config) -> int | None:
    """The pid of the `appliance serve` that holds this configuration's audit (its run marker), if one runs."""
    try:
        pid = json.loads(config.run_marker.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and _is_serving(pid) else None


def _is_serving(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and any(b"appliance" in a for a in argv)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _counts(counters, cgroup_id: int) -> dict[str, int]:
    c = counters.get(cgroup_id)
    return {"steered": c.steered if c else 0, "refused": c.refused if c else 0}


def vars_of(obj) -> dict:
    return {name: getattr(obj, name) for name in obj.__slots__}


# How long the event loop may wait for the GIL while the audit writer holds it.
# Python's default, 5 ms, let each audit commit (hundreds of rows built in
# Python) hold up the requests that arrived meanwhile: p99 publish latency
# through the proxy went from +0.3 ms to +1.1 ms when commits became batched.
_GIL_SWITCH_S = 0.0001


# glibc serves allocations above 128 KiB with fresh mmap()s, so each 256 KiB
# socket read and each ~1 MiB Fetch response the audit reads paid a page fault
# per 4 KiB on first touch. Below 16 MiB they now come from the heap, which
# keeps up to 64 MiB of freed memory for reuse instead of handing it back.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 16 << 20
_TRIM_THRESHOLD_BYTES = 64 << 20


def _keep_large_buffers_warm() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc: its allocator keeps its own ways
        log.warning("no mallopt in this C library; large buffers keep the allocator's defaults")
        return
    if not (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)):
        log.warning("mallopt refused the allocator settings; large buffers stay on mmap")


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit (two per session); return the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, e)
    return soft


def _sessions_the_fd_limit_allows(max_sessions: int, pooled: int) -> int:
    """max_sessions, or fewer if the open-file limit cannot hold two descriptors for each."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fits = (limit - _FDS_BESIDE_SESSIONS - pooled) // 2
    if fits < max_sessions:
        log.error("max_sessions %d needs %d open files but the limit is %d: at most %d sessions will be served "
                  "(raise `ulimit -Hn` or LimitNOFILE)", max_sessions, 2 * max_sessions + _FDS_BESIDE_SESSIONS,
                  limit, max(fits, 1))
        return max(fits, 1)
    return max_sessions


def serve(config: Config, *, keep_steering: bool = False) -> None:
    import uvloop

    raise_fd_limit()
    sys.setswitchinterval(_GIL_SWITCH_S)
    _keep_large_buffers_warm()
    uvloop.run(Appliance(config, keep_steering=keep_steering).run())
