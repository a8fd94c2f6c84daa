"""The proxy's only module with sockets: accept steered connections, open upstream, carry out commands.

Each accepted connection is looked up in the kernel (`original_dst`); one the
kernel did not steer, or whose workload is no longer enrolled, is closed at
once and audited. Otherwise the shell connects to the original broker address
(the appliance's own cgroup is exempt from steering, so this connect is never
redirected) and feeds the session every byte and closure as events, carrying
out the commands it returns. Flow control: when one side's socket buffer
fills, reading from the other side pauses; when the client's fills, reading
the client pauses too, so what the proxy writes it unasked by the broker (its
own refusals, a terminated TLS connection's KeyUpdate answers) stays bounded.

Resource bounds (decided in `limits`, kept here): after every read the shell
looks at what the session holds and pauses reading its client while that is
over the per-session budget, or over its fair share while all sessions
together are over the global budget. One sweep a second checks every
session's deadlines (connect, SASL, request, frame, idle) and ends the ones
that passed with `DeadlinePassed`, re-checks paused sessions, and hands freed
heap back to the kernel after a large release. Beyond `max_sessions` (or
`max_sessions_per_workload` for one enrolled cgroup) a connection is reset
as soon as it is accepted and counted into one `session-limit` event per
workload per second.

`UpstreamPool` keeps a few broker connections per broker address open and
already authenticated, so a new session starts relaying without its own SASL
exchange.

With upstream TLS configured (`upstream_tls`), every broker connection, a
session's own or a pooled one, is a TLS connection made with the one context
built at start; a failed handshake closes the session with an audited reason
naming the broker and the fault, and is logged once per broker and fault.
Nothing is ever retried in plaintext. Plaintext connections take exactly the
path they took before: TLS changes only the transport asyncio builds.

A workload enrolled with `workload_tls: terminate` speaks TLS to its broker
address: the shell answers the handshake (a TLS transport of its own on the
accepted socket, `connect_accepted_socket`, server side) with
a certificate for that address from the appliance's workload CA
(`workload_tls`), before reading a byte of it, then hands the session the
plain Kafka inside exactly as it hands it a plaintext connection's bytes. The
choice is made once per connection, at accept: a plaintext session's reads
take the path they always took.

The sweep also tells each session whose own SASL session with the broker is
due for renewal (KIP-368, `Session.upstream_reauthenticate_at`) with the
credential source's current secret, and a `RefreshUpstreamToken` command asks
the token source for a fresh token.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections import deque
import dataclasses
from dataclasses import dataclass
from typing import Callable

from kio.serial.errors import SerialError

from appliance.audit.records import Event, SessionOpened
from appliance.config import READ_CHUNK_BYTES, BrokerAddress
from appliance.broker.credentials import ClientCertificateOnly
from appliance.broker.oauth_token import BearerToken, TokenUnavailable
from appliance.identity import netns, process
from appliance.identity.enrollment import Enrollment, binding_of
from appliance.identity.tokens import TokenRejected
from appliance.identity.workloads import WorkloadIdentity
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Policy, Principal
from appliance.proxy import events as ev
from appliance.proxy.commands import (Audit, CloseConnection, Log, RefreshUpstreamToken, SendToClient,
                                      SendToUpstream, SteerBrokers, VerifyToken, HoldForApproval, GrantsUsed)
from appliance.proxy.discovery import Discovery, audit_events, describe
from appliance.kafka.framing import FrameError, FrameSplitter
from appliance.approvals.desk import Desk
from appliance.proxy.audit_gate import AuditGate
from appliance.proxy.limits import Clock, Limits, deadline_passed, may_read_client
from appliance.proxy.original_dst import Lookup, OriginalDestination
from appliance.proxy.session import Session
from appliance.proxy.upstream_auth import UpstreamAuthenticator, UpstreamAuthError, UpstreamCredentialSource
from appliance.proxy.upstream_tls import UpstreamTls, describe_failure, is_tls_failure
from appliance.proxy.workload_tls import WorkloadTls, handshake_failure, session_failure

log = logging.getLogger("appliance.proxy")
# A pooled connection is handed out only while younger than this, well inside
# the broker's connections.max.idle.ms (10 minutes by default), so a session is
# not given one the broker is closing at that moment.
_POOL_MAX_IDLE_S = 60.0
_POOL_RETRY_AFTER_S = 10.0
# Sessions and pooled connections ask for a fresh upstream token when the broker refused one or the one
# held would not outlive the session it should renew; the provider is asked at most once per this
# interval, however many ask (a broker refusing every token must not turn reconnects into token fetches).
_TOKEN_REFRESH_EVERY_S = 5.0
# Deadlines are checked this often, so each is kept to within this much.
SWEEP_INTERVAL_S = 1.0
# Heap freed in one go past which it is handed back to the kernel (malloc_trim),
# at most every few seconds: glibc keeps freed heap memory for reuse otherwise.
_TRIM_AFTER_BYTES = 16 << 20
_TRIM_EVERY_S = 5.0
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True, slots=True)
class LiveSession:
    session_id: str
    identity: str
    enrolled_cgroup_id: int
    pid: int
    command: str
    client_address: str
    broker_address: str
    started_at: float
    auth: str = "cgroup"  # cgroup, or the method the workload proved itself by: token | static
    subject: str | None = None
    token_expires_at: float | None = None
    reauthenticate_by: float | None = None


class _TokenRefresh:
    """Passes requests for a fresh upstream token to the credential source, at most once per interval."""

    def __init__(self, credentials: UpstreamCredentialSource) -> None:
        self.credentials = credentials
        self._asked_at = float("-inf")  # monotonic

    def ask(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._asked_at < _TOKEN_REFRESH_EVERY_S:
            return
        self._asked_at = now
        log.info("asking for a fresh upstream token: %s", reason)
        self.credentials.refresh_now()


_TLS_FAULT_RELOG_S = 600.0
_TLS_NAMES_KEPT = 4096  # broker addresses with the DNS name they were reached through (discovery steers at most 1024)
# What a connect raises beyond ssl's own errors when the broker ends the TLS handshake, or it takes too long.
_HANDSHAKE_ENDINGS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class _TlsFaults:
    """The TLS side of broker connections: how to open one, and each broker's fault logged once.

    A broker whose certificate is wrong fails every session the same way; the log says so once (again
    when the fault changes, and every ten minutes while it lasts), while every session's close is audited.
    A finished handshake is no proof the fault has gone: a TLS 1.3 broker refuses a client certificate
    after it, so nothing here is cleared on success.
    """

    def __init__(self, tls: UpstreamTls | None, connect_timeout_s: float) -> None:
        self.tls = tls
        self.connect_timeout_s = connect_timeout_s
        self._logged: dict[tuple[str, int], tuple[str, float]] = {}  # the fault last logged, and when (monotonic)
        # The DNS name each broker address was reached through, which its certificate carries (a real
        # cluster's brokers are certified by name): insertion-ordered, the latest naming wins, bounded.
        self.names: dict[tuple[str, int], str] = {}

    def named(self, endpoints, name: str) -> None:
        """`endpoints` (IP literal, port) are what the DNS name `name` resolves to now."""
        for endpoint in endpoints:
            self.names.pop(endpoint, None)
            self.names[endpoint] = name.rstrip(".").lower()
        while len(self.names) > _TLS_NAMES_KEPT:
            del self.names[next(iter(self.names))]

    def connect_arguments(self, address: tuple[str, int]) -> dict:
        if self.tls is None:
            return {}
        return self.tls.connect_arguments(BrokerAddress(*address), self.connect_timeout_s, self.names.get(address))

    def failure(self, address: tuple[str, int], error: BaseException, *, handshake: bool = False) -> str | None:
        """The audit reason if `error` ended a TLS connection to `address` (logged once), else None.
        `handshake`: it ended the connect, where a reset or abort (the handshake deadline) is TLS's too."""
        if self.tls is None or not (is_tls_failure(error) or handshake and isinstance(error, _HANDSHAKE_ENDINGS)):
            return None
        reason = describe_failure(BrokerAddress(*address), error, self.tls)
        last, now = self._logged.get(address), time.monotonic()
        if last is None or last[0] != reason or now - last[1] >= _TLS_FAULT_RELOG_S:
            self._logged[address] = (reason, now)
            log.error("%s; sessions to this broker close with this reason until it is fixed (nothing is sent to "
                      "it in plaintext)", reason)
        return reason


class _Reading:
    """Whether one side's socket is read: paused while any reason holds (flow control, budget, connecting)."""

    __slots__ = ("transport", "reasons")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()


class _HeldWrites:
    """Stands in for the client's transport while the brokers an answer names are resolved and steered:
    what the session sends meanwhile waits here, in order, and goes on only once they are steered."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


class _Connection:
    """Both sockets of one proxied connection and the session between them."""

    def __init__(self, server: ProxyServer, client: asyncio.Transport, origin: OriginalDestination,
                 enrollment: Enrollment, command: str, now: float, tls_context: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.client = client
        # Set: the workload's TLS is terminated with this context; `client` becomes the TLS transport once
        # the handshake is done (`terminate_tls`), and nothing is written to the client before that.
        self.tls_context = tls_context
        self.handshaking: asyncio.Task | None = None
        self.client_reading = _Reading(client)
        self.upstream: asyncio.Transport | None = None
        self.upstream_reading: _Reading | None = None
        self.origin = origin
        self.cgroup_path = enrollment.cgroup_path
        binding = binding_of(enrollment)
        workload_sasl = server.workloads.sasl_for(binding)
        enforcer = None if binding.mode.requires_proof else server.enforcer_for(binding.principal)
        # The upstream secret as it is now: a password, or the token source's current token (or why none).
        # While the upstream session is renewed the workload's requests are held: the budget (`check_budget`)
        # stops reading past session_buffer_bytes, so at most that and one read; the session's bound is a backstop.
        self.session = Session(uuid.uuid4().hex, server.credentials.current(now), enforcer,
                               max_frame_bytes=server.max_frame_bytes,
                               now=now, workload_sasl=workload_sasl, enforcer_for=server.enforcer_for,
                               max_renewal_held_bytes=server.limits.session_buffer_bytes + READ_CHUNK_BYTES,
                               discovery=server.discovery)
        # Where SendToClient writes: the transport, or a _HeldWrites while named brokers are resolved.
        self.client_out: asyncio.Transport | _HeldWrites = client
        self.resolving: asyncio.Task | None = None
        self.verifying: asyncio.Task | None = None
        # Client requests get the tighter bound. Until Session takes its own
        # max_request_bytes, the shell sets the limit of its client splitter.
        self.session._client_frames = FrameSplitter(server.max_request_bytes)
        self.info = LiveSession(
            self.session.session_id, enrollment.identity, origin.enrolled_cgroup_id, origin.tgid,
            command, origin.client_address, origin.broker_address, now,
        )
        self.clock = Clock(now)
        self.held = 0  # the session's buffered_bytes after the last event, counted in server.held_total
        self.connecting: asyncio.Task | None = None
        self.paused = False  # reading the client is paused for the budget (and self is in server.paused)
        self.gone = False

    def dispatch(self, event: ev.Event, data: bool = False) -> None:
        """Carry out the session's commands for `event`; `data`: it is bytes read from either side."""
        now = time.time()
        failed = None
        for command in self.session.handle(event, now):
            match command:
                case SendToUpstream(data):
                    self.upstream.write(data)
                case SendToClient(data):
                    self.client_out.write(data)
                case Audit(record):
                    self.server.audit(record)
                case Log(level, message):
                    log.log(_LOG_LEVELS[level], "%s", message)
                case CloseConnection(_, delay_s) if delay_s > 0:
                    self.client_reading.pause("closing")
                    asyncio.get_running_loop().call_later(delay_s, self.close)
                case CloseConnection():
                    self.close()
                case VerifyToken(token):
                    self.verifying = asyncio.ensure_future(self._verify(token))
                case RefreshUpstreamToken(reason):
                    self.server.pool.token_refresh.ask(reason)
                case SteerBrokers(steer, outside, names):
                    failed = failed or self._steer(steer, outside, names)
                case HoldForApproval(needs, api):
                    self._hold(needs, api)
                case GrantsUsed(grants) if self.server.desk is not None:
                    self.server.desk.used(grants, self.session.session_id, self.session.enforcer.principal.identity)
        if failed is not None and not self.session.closed:
            self.dispatch(ev.DiscoveryFailed(failed))
            return
        if not self.gone:
            self._account(now, data)

    def _hold(self, needs: tuple, api: str) -> None:
        """File the approvals a held request needs; the desk answers from its next step, never from here."""
        desk = self.server.desk
        if desk is None:  # no gate makes a held verdict without a desk; should one appear, it is refused
            asyncio.get_running_loop().call_soon(
                lambda: None if self.gone else self.dispatch(ev.ApprovalDecided("approvals are not configured")))
            return
        desk.hold(self, self.session.enforcer.principal, needs, api, self.session.session_id, self.cgroup_path)

    def _steer(self, steer: tuple, outside: tuple, names: tuple) -> str | None:
        """Carry out a SteerBrokers: the kernel is told now, names are resolved while the client's bytes wait.
        A failure: what the session sends after it is never written (the session is told, and closes)."""
        failed = self.server.steer_brokers(steer, outside)
        if failed is not None:
            self.client_out = _HeldWrites()  # dropped: the answer naming them must not reach the workload
            return failed
        if names:
            if not isinstance(self.client_out, _HeldWrites):
                self.client_out = _HeldWrites()
                if self.upstream_reading is not None:  # what waits is bounded: the broker's answers stay unread
                    self.upstream_reading.pause("resolving")
            self.resolving = asyncio.ensure_future(self._resolve(names, self.resolving))
        return None

    async def _resolve(self, names: tuple, before: asyncio.Task | None) -> None:
        if before is not None:
            await asyncio.wait([before])
        if self.gone:
            return
        failed = await self.server.resolve_brokers(names, self.session.session_id, self.info.identity)
        if self.gone:
            return
        if failed is not None:
            if not self.session.closed:
                self.dispatch(ev.DiscoveryFailed(failed))
            return
        if self.resolving is asyncio.current_task():  # the last resolution this connection waits for
            self.resolving = None
            held, self.client_out = self.client_out, self.client
            if isinstance(held, _HeldWrites) and held.chunks and not self.client.is_closing():
                self.client.write(b"".join(held.chunks))
            if self.upstream_reading is not None:
                self.upstream_reading.resume("resolving")

    async def _verify(self, token: str) -> None:
        try:
            result = await self.server.workloads.providers.verify(token, time.time())
        except Exception as e:  # noqa: BLE001 - a verifier fault refuses this token; it never escapes
            log.exception("session %s: token verification failed", self.session.session_id)
            result = TokenRejected(f"the appliance could not verify it ({type(e).__name__})", "internal")
        if self.gone:
            return
        self.dispatch(ev.TokenVerified(result))

    def live_info(self) -> LiveSession:
        """The session as `appliance status` lists it: who it authenticated as, and until when."""
        sasl, info = self.session.sasl, self.info
        if sasl.proof is not None:
            return dataclasses.replace(info, identity=sasl.principal.identity, auth=sasl.proof.method,
                                       subject=sasl.proof.subject, token_expires_at=sasl.proof.expires_at,
                                       reauthenticate_by=sasl.expires_at)
        if sasl.principal is None:
            return dataclasses.replace(info, auth="authenticating")
        return info

    def _account(self, now: float, data: bool) -> None:
        """Keep the budget's books after an event, and pause or resume reading the client by them.

        Runs after every read, so the common case (whole frames, nothing held,
        nothing paused) costs a property read and three comparisons.
        """
        session, server = self.session, self.server
        held = session.buffered_bytes
        if held != self.held:
            server.held_total += held - self.held
            dropped = held < self.held
            self.held = held
            if server.held_total > server.held_peak:
                server.held_peak = server.held_total
            elif dropped and server.paused and server.held_total <= server.limits.buffer_budget_bytes:
                server.recheck_paused()
        if data:
            clock = self.clock
            clock.active_at = now
            if held == 0 or session.requests != clock.requests or session.bytes_to_client != clock.bytes_to_client:
                clock.progress_at, clock.requests, clock.bytes_to_client = now, session.requests, session.bytes_to_client
        if held or self.paused:
            self.check_budget()

    def check_budget(self) -> None:
        server = self.server
        if may_read_client(server.limits, self.held, server.held_total, len(server.live)):
            if self.paused:
                self.paused = False
                server.paused.discard(self)
                self.client_reading.resume("budget")
        elif not self.paused:
            self.paused = True
            server.paused.add(self)
            server.budget_pauses += 1
            self.client_reading.pause("budget")

    def deadline(self, now: float) -> str | None:
        session = self.session
        sasl = session.sasl
        if sasl.expires_at is not None and now > sasl.expires_at:
            what = "token" if sasl.proof is not None and sasl.proof.method == "token" else "authentication"
            return (f"expired: the workload's {what} ran out at "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(sasl.expires_at))} and it did not "
                    f"re-authenticate on the connection (KIP-368)")
        if not sasl.authenticated and session.relaying and self.verifying is None \
                and now - (self.clock.upstream_connected_at or self.clock.accepted_at) > self.server.limits.sasl_timeout_s:
            return (f"authentication deadline: the workload did not authenticate within "
                    f"{self.server.limits.sasl_timeout_s:g} s (sasl_timeout_s); its cgroup's enrolment "
                    f"(auth {sasl.binding.mode}) requires it")
        if "upstream-busy" in self.client_reading.reasons:
            # The broker is not reading what the workload sent: the workload is
            # not stalling, so neither the frame nor the idle deadline runs. The
            # request deadline still does.
            self.clock.progress_at = self.clock.active_at = now
        return deadline_passed(self.server.limits, self.clock, now, upstream_open=self.upstream is not None,
                               relaying=session.relaying, oldest_request_at=session.oldest_request_at,
                               held=self.held, broker=self.origin.broker_address)

    def close(self) -> None:
        if not self.gone:
            self.gone = True
            server = self.server
            server.live.pop(self.session.session_id, None)
            server.paused.discard(self)
            self.paused = False
            server.held_total -= self.held
            self.held = 0
            cgroup_id = self.origin.enrolled_cgroup_id
            server.per_workload[cgroup_id] -= 1
            if not server.per_workload[cgroup_id]:
                del server.per_workload[cgroup_id]
            if self.connecting is not None and not self.connecting.done():
                self.connecting.cancel()
            if self.handshaking is not None and not self.handshaking.done():
                self.handshaking.cancel()
            if server.paused and server.held_total <= server.limits.buffer_budget_bytes:
                server.recheck_paused()
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    async def terminate_tls(self, protocol: _ClientProtocol, sock: socket.socket) -> None:
        """Answer the workload's TLS handshake on `sock`, then give `protocol` the TLS transport and what
        came in it.

        The accepted socket's own transport is closed before it reads a byte
        (`_ClientProtocol.connection_made`), and a TLS transport is made on
        the same connection (`connect_accepted_socket`, server side), so the
        ClientHello is read by TLS alone. The TLS transport may hand decrypted
        bytes (or the connection's end) to its protocol before this coroutine
        resumes; `_Handshaking` keeps them and passes them on after the swap.
        """
        timeout = self.server.limits.connect_timeout_s
        handshake = _Handshaking()
        try:
            tls, _ = await asyncio.get_running_loop().connect_accepted_socket(
                lambda: handshake, sock, ssl=self.tls_context, ssl_handshake_timeout=timeout)
        except (OSError, EOFError) as e:  # ssl.SSLError, resets and the handshake deadline are OSErrors
            sock.close()
            if not self.gone:
                self.dispatch(ev.ClientTlsFailed(handshake_failure(e, self.origin.broker_address, timeout)))
                self.close()
            return
        if self.gone:
            tls.close()
            return
        self.client = tls
        if not isinstance(self.client_out, _HeldWrites):  # held answers go to `client` when released
            self.client_out = tls
        self.client_reading = _Reading(tls)
        if self.upstream is None:
            self.client_reading.pause("connecting")  # until upstream is open, as for a plaintext session
        ssl_object = tls.get_extra_info("ssl_object")
        version, cipher = ssl_object.version(), ssl_object.cipher()[0]
        info = self.info
        self.server.audit(Event(
            at=time.time(), kind="workload-tls", session_id=info.session_id, identity=info.identity,
            cgroup_id=self.origin.cgroup_id, pid=info.pid,
            message=f"session {info.session_id}: {info.identity}'s TLS to {info.broker_address} terminated "
                    f"by the appliance ({version}, {cipher})",
            detail=json.dumps({"version": version, "cipher": cipher, "broker": info.broker_address,
                               "names": list(self.server.workload_tls.names_for(_broker_of(self.origin)))})))
        tls.set_protocol(protocol)
        handshake.hand_over(protocol)

    def _upstream_open(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        self.upstream_reading = _Reading(transport)
        self.clock.upstream_connected_at = time.time()

    async def connect_upstream(self) -> None:
        address = (self.origin.broker_host, self.origin.broker_port)
        pool = self.server.pool
        parked = pool.take(address)
        pool.refill(address)
        if parked is not None:
            if self.session.closed:
                parked.transport.close()
                return
            self._upstream_open(parked.transport)
            parked.transport.set_protocol(_UpstreamProtocol(self))
            self.dispatch(ev.UpstreamConnected(authenticated=True, authenticated_at=parked.authenticated_at,
                                               session_lifetime_s=parked.auth.session_lifetime_s))
            self.client_reading.resume("connecting")
            return
        loop = asyncio.get_running_loop()
        tls = self.server.tls
        try:
            transport, _ = await loop.create_connection(
                lambda: _UpstreamProtocol(self), self.origin.broker_host, self.origin.broker_port,
                **tls.connect_arguments(address))
        except (OSError, ssl.CertificateError) as e:  # ssl.SSLError is an OSError
            reason = tls.failure(address, e, handshake=True)
            if reason is not None:  # the broker answers; its TLS is wrong: no reason to stop steering to it
                self.dispatch(ev.UpstreamClosed(reason))
                return
            self.server.upstream_failed(address)
            self.dispatch(ev.UpstreamClosed(f"cannot reach broker {self.origin.broker_address}: {e.strerror or e}"))
            return
        if self.session.closed:
            transport.close()
            return
        self._upstream_open(transport)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server.pool.sasl:
            self.dispatch(ev.UpstreamConnected())
        else:  # the TLS client certificate was the authentication: nothing to exchange, nothing to renew
            self.dispatch(ev.UpstreamConnected(authenticated=True, authenticated_at=time.time(), pooled=False))
        self.client_reading.resume("connecting")


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.conn: _Connection | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.conn = self.server.accept(transport)
        if self.conn is not None:
            if self.conn.tls_context is None:
                self.conn.client_reading.pause("connecting")  # until upstream is open
            else:  # TLS reads the handshake itself; the session's reading starts after it
                # The connection moves to a TLS transport of its own before this one reads a byte (uvloop
                # starts reading once connection_made returns, whatever it paused): a duplicate of the
                # socket keeps it open while this transport closes without a word to the client.
                sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
                transport.set_protocol(asyncio.Protocol())
                transport.abort()
                self.conn.handshaking = asyncio.get_running_loop().create_task(self.conn.terminate_tls(self, sock))
            self.conn.connecting = asyncio.get_running_loop().create_task(self.conn.connect_upstream())

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.dispatch(ev.ClientData(data), True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            if isinstance(exc, ssl.SSLError):  # a terminated TLS connection's bad record (never a plaintext one)
                self.conn.dispatch(ev.ClientTlsFailed(session_failure(exc)))
            else:
                self.conn.dispatch(ev.ClientClosed(f"client closed the connection{f': {exc}' if exc else ''}"))
            self.conn.close()

    # A workload not reading what is written to it: the broker's answers stop being read, and so does the
    # workload. What the proxy writes without the broker (its own answers to refused requests, and a
    # terminated TLS connection's answers to KeyUpdate requests) would otherwise pile up unbounded in
    # the transport's write buffer, written for a client that sends and never reads.
    def pause_writing(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.client_reading.pause("client-busy")
            if conn.upstream_reading is not None:
                conn.upstream_reading.pause("client-busy")

    def resume_writing(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.client_reading.resume("client-busy")
            if conn.upstream_reading is not None:
                conn.upstream_reading.resume("client-busy")


class _Handshaking(asyncio.Protocol):
    """The TLS transport's protocol while the workload's handshake is answered: keeps what arrives before the
    session's protocol takes the TLS transport over."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        return False  # the transport closes, and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        data, self.data = self.data, []
        for chunk in data:
            protocol.data_received(chunk)
        if self.lost is not None:
            protocol.connection_lost(self.lost[0])


def _broker_of(origin: OriginalDestination) -> BrokerAddress:
    return BrokerAddress(origin.broker_host, origin.broker_port)


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.dispatch(ev.UpstreamData(data), True)

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        # A TLS 1.3 broker refuses a client certificate (or its absence) after the handshake, on the first read.
        reason = None if exc is None else conn.server.tls.failure((conn.origin.broker_host, conn.origin.broker_port), exc)
        conn.dispatch(ev.UpstreamClosed(reason or f"broker closed the connection{f': {exc}' if exc else ''}"))
        conn.close()

    def pause_writing(self) -> None:
        self.conn.client_reading.pause("upstream-busy")

    def resume_writing(self) -> None:
        self.conn.client_reading.resume("upstream-busy")


class _Parked(asyncio.Protocol):
    """A pooled broker connection: authenticates, then waits, idle, to be handed to a session."""

    def __init__(self, pool: UpstreamPool, address: tuple[str, int]) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.auth = UpstreamAuthenticator(pool.credentials.current(time.time()))
        self.frames = FrameSplitter(pool.max_frame_bytes)
        self.ready = False
        self.ready_at = 0.0  # monotonic, for its age
        self.authenticated_at = 0.0  # wall clock, as sessions keep time: their renewal counts from it
        self.opened_at = time.monotonic()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.pool.authenticating.add(self)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.pool.sasl:  # authenticated by the client certificate in the handshake
            self._authenticated()
            return
        try:
            transport.write(self.auth.start())
        except UpstreamAuthError as e:  # no valid token held at this moment
            self._failed(e)

    def data_received(self, data: bytes) -> None:
        if self.ready:  # a broker says nothing unasked; a connection that does is not handed out
            log.warning("pooled connection to %s:%d received %d unrequested bytes; closed", *self.address, len(data))
            self.transport.close()
            return
        try:
            frames = self.frames.feed(data)
        except FrameError as e:
            self._failed(e)
            return
        if len(frames) > 1 or (frames and self.frames.pending):
            self._failed("the broker sent more than one answer to one SASL request")
        elif frames:
            try:
                following = self.auth.receive(frames[0])
            except (UpstreamAuthError, ValueError, SerialError) as e:
                self._failed(e)
                return
            if following is not None:
                self.transport.write(following)
            else:
                self._authenticated()

    def _authenticated(self) -> None:
        self.ready = True
        self.ready_at = time.monotonic()
        self.authenticated_at = time.time()
        self.pool.authenticating.discard(self)
        self.pool.park(self)

    def usable(self, now: float) -> bool:
        """Open, and young enough that the broker will not end it soon after a session takes it: within a
        minute of authenticating, and within half the SASL session lifetime the broker granted, so the
        session taking it has at least that half to renew it in (its renewal is due no sooner)."""
        age = now - self.ready_at
        lifetime = self.auth.session_lifetime_s
        return (not self.transport.is_closing() and age < _POOL_MAX_IDLE_S
                and (lifetime is None or age < lifetime / 2))

    def _failed(self, reason) -> None:
        if isinstance(reason, UpstreamAuthError) and isinstance(self.auth.credentials, BearerToken):
            self.pool.token_refresh.ask(f"pooled connection to {self.address[0]}:{self.address[1]}: {reason}")
        log.error("pooled connection to %s:%d: upstream authentication failed: %s; no pooled connections to it "
                  "for %d s", *self.address, reason, _POOL_RETRY_AFTER_S)
        self.pool.failed(self.address)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.authenticating.discard(self)
        self.pool.forget(self)
        if exc is not None and self.pool.tls.failure(self.address, exc) is not None:
            self.pool.failed(self.address)


class UpstreamPool:
    """Up to `size` authenticated, idle broker connections per broker address that workloads use.

    A session takes one instead of connecting and authenticating itself; each
    take (or miss) starts opening a replacement. A connection the broker closes
    while it waits (idle timeout, broker restart) leaves the pool, and one that
    has waited a minute, or half the SASL session lifetime the broker granted,
    is closed instead of handed out. After the broker refuses the credentials,
    the pool opens no connections to that address for 10 seconds.
    """

    def __init__(self, credentials: UpstreamCredentialSource, max_frame_bytes: int, size: int, *,
                 connect_timeout_s: float = 10.0, sasl_timeout_s: float = 10.0, tls: _TlsFaults | None = None) -> None:
        self.credentials = credentials
        self.tls = tls or _TlsFaults(None, connect_timeout_s)
        # False: the brokers know the appliance by its TLS client certificate (SSL, no SASL exchange).
        self.sasl = not isinstance(credentials, ClientCertificateOnly)
        self.token_refresh = _TokenRefresh(credentials)  # shared with the sessions (ProxyServer)
        self.max_frame_bytes = max_frame_bytes
        self.size = size
        # A pooled connection that never finishes connecting or authenticating
        # would count as "opening" for ever, and the pool would never refill.
        self.connect_timeout_s = connect_timeout_s
        self.sasl_timeout_s = sasl_timeout_s
        self.authenticating: set[_Parked] = set()
        self._ready: dict[tuple[str, int], deque[_Parked]] = {}
        self._opening: dict[tuple[str, int], int] = {}
        self._failed_at: dict[tuple[str, int], float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def take(self, address: tuple[str, int]) -> _Parked | None:
        ready = self._ready.get(address)
        now = time.monotonic()
        while ready:
            parked = ready.popleft()
            if parked.usable(now):
                return parked
            parked.transport.close()
        return None

    def refill(self, address: tuple[str, int]) -> None:
        if self._closed or time.monotonic() - self._failed_at.get(address, -_POOL_RETRY_AFTER_S) < _POOL_RETRY_AFTER_S:
            return
        if isinstance(self.credentials.current(time.time()), TokenUnavailable):
            return  # no token to authenticate with: sessions connect (and fail, audited) on their own
        missing = self.size - len(self._ready.get(address, ())) - self._opening.get(address, 0)
        for _ in range(max(0, missing)):
            self._opening[address] = self._opening.get(address, 0) + 1
            task = asyncio.get_running_loop().create_task(self._open(address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, address: tuple[str, int]) -> None:
        try:
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: _Parked(self, address), *address, **self.tls.connect_arguments(address)),
                self.connect_timeout_s)
        except Exception as e:  # noqa: BLE001 - whatever failed, this attempt no longer counts as opening
            self._opening[address] -= 1
            # wait_for's own timeout may be the TCP connect's: only a fault TLS named counts as TLS's
            if not isinstance(e, TimeoutError) and self.tls.failure(address, e, handshake=True) is not None:
                self.failed(address)  # as for refused credentials: sessions meet (and audit) the fault themselves
            else:
                log.debug("pooled connection to %s:%d not opened: %s", *address, e)

    def sweep(self, now: float) -> None:
        """Close pooled connections whose SASL exchange has taken longer than sasl_timeout_s (monotonic `now`)."""
        for parked in [p for p in self.authenticating if now - p.opened_at > self.sasl_timeout_s]:
            log.warning("pooled connection to %s:%d did not authenticate within %g s (sasl_timeout_s); closed",
                        *parked.address, self.sasl_timeout_s)
            self.authenticating.discard(parked)
            parked.transport.close()

    def failed(self, address: tuple[str, int]) -> None:
        """The broker refused the appliance's credentials: sessions connect on their own for a while,
        rather than each one starting pooled connections that fail the same way."""
        self._failed_at[address] = time.monotonic()

    def park(self, parked: _Parked) -> None:
        self._opening[parked.address] -= 1
        if self._closed:
            parked.transport.close()
            return
        self._ready.setdefault(parked.address, deque()).append(parked)

    def forget(self, parked: _Parked) -> None:
        if parked.ready:
            ready = self._ready.get(parked.address)
            if ready is not None and parked in ready:
                ready.remove(parked)
        else:
            self._opening[parked.address] -= 1

    def ready(self) -> dict[str, int]:
        """Idle authenticated connections per broker address, for `appliance status`."""
        return {f"{host}:{port}": len(ready) for (host, port), ready in self._ready.items()}

    def close(self) -> None:
        self._closed = True
        for ready in self._ready.values():
            for parked in list(ready):
                parked.transport.close()
            ready.clear()


def _listening(family: int, host: str) -> socket.socket:
    """A non-blocking TCP listener on `host`, on a free port."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, 0))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def release_freed_heap() -> None:
    """Free what closed sessions held, and hand the freed heap pages back to the kernel.

    A session refers to itself (its state is a bound method of its own), so a
    closed one, with its partial frames, is freed only by the cyclic garbage
    collector, whose oldest generation runs rarely: 24 closed sessions' 60 MiB
    stayed resident, and a second attack added 60 MiB more. Collect first,
    then ask glibc to return the pages (it keeps freed heap for reuse
    otherwise). `serve` freezes its start-up objects, so a collection walks
    only what was made since: milliseconds, at most every 5 s.
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except AttributeError:  # not glibc
        pass


class ProxyServer:
    def __init__(
        self, *, hosts: tuple[str, ...], port: int, lookup: Lookup,
        identity_of: Callable[[int], Enrollment | None], credentials: UpstreamCredentialSource,
        limits: Limits, max_request_bytes: int, max_sessions: int, max_sessions_per_workload: int,
        audit_failing: Callable[[], str | None] | None = None, release_memory: Callable[[], None] = release_freed_heap,
        policy: Callable[[], Policy], audit: Callable, max_frame_bytes: int, upstream_pool: int = 0,
        upstream_failed: Callable[[tuple[str, int]], None] = lambda address: None,
        workloads: WorkloadIdentity | None = None, upstream_tls: UpstreamTls | None = None,
        discovery: Discovery | None = None,
        steer: Callable[[tuple, tuple], None] | None = None,
        workload_tls: WorkloadTls | None = None,
        desk: Desk | None = None,
    ) -> None:
        self.desk = desk  # approvals: held requests filed and answered, grants in force (approvals/desk.py)
        # Brokers the cluster's answers name (proxy/discovery.py), and how the kernel is told of them:
        # `steer(to_steer, outside)` raises on failure.
        self.discovery = discovery
        self.steer = steer
        # The workload CA's contexts, for enrolments that terminate workload TLS; None: such sessions are refused.
        self.workload_tls = workload_tls
        # Told when a broker refuses a connect, so steering can refuse new connects to it at once.
        self.upstream_failed = upstream_failed
        self.policy = policy
        self.hosts = hosts
        self.port = port
        self.lookup = lookup
        self.identity_of = identity_of
        self.credentials = credentials
        self.audit = audit
        self.max_frame_bytes = max_frame_bytes
        self.tls = _TlsFaults(upstream_tls, limits.connect_timeout_s)
        self.pool = UpstreamPool(credentials, max_frame_bytes, upstream_pool, connect_timeout_s=limits.connect_timeout_s,
                                 sasl_timeout_s=limits.sasl_timeout_s, tls=self.tls)
        self.workloads = workloads or WorkloadIdentity()
        self.live: dict[str, _Connection] = {}
        self._servers: list[asyncio.AbstractServer] = []
        # Listeners inside workloads' network namespaces, by namespace inode; cookie -> "net:[inode]" for the audit.
        self._netns_servers: dict[int, list[asyncio.AbstractServer]] = {}
        self.netns_names: dict[int, str] = {}
        self.limits = limits
        self.max_request_bytes = max_request_bytes
        self.max_sessions = max_sessions
        self.max_sessions_per_workload = max_sessions_per_workload
        # None: audit_failure is `forward`; otherwise the audit's failure reason, or None while it writes.
        self.audit_failing = audit_failing
        self.release_memory = release_memory
        self.held_total = 0
        self.held_peak = 0
        self.paused: set[_Connection] = set()
        self.per_workload: dict[int, int] = {}
        self.budget_pauses = 0
        self.deadline_closes: dict[str, int] = {}
        self.limit_refusals = 0
        self._limit_pending: dict[tuple[int, str], list] = {}
        self._trimmed_at = 0.0
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host in self.hosts:
            self._servers.append(await loop.create_server(
                lambda: _ClientProtocol(self), host, self.port, reuse_address=True, backlog=1024))
        self.netns_names[netns.cookie_of(self._servers[0].sockets[0])] = f"net:[{netns.own_inode()}]"
        self._sweeper = loop.create_task(self._sweep())

    async def listen_in_netns(self, pid: int, inode: int) -> tuple[int, list]:
        """Listen inside the network namespace `inode` (entered through process `pid`); (its cookie, the sockets).

        The kernel rewrites a workload's steered connect to the proxy's
        address, which in the workload's namespace is that namespace's
        loopback: the sockets are made there, on this thread, and served here
        like the main listeners. They are bound to free ports: the namespace's
        sk_lookup program hands them every SYN to the proxy's address, so a
        workload that bound the proxy's port in its own namespace takes
        nothing and blocks nothing. Raises OSError if 127.0.0.1 cannot be
        bound there; IPv6 is served where ::1 exists (a namespace whose lo is
        down still binds 127.0.0.1 on 6.18, and its workloads get ENETUNREACH).
        """
        sockets = []
        with netns.entered(f"/proc/{pid}/ns/net", inode):
            for family, host in ((socket.AF_INET, self.hosts[0]), (socket.AF_INET6, self.hosts[-1])):
                try:
                    sockets.append(_listening(family, host))
                except OSError:
                    if family == socket.AF_INET:
                        for sock in sockets:
                            sock.close()
                        raise
        cookie = netns.cookie_of(sockets[0])
        loop = asyncio.get_running_loop()
        servers = []
        for sock in sockets:
            servers.append(await loop.create_server(lambda: _ClientProtocol(self), sock=sock, backlog=1024))
        self._netns_servers[inode] = servers
        self.netns_names[cookie] = f"net:[{inode}]"
        return cookie, [s for server in servers for s in server.sockets]

    def stop_listening_in_netns(self, inode: int, cookie: int) -> None:
        """Close the listeners in that namespace; its live sessions go on."""
        for server in self._netns_servers.pop(inode, ()):
            server.close()
        self.netns_names.pop(cookie, None)

    def listening_sockets(self) -> list:
        """The listening sockets (socket-like: family, fileno, getsockname), for steering to hand
        steered connections to them alone; after start()."""
        return [sock for server in self._servers for sock in server.sockets]

    def accept(self, transport: asyncio.Transport) -> _Connection | None:
        now = time.time()
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        origin = self.lookup(sock)
        if origin is None:
            self._refuse(transport, now, f"connection from {peer[0]}:{peer[1]} was not steered by the kernel "
                         "(no record of it); direct connections to the proxy are refused")
            return None
        enrollment = self.identity_of(origin.enrolled_cgroup_id)
        if enrollment is None:
            self._refuse(transport, now, f"cgroup {origin.enrolled_cgroup_id} is no longer enrolled",
                         cgroup_id=origin.cgroup_id, pid=origin.tgid)
            return None
        revoked = self.workloads.revocations.covering(None, enrollment.identity, now)
        if revoked is not None and enrollment.auth == "cgroup":
            self._refuse(transport, now, f"connection from {enrollment.identity} (pid {origin.tgid}) refused: "
                         f"{revoked.describe()}", identity=enrollment.identity, cgroup_id=origin.cgroup_id,
                         pid=origin.tgid)
            return None
        if len(self.live) >= self.max_sessions:
            self._at_limit(transport, now, origin, enrollment, "max_sessions", self.max_sessions)
            return None
        if self.per_workload.get(origin.enrolled_cgroup_id, 0) >= self.max_sessions_per_workload:
            self._at_limit(transport, now, origin, enrollment, "max_sessions_per_workload",
                           self.max_sessions_per_workload)
            return None
        tls_context = None
        if enrollment.workload_tls == "terminate":
            try:
                if self.workload_tls is None:
                    raise ValueError("the appliance has no workload CA")
                tls_context = self.workload_tls.context_for(_broker_of(origin), now)
            except (ValueError, OSError) as e:
                self._refuse(transport, now, f"connection from {enrollment.identity} (pid {origin.tgid}) to "
                             f"{origin.broker_address} refused: its enrolment terminates workload TLS, but no "
                             f"certificate could be made for the broker ({e})", identity=enrollment.identity,
                             cgroup_id=origin.cgroup_id, pid=origin.tgid)
                return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        who = process.describe(origin.tgid, origin.cgroup_id, origin.comm, now)
        command = self.policy().masking.mask_text(who.command)  # a command line may carry record values
        conn = _Connection(self, transport, origin, enrollment, command, now, tls_context)
        self.audit(SessionOpened(
            session_id=conn.session.session_id, started_at=now,
            identity=None if conn.session.enforcer is None else enrollment.identity,
            groups=enrollment.groups, cgroup_id=origin.cgroup_id, cgroup_path=who.cgroup_path,
            enrolled_cgroup_id=origin.enrolled_cgroup_id, pid=origin.tgid, uid=origin.uid, gid=origin.gid,
            command=command, client_address=origin.client_address, broker_address=origin.broker_address,
            netns_cookie=origin.netns_cookie, netns=self.netns_names.get(origin.netns_cookie),
        ))
        log.info("session %s: %s (pid %d, %s) -> %s", conn.session.session_id, enrollment.identity,
                 origin.tgid, command[:60], origin.broker_address)
        self.live[conn.session.session_id] = conn
        self.per_workload[origin.enrolled_cgroup_id] = self.per_workload.get(origin.enrolled_cgroup_id, 0) + 1
        if self.discovery is not None:  # a workload holds this broker: discovery does not forget it for a while
            self.discovery.used(origin.broker_host, origin.broker_port, now)
        return conn

    def _at_limit(self, transport: asyncio.Transport, now: float, origin: OriginalDestination,
                  enrollment: Enrollment, key: str, limit: int) -> None:
        """Reset a connection over a session limit; refusals are audited as one event per workload and second.

        The reset reaches the client as ECONNRESET on its first read or write,
        which every Kafka client treats as a lost broker connection and retries
        after its reconnect backoff, as it does when a broker is at its own
        connection limit.
        """
        self.limit_refusals += 1
        transport.abort()
        pending = self._limit_pending.get((origin.enrolled_cgroup_id, key))
        if pending is None:
            self._limit_pending[(origin.enrolled_cgroup_id, key)] = [now, 1, enrollment.identity, origin, limit]
        else:
            pending[1] += 1

    def _flush_limit_refusals(self) -> None:
        for (cgroup_id, key), (first, count, identity, origin, limit) in self._limit_pending.items():
            times = f"{count} connections" if count > 1 else "a connection"
            message = (f"refused {times} from {identity} (pid {origin.tgid}) to {origin.broker_address}: "
                       f"{key} ({limit}) reached")
            log.warning("%s", message)
            self.audit(Event(at=first, kind="session-limit", message=message, identity=identity,
                             cgroup_id=origin.cgroup_id, pid=origin.tgid,
                             detail=json.dumps({"limit": key, "value": limit, "count": count,
                                                "live": len(self.live)})))
        self._limit_pending.clear()

    def recheck_paused(self) -> None:
        for conn in list(self.paused):
            conn.check_budget()

    async def _sweep(self) -> None:
        """One timer for every session's deadlines, the paused sessions, limit refusals and freed heap."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.sweep(time.time())
            except Exception:  # noqa: BLE001 - the sweep must outlive any one session's fault
                log.exception("proxy sweep failed")

    def sweep(self, now: float) -> None:
        # The trim is decided on the books before this sweep's closes: a session closed here is freed only
        # once its transport's connection_lost runs, after the sweep, so it counts toward the next trim.
        # (Trimming in the same sweep handed nothing back when one sweep closed every session at once.)
        books_before = self.held_total
        trim_due = self.held_peak - books_before >= _TRIM_AFTER_BYTES and now - self._trimmed_at >= _TRIM_EVERY_S
        for conn in list(self.live.values()):
            reason = conn.deadline(now)
            if reason is not None:
                kind = reason.split(" ", 1)[0]
                self.deadline_closes[kind] = self.deadline_closes.get(kind, 0) + 1
                conn.dispatch(ev.DeadlinePassed(reason))
                conn.close()
                continue
            renew_at = conn.session.upstream_reauthenticate_at
            if renew_at is not None and now >= renew_at:
                conn.dispatch(ev.UpstreamReauthenticationDue(self.credentials.current(now)))
        self.pool.sweep(time.monotonic())
        self.held_total = sum(c.held for c in self.live.values())  # the books, re-added once a second
        self.recheck_paused()
        if self._limit_pending:
            self._flush_limit_refusals()
        if trim_due:
            log.info("sessions let go of %d MiB; handing freed heap back to the kernel",
                     (self.held_peak - books_before) >> 20)
            self.release_memory()
            self._trimmed_at = now
            self.held_peak = max(books_before, self.held_total)

    def limits_status(self) -> dict:
        """Budgets and limits now, for `appliance status`."""
        return {
            "sessions": len(self.live), "max_sessions": self.max_sessions,
            "max_sessions_per_workload": self.max_sessions_per_workload,
            "held_bytes": self.held_total, "buffer_budget_bytes": self.limits.buffer_budget_bytes,
            "paused_sessions": len(self.paused), "budget_pauses": self.budget_pauses,
            "deadline_closes": dict(self.deadline_closes), "session_limit_refusals": self.limit_refusals,
        }

    def _refuse(self, transport: asyncio.Transport, now: float, message: str, **fields) -> None:
        log.warning("%s", message)
        self.audit(Event(at=now, kind="refused-session", message=message, **fields))
        transport.abort()

    def steer_brokers(self, steer: tuple, outside: tuple) -> str | None:
        """Tell the kernel of brokers discovery decided; None, or why it could not (they are forgotten)."""
        if not steer and not outside:
            return None
        try:
            self.steer(steer, outside)
        except Exception as e:  # noqa: BLE001 - the kernel's refusal ends the session that needed it, nothing else
            for endpoint in (*steer, *outside):
                self.discovery.forget(endpoint)
            what = ", ".join(describe(e_) for e_ in (*steer, *outside))
            log.error("could not steer the brokers %s named in a broker's answer: %s", what, e)
            return f"the brokers {what} named in the broker's answer could not be steered: {e}; it was not delivered"
        return None

    async def resolve_brokers(self, names: tuple, session_id: str, identity: str | None) -> str | None:
        """Resolve host names an answer named and steer what they resolve to; None, or why not."""
        loop = asyncio.get_running_loop()
        timeout = self.discovery.config.resolve_timeout_s
        for name in names:
            host, port = name
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
            except asyncio.TimeoutError:
                return (f"broker {describe(name)} named in the broker's answer did not resolve within {timeout:g} s "
                        "(discovery.resolve_timeout_s); the answer was not delivered")
            except OSError as e:
                return (f"broker {describe(name)} named in the broker's answer does not resolve: {e.strerror or e}; "
                        "the answer was not delivered")
            now = time.time()
            learned = self.discovery.resolved(name, [info[4][0] for info in infos], now)
            if learned.fault is not None:
                return learned.fault
            self.tls.named(self.discovery.resolved_to(name), host)  # its certificate carries the name, not the IPs
            for level, event in audit_events(learned, f"answer naming {describe(name)}", now,
                                             self.discovery.config.refuse_outside, session_id=session_id,
                                             identity=identity):
                log.log(_LOG_LEVELS[level], "session %s: %s", session_id, event.message)
                self.audit(event)
            failed = self.steer_brokers(learned.steer, learned.outside if self.discovery.config.refuse_outside else ())
            if failed is not None:
                return failed
        return None

    def enforcer_for(self, principal: Principal):
        enforcer = Enforcer(principal, self.policy, gate=None if self.desk is None else self.desk.gate_for(principal))
        return enforcer if self.audit_failing is None else AuditGate(enforcer, self.audit_failing)

    def revoke_credentials(self, now: float) -> int:
        """End every live session a revocation now covers; returns how many."""
        revocations = self.workloads.revocations
        doomed = []
        for conn in self.live.values():
            sasl = conn.session.sasl
            if sasl.principal is None:
                continue
            found = revocations.covering(sasl.proof, sasl.principal.identity, now)
            if found is not None:
                doomed.append((conn, found))
        for conn, found in doomed:
            conn.dispatch(ev.Revoked(f"revoked: {found.describe()}"))
            conn.close()
        return len(doomed)

    def revoke(self, enrolled_cgroup_id: int, reason: str) -> int:
        """Close every live session of a workload; returns how many."""
        doomed = [c for c in self.live.values() if c.origin.enrolled_cgroup_id == enrolled_cgroup_id]
        for conn in doomed:
            conn.dispatch(ev.Revoked(reason))
        return len(doomed)

    def sessions(self) -> list[LiveSession]:
        return [c.live_info() for c in self.live.values()]

    def brokers_in_use(self) -> set[tuple[str, int]]:
        """The broker endpoint of every live session, as the kernel recorded it (discovery keeps these)."""
        return {(c.origin.broker_host, c.origin.broker_port) for c in self.live.values()}

    async def stop(self, reason: str = "appliance stopping") -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._limit_pending:
            self._flush_limit_refusals()
        self.pool.close()
        servers = [*self._servers, *(s for group in self._netns_servers.values() for s in group)]
        self._netns_servers.clear()
        for server in servers:
            server.close()
        for conn in list(self.live.values()):
            conn.dispatch(ev.Revoked(reason))
        for server in servers:
            await server.wait_closed()
