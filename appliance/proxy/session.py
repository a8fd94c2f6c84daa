"""One proxied connection as a pure state machine: events in, commands out.

A session first authenticates upstream with the appliance's credentials while
holding (up to a bound) whatever the workload sends, then relays. In relay it
reads each request's header, answers itself the few requests the proxy owns
(SASL from the workload, ApiVersions it cannot parse, versions it did not
offer: UNSUPPORTED_VERSION), asks the enforcer (policy) whether the rest may go
on, and forwards what is allowed: as the bytes that arrived when all of it is,
re-encoded without the refused entries when only part is. Responses come back
in request order and each must answer the oldest request in flight
(`inflight.py`); ApiVersions answers are capped to the versions the proxy
offers, and the operation is audited with its latency and error code. A
Produce with acks=0 gets no response, so it is audited when forwarded.

When the broker bounds the appliance's own SASL session (KIP-368's
session lifetime), the session renews it in time (`_UpstreamSession`): once
the shell says it is due, new workload requests are held, the answers in
flight are delivered, the proxy's own SaslHandshake and SaslAuthenticate go
out on the same connection and their answers are consumed here, and then the
held requests go on in order. The workload never sees any of it.

With discovery (`discovery.py`), a Metadata, FindCoordinator or DescribeCluster
answer (or a failed Produce v10+ naming new leaders) naming brokers not steered yet is preceded by a `SteerBrokers` command,
so the shell tells the kernel before the answer's bytes reach the workload; an
answer naming a hostile endpoint is not delivered and the session closes.

`handle` is total: any fault closes this session with an audited reason that
names what it was handling; nothing escapes to the shell or other sessions.
The session's state is the handler `_on_client` / `_on_upstream` point to.
"""

from __future__ import annotations

import datetime
import json
import struct
import traceback
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from kio.schema.api_versions.v0.response import ApiVersion
from kio.schema.errors import ErrorCode

from appliance.audit.records import Authentication, Event, Operation, RecordedOperation, SessionClosed
from appliance.broker.oauth_token import BearerToken
from appliance.kafka import apis, codec
from appliance.kafka.framing import FrameError, FrameSplitter
from appliance.proxy import events as ev
from appliance.proxy.commands import (Audit, CloseConnection, Command, GrantsUsed, HoldForApproval, Log,
                                      RefreshUpstreamToken, SendToClient, SendToUpstream, SteerBrokers,
                                      VerifyToken as VerifyTokenCommand)
from appliance.proxy.discovery import (DISCOVERY_APIS, PRODUCE_NAMES_LEADERS, Discovery, TooMany, audit_events,
                                       read_named)
from appliance.proxy.inflight import InFlight, InFlightQueue
from appliance.proxy.upstream_auth import (UpstreamAuthenticator, UpstreamAuthError, UpstreamSecret, outlives,
                                           reauthentication_times)
from appliance.identity.binding import Binding
from appliance.policy import permissions
from appliance.policy.enforce import Enforcer, Verdict
from appliance.policy.model import Principal
from appliance.proxy.workload_sasl import Finished, Reply, VerifyToken, WorkloadSasl

# After a failed authentication the connection closes this much later, as Kafka's broker does
# (connection.failed.authentication.delay.ms, 100): the client reads the refusal before the close (some
# drop data read together with it), and each guess costs a guesser a connection held that long.
FAILED_AUTHENTICATION_DELAY_S = 0.1
# What a workload may send before it has authenticated, when its enrolment requires a proof.
_BEFORE_AUTHENTICATION = frozenset({apis.API_VERSIONS, apis.SASL_HANDSHAKE, apis.SASL_AUTHENTICATE})


# How a forwarded request's verdict reads in the audit's outcome column.
_OUTCOMES = {"partly refused": "partly-refused", "refused": "refused"}


_SIZE_AND_CORRELATION = struct.Struct(">ii")
# Responses at least this large are passed through as they arrive when nothing rewrites them.
_STREAM_AT_BYTES = 64 * 1024


@dataclass(slots=True)
class _Streaming:
    pending: InFlight
    remaining: int
    chunks: list


# A connection repeats the same topics and decisions request after request.
@lru_cache(maxsize=1024)
def _topics_json(topics: tuple[codec.TopicPartitions, ...]) -> str:
    return json.dumps({t.topic: list(t.partitions) for t in topics})


@lru_cache(maxsize=1024)
def _checks_json(checks: tuple) -> str:
    return json.dumps([c.as_row() for c in checks])


@lru_cache(maxsize=1024)  # only versions the proxy parses reach it: bounded by kio's schemas
def _version_not_offered(api_key: int, version: int) -> bool:
    """A parseable version outside what ApiVersions offered. An API outside the permission table goes on
    to the enforcer, which refuses it as unmapped (CLUSTER_AUTHORIZATION_FAILED, audited "unmapped-api")."""
    if not permissions.covered(api_key):
        return False
    offered = permissions.offered(api_key)
    return offered is None or not offered.min <= version <= offered.max


@dataclass(slots=True)
class _UpstreamSession:
    """The appliance's own SASL session on this broker connection (KIP-368) and its renewal.

    `phase`: None while relaying; "draining" once a renewal is due (the
    workload's new requests are held until the answers in flight are
    delivered); "authenticating" while the proxy's own exchange is out.
    """

    due_at: float | None = None  # when to renew; None: the broker set no lifetime
    latest_at: float | None = None  # when to renew with whatever secret there is
    ends_at: float | None = None  # when the broker ends the session
    phase: str | None = None
    sent_at: float | None = None  # when the renewal's handshake went out
    renewals: int = 0

    def granted(self, now: float, lifetime_s: float | None) -> None:
        self.phase = self.sent_at = None
        if lifetime_s is None:
            self.due_at = self.latest_at = self.ends_at = None
            return
        self.due_at, self.latest_at = reauthentication_times(now, lifetime_s)
        self.ends_at = now + lifetime_s


class _BadInput(Exception):
    """Bytes from one side that end this session; the message names the side and the fault."""


# Bytes the workload may send before upstream authentication completes; a client sends one
# ApiVersions request, or a few requests, before its first answer.
DEFAULT_MAX_HELD_BYTES = 1 << 20


# A TLS record header: content type 22 (handshake), then version 3.x (SSL 3.0 to TLS 1.3 all say 3.0-3.4).
# As a Kafka size prefix it is over 369 MB: a frame too large for the proxy is no request, so it is read as TLS.
def _starts_tls_handshake(data: bytes, max_frame_bytes: int) -> bool:
    return (len(data) >= 4 and data[0] == 0x16 and data[1] == 0x03 and data[2] <= 0x04
            and int.from_bytes(data[:4], "big") > max_frame_bytes)


# An alert record, TLS 1.0 framing (every client version reads it): fatal (2), handshake_failure (40).
_TLS_HANDSHAKE_FAILURE_ALERT = bytes((0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28))
_TLS_REFUSED = ("workload started a TLS handshake: the appliance takes plaintext Kafka from workloads "
                "(it holds the broker's credentials and speaks TLS to the broker itself); set the client's "
                "security.protocol to PLAINTEXT, or SASL_PLAINTEXT to present a token or static credentials; or enrol "
                "it with --workload-tls terminate for the appliance to answer its TLS (docs/tls.md)")


class Session:
    def __init__(self, session_id: str, credentials: UpstreamSecret, enforcer: Enforcer | None, *,
                 max_frame_bytes: int, now: float, max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
                 max_renewal_held_bytes: int | None = None,
                 workload_sasl: WorkloadSasl | None = None,
                 enforcer_for: Callable[[Principal], Enforcer] | None = None,
                 discovery: Discovery | None = None) -> None:
        """`enforcer` decides for the enrolment's principal; None when the enrolment requires the workload to
        authenticate first, and `enforcer_for` makes one for whoever it proves to be (also when a proof
        adds groups). `max_renewal_held_bytes` (default `max_held_bytes`) bounds what is held while the
        upstream session is renewed; the shell sets it above its own per-session budget, past which it
        stops reading the workload, so a fast producer is slowed, not closed."""
        self.session_id = session_id
        self.discovery = discovery  # shared by every session: the brokers the cluster's answers name
        # The answers read for brokers they name: one set lookup per response, none without discovery.
        self._names_brokers = DISCOVERY_APIS if discovery is not None else frozenset()
        if workload_sasl is None:
            workload_sasl = WorkloadSasl(Binding(enforcer.principal.identity, tuple(sorted(enforcer.principal.groups))))
        self.sasl = workload_sasl
        self.enforcer = enforcer
        self._enforcer_for = enforcer_for
        self.bytes_from_client = 0
        self._first_bytes = b""  # the client's first four bytes, to tell a ClientHello from a frame
        self.bytes_to_client = 0
        self.requests = 0
        self.closed = False
        self.max_held_bytes = max_held_bytes
        self.max_renewal_held_bytes = max_renewal_held_bytes or max_held_bytes
        self._client_frames = FrameSplitter(max_frame_bytes)
        self._upstream_frames = FrameSplitter(max_frame_bytes)
        self._auth = UpstreamAuthenticator(credentials)
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._in_flight = InFlightQueue()
        self._streaming: _Streaming | None = None
        self._read_whole: InFlight | None = None  # the request whose large response was found to need reading whole
        # What the session is handling, for a fault's reason: a description, or (header, "request" or
        # "response"), formatted only when a fault needs it.
        self._context: str | tuple[codec.RequestHeader, str] = "the connection"
        self._on_client = self._hold_client
        self._on_upstream = self._authenticate
        # A token being verified by the shell: the SaslAuthenticate waiting for its answer, and the client's
        # frames and bytes that came after it, processed once the answer is in.
        self._verifying: InFlight | None = None
        self._parked_frames: list[bytes] = []
        self._parked: list[bytes] = []
        self._parked_bytes = 0
        self._close_when_answered: str | None = None  # a failed authentication: close once its answer is sent
        # A request held for approval (docs/approvals.md): its frame and header; what the client sends after it
        # is parked. `_recheck`: the reason the next decision refuses what is still not granted, once decided.
        self._awaiting: tuple[bytes, codec.RequestHeader] | None = None
        self._recheck: str | None = None
        self._last_now = now
        self._upstream = _UpstreamSession()

    # ---- what the shell reads to keep budgets and deadlines ----------------------

    @property
    def relaying(self) -> bool:
        """Upstream authentication is done and requests are being relayed (or held while it is renewed)."""
        return self._on_client == self._relay_client or self._upstream.phase is not None

    @property
    def oldest_request_at(self) -> float | None:
        """When the oldest request still waiting for the broker's answer arrived; None when none waits."""
        if self._streaming is not None:
            return self._streaming.pending.at
        if self._upstream.phase == "authenticating":  # the proxy's own, bounded like the workload's
            return self._upstream.sent_at
        head = self._in_flight.head
        return None if head is None else head.at

    @property
    def buffered_bytes(self) -> int:
        """Bytes this session holds: the workload's bytes held before relaying, partial frames of both sides,
        and the proxy's own answers waiting behind earlier requests."""
        return (self._held_bytes + self._client_frames.pending + self._upstream_frames.pending
                + self._in_flight.answer_bytes + self._parked_bytes)

    @property
    def reauthenticate_by(self) -> float | None:
        """When the workload's proof runs out (its token's expiry, or the configured maximum); the session
        ends then unless it has re-authenticated. None: no proof, no expiry."""
        return self.sasl.expires_at

    @property
    def upstream_reauthenticate_at(self) -> float | None:
        """When the appliance's own SASL session with the broker is due for renewal: from then on the shell
        sends `UpstreamReauthenticationDue` (once a sweep) until it is under way. None: not due ever, or
        under way."""
        upstream = self._upstream
        return upstream.due_at if upstream.phase is None else None

    # ---- entry point --------------------------------------------------------

    def handle(self, event: ev.Event, now: float) -> list[Command]:
        """Commands for one event. Total: whatever goes wrong, this session closes with an audited reason
        naming what it was handling; no exception leaves, so no other session is touched."""
        if self.closed:
            return []
        self._last_now = now
        out: list[Command] = []
        try:
            match event:
                case ev.ClientData(data):
                    # The first four bytes decide, however many reads bring them: a ClientHello written in
                    # pieces is TLS too (fewer than four bytes are never a frame, so nothing went on yet).
                    opening = self.bytes_from_client < 4
                    self.bytes_from_client += len(data)
                    if opening:
                        self._first_bytes = (self._first_bytes + data)[:4]
                    if opening and _starts_tls_handshake(self._first_bytes, self._client_frames.max_frame_bytes):
                        self._refuse_tls(now, out)
                    else:
                        self._on_client(data, now, out)
                case ev.UpstreamData(data):
                    self._on_upstream(data, now, out)
                case ev.UpstreamConnected(authenticated=True, authenticated_at=at, session_lifetime_s=lifetime,
                                          pooled=pooled):
                    if pooled:
                        out.append(Log("info", f"session {self.session_id} took a pre-authenticated upstream connection from the pool"))
                    self._upstream.granted(now if at is None else at, lifetime)
                    self._start_relay(now, out)
                case ev.UpstreamConnected():
                    out.append(SendToUpstream(self._auth.start()))
                case ev.ClientClosed(reason) | ev.UpstreamClosed(reason) | ev.Revoked(reason):
                    self._close(reason, now, out)
                case ev.DeadlinePassed(reason) | ev.DiscoveryFailed(reason) | ev.ClientTlsFailed(reason):
                    self._close(reason, now, out, level="warning")
                case ev.TokenVerified(result):
                    self._token_verified(result, now, out)
                    if self._upstream.phase == "draining":
                        self._maybe_reauthenticate(now, out)
                case ev.UpstreamReauthenticationDue(secret):
                    self._reauthentication_due(secret, now, out)
                case ev.ApprovalDecided(refusal):
                    self._approval_decided(refusal, now, out)
        except _BadInput as e:
            self._close(str(e), now, out, level="warning")
        except UpstreamAuthError as e:
            self._upstream_refused(e, now, out)
        except Exception as e:  # noqa: BLE001 - the boundary: every fault ends this session, never the process
            self._fault(e, now, out)
        return out

    def _refuse_tls(self, now: float, out: list[Command]) -> None:
        """A workload configured for TLS: a fatal alert it reports as a TLS failure, and a reason in the audit.

        Its ClientHello read as a Kafka frame would be a size of some 369 MB
        and an unexplained close; the alert makes the client report a failed
        TLS handshake at once instead of retrying a broker that seems to drop it.
        """
        out.append(SendToClient(_TLS_HANDSHAKE_FAILURE_ALERT))
        self._close(_TLS_REFUSED, now, out, level="warning")

    def _fault(self, error: Exception, now: float, out: list[Command]) -> None:
        reason = f"internal fault while handling {self._describe_context()}: {type(error).__name__}: {error}"
        out.append(Log("error", f"session {self.session_id}: {reason}\n{traceback.format_exc()}"))
        if self.closed:
            return
        try:
            self._close(reason, now, out, level="error")
        except Exception:  # noqa: BLE001 - the close itself failed: close without the per-request audit
            self.closed = True
            self._in_flight.clear()
            self._streaming = None
            out.append(Audit(SessionClosed(self.session_id, now, self.bytes_from_client, self.bytes_to_client,
                                           self.requests, reason)))
            out.append(CloseConnection(reason))

    def _describe_context(self) -> str:
        if isinstance(self._context, str):
            return self._context
        header, what = self._context
        return (f"{apis.api_name(header.api_key)} v{header.api_version} {what} "
                f"(correlation id {header.correlation_id})")

    def _close(self, reason: str, now: float, out: list[Command], *, level: str = "info",
               delay_s: float = 0.0) -> None:
        if self.closed:
            return
        self.closed = True
        if self._streaming is not None:  # closed part-way through a response passed through
            out.append(Audit(self._operation(self._streaming.pending, now, None, None, "unanswered")))
            self._streaming = None
        for pending in self._in_flight:
            out.append(Audit(self._operation(pending, now, None, None, "unanswered")))
        self._in_flight.clear()
        if self._verifying is not None:  # a SaslAuthenticate whose token was still being verified
            out.append(Audit(self._operation(self._verifying, now, None, None, "unanswered")))
            self._verifying = None
        out.append(Log(level, f"session {self.session_id} closed: {reason}"))
        out.append(Audit(SessionClosed(self.session_id, now, self.bytes_from_client, self.bytes_to_client, self.requests, reason)))
        out.append(CloseConnection(reason, delay_s))

    # ---- upstream authentication ----------------------------------------------

    def _hold_client(self, data: bytes, now: float, out: list[Command]) -> None:
        self._hold(data, self.max_held_bytes, "before upstream authentication completed")

    def _hold(self, data: bytes, limit: int, when: str) -> None:
        """Keep the workload's bytes until relaying (re)starts; past `limit` the session ends, naming `when`."""
        self._held_bytes += len(data)
        if self._held_bytes > limit:
            raise _BadInput(f"workload sent {self._held_bytes} bytes {when}, more than the {limit} the proxy holds")
        self._held.append(data)

    def _authenticate(self, data: bytes, now: float, out: list[Command]) -> None:
        self._context = ("the broker's answer during upstream "
                         + ("re-authentication" if self._upstream.phase is not None else "authentication"))
        try:
            responses = self._upstream_frames.feed(data)
        except FrameError as e:
            raise _BadInput(f"malformed frame from broker during authentication: {e}") from None
        for i, response in enumerate(responses):
            following = self._auth.receive(response)
            if following is not None:
                out.append(SendToUpstream(following))
                continue
            if i + 1 < len(responses) or self._upstream_frames.pending:
                raise _BadInput("broker sent bytes after the last authentication answer, before any request")
            self._upstream_authenticated(now, out)

    def _upstream_authenticated(self, now: float, out: list[Command]) -> None:
        upstream, lifetime = self._upstream, self._auth.session_lifetime_s
        renewed = upstream.phase is not None
        upstream.granted(now, lifetime)
        granted = "no session lifetime" if lifetime is None else f"a session lifetime of {lifetime:g} s"
        if renewed:
            upstream.renewals += 1
            message = (f"session {self.session_id} re-authenticated its broker connection ({self._auth.mechanism}, "
                       f"renewal {upstream.renewals}); the broker granted {granted}")
            out.append(Log("info", message))
            identity = None if self.enforcer is None else self.enforcer.principal.identity
            out.append(Audit(Event(at=now, kind="upstream-reauth", message=message, identity=identity,
                                   session_id=self.session_id,
                                   detail=json.dumps({"mechanism": self._auth.mechanism, "renewal": upstream.renewals,
                                                      "session_lifetime_s": lifetime}))))
        else:
            out.append(Log("debug", f"session {self.session_id} authenticated upstream; the broker granted {granted}"))
        self._start_relay(now, out)

    def _upstream_refused(self, error: UpstreamAuthError, now: float, out: list[Command]) -> None:
        """The broker refused the appliance (or broke the exchange): a token it refused is replaced for the
        next attempt, and this session closes."""
        if isinstance(self._auth.credentials, BearerToken):
            out.append(RefreshUpstreamToken(f"session {self.session_id}: {error}"))
        what = "re-authentication" if self._upstream.phase is not None else "authentication"
        self._close(f"upstream {what} failed: {error}", now, out, level="error")

    # ---- renewing the upstream SASL session (KIP-368) ---------------------------------

    def _reauthentication_due(self, secret: UpstreamSecret, now: float, out: list[Command]) -> None:
        """The shell's prompt, once a sweep from `upstream_reauthenticate_at` on, with the current secret."""
        upstream = self._upstream
        if upstream.phase is not None or upstream.due_at is None or now < upstream.due_at \
                or self._on_client != self._relay_client:
            return
        if not outlives(secret, upstream.ends_at) and now < upstream.latest_at:
            # Kafka bounds the new session by the token's own expiry: renewing with this one gains nothing.
            out.append(RefreshUpstreamToken(f"session {self.session_id}: the appliance's token would not outlive "
                                            "the broker session it should renew"))
            return
        upstream.phase = "draining"
        self._auth = UpstreamAuthenticator(secret)
        self._context = "the broker's answers before upstream re-authentication"
        self._on_client = self._hold_during_reauthentication
        self._on_upstream = self._drain_upstream
        self._maybe_reauthenticate(now, out)

    def _hold_during_reauthentication(self, data: bytes, now: float, out: list[Command]) -> None:
        self._hold(data, self.max_renewal_held_bytes, "while the appliance re-authenticated its broker connection")

    def _drain_upstream(self, data: bytes, now: float, out: list[Command]) -> None:
        self._relay_upstream(data, now, out)
        if not self.closed:
            self._maybe_reauthenticate(now, out)

    def _maybe_reauthenticate(self, now: float, out: list[Command]) -> None:
        """Send the proxy's own SaslHandshake once the broker owes this connection nothing: every answer in
        flight delivered, none part-read, no workload token being verified (its parked requests go on first)."""
        if self.closed or self._in_flight or self._streaming is not None or self._verifying is not None \
                or self._upstream_frames.pending or self._close_when_answered is not None:
            return
        self._upstream.phase, self._upstream.sent_at = "authenticating", now
        self._context = "the broker's answer during upstream re-authentication"
        self._on_upstream = self._authenticate
        out.append(SendToUpstream(self._auth.start()))

    def _start_relay(self, now: float, out: list[Command]) -> None:
        self._on_client = self._relay_client
        self._on_upstream = self._relay_upstream
        held, self._held, self._held_bytes = b"".join(self._held), [], 0
        if held:
            self._relay_client(held, now, out)

    # ---- relay: the workload's requests ------------------------------------------

    def _relay_client(self, data: bytes, now: float, out: list[Command]) -> None:
        if self._verifying is not None or self._close_when_answered is not None or self._awaiting is not None:
            self._park(data)
            return
        try:
            self._relay_client_frames(data, now, out)
        except FrameError as e:
            raise _BadInput(f"malformed frame from client: {e}") from None
        except codec.DecodeError as e:
            raise _BadInput(f"undecodable client request: {e}") from None

    def _park(self, data: bytes) -> None:
        if self._close_when_answered is not None:
            return  # authentication failed: nothing more is read from this workload
        self._parked_bytes += len(data)
        if self._parked_bytes > self.max_held_bytes:
            waiting = "its token was being verified" if self._awaiting is None else "a request waited for approval"
            raise _BadInput(f"workload sent {self._parked_bytes} bytes while {waiting}, more "
                            f"than the {self.max_held_bytes} the proxy holds")
        self._parked.append(data)

    def _relay_client_frames(self, data: bytes, now: float, out: list[Command]) -> None:
        self._process_frames(self._client_frames.feed(data), now, out)

    def _process_frames(self, frames: list[bytes], now: float, out: list[Command]) -> None:
        forward: list[bytes] = []

        def flush() -> None:
            nonlocal forward
            if forward:
                out.append(SendToUpstream(forward[0] if len(forward) == 1 else b"".join(forward)))
                forward = []

        for i, frame in enumerate(frames):
            self._context = "a request from the workload"
            header = codec.parse_request_header(frame)
            self._context = (header, "request")
            self.requests += 1
            if header.correlation_id in self._in_flight:
                flush()
                self._close(f"{self._describe_context()} reuses the correlation id of a request still in flight; "
                            "answers could not be told apart", now, out, level="warning")
                return
            if header.api_key in (apis.SASL_HANDSHAKE, apis.SASL_AUTHENTICATE) and header.body_offset >= 0:
                self._sasl_request(header, frame, now, out)
                if self._verifying is not None or self._close_when_answered is not None or self.closed:
                    flush()
                    self._parked_frames = frames[i + 1:] if not self.closed else []
                    self._parked_bytes += sum(map(len, self._parked_frames))
                    return
                continue
            if self.enforcer is None or self.sasl.in_exchange:
                if header.api_key not in _BEFORE_AUTHENTICATION or self.sasl.in_exchange:
                    flush()
                    self._unauthenticated(header, now, out)
                    return
            if header.body_offset < 0 or _version_not_offered(header.api_key, header.api_version):
                flush()
                if not self._answer_locally(header, frame, now, out):
                    self._refuse_version(header, frame, now, out)
                if self.closed:
                    return
                continue
            if self.enforcer is not None:
                if self._recheck is None:
                    verdict = self.enforcer.check(frame, header)
                else:  # the request that was held, decided again now that its approvals are
                    refusal, self._recheck = self._recheck, None
                    verdict = self.enforcer.check(frame, header, refusal=refusal)
            else:  # ApiVersions before authentication: open to every workload, no principal needed
                verdict = Verdict("allowed", (), None, frame)
            if verdict.granted:
                out.append(GrantsUsed(verdict.granted))
            if verdict.held:
                flush()
                self._awaiting = (frame, header)
                out.append(HoldForApproval(verdict.held, apis.api_name(header.api_key)))
                self._parked_frames = frames[i + 1:]
                self._parked_bytes += sum(map(len, self._parked_frames))
                return
            facts = verdict.facts or codec.facts_of(header.api_key, verdict.request)
            pending = InFlight(header, facts, now, len(frame), verdict, verdict.masked or None)
            if verdict.answer is not None:
                flush()
                error = codec.response_facts(verdict.answer, header.api_key, header.api_version).error_code
                self._reply(pending, verdict.answer, error, "refused", now, out)
                continue
            if verdict.forward is None:  # refused, and the client expects no answer (acks=0)
                out.append(Audit(self._operation(pending, now, None, None, "refused")))
                continue
            if header.api_key == apis.PRODUCE and facts.acks == 0:
                out.append(Audit(self._operation(pending, now, None, None, "no-response")))
            else:
                self._in_flight.append(pending)
            forward.append(verdict.forward)
        flush()

    def _reply(self, pending: InFlight, response: bytes, error: int | None, outcome: str, now: float,
               out: list[Command]) -> None:
        """Send the proxy's own answer now, or after the broker's answers to earlier requests."""
        if self._in_flight or self._streaming is not None:
            pending.answer = (response, error, outcome)
            self._in_flight.append(pending)
            return
        out.append(SendToClient(response))
        self.bytes_to_client += len(response)
        out.append(Audit(self._operation(pending, now, len(response), error, outcome)))

    def _send_ready(self, now: float, send: list[bytes], out: list[Command]) -> None:
        """The proxy's own answers now at the head of the queue join `send`, in order."""
        for pending in self._in_flight.pop_ready():
            response, error, outcome = pending.answer
            send.append(response)
            out.append(Audit(self._operation(pending, now, len(response), error, outcome)))

    def _refuse_version(self, header: codec.RequestHeader, frame: bytes, now: float, out: list[Command]) -> None:
        """A version the proxy did not offer in ApiVersions: UNSUPPORTED_VERSION, never forwarded.

        The answer is written in the request's own version, the only one the client reads it in. When kio
        has no schema of that version there is no answer the client could read, and the session closes,
        as Kafka's own broker closes on a request version it cannot parse.
        """
        name = f"{apis.api_name(header.api_key)} v{header.api_version} (api key {header.api_key})"
        offered = permissions.offered(header.api_key)
        what = "not an API the proxy offers" if offered is None else f"offered at v{offered.min}-v{offered.max} only"
        if not apis.has_schema(header.api_key, header.api_version):
            self._close(f"{name} is {what}, and is not a version the proxy can answer; it was refused, "
                        "not forwarded", now, out, level="warning")
            return
        row = permissions.permission_for(header.api_key, header.api_version)
        entries = (row.each.field, row.each.response_field) if row is not None and row.each is not None else None
        response = codec.unsupported_version_response(frame, header, entries)
        pending = InFlight(header, codec.RequestFacts(), now, len(frame))
        out.append(Log("warning", f"session {self.session_id}: {name} is {what}; answered UNSUPPORTED_VERSION"))
        self._reply(pending, response, int(ErrorCode.unsupported_version), "refused", now, out)

    def _answer_locally(self, header: codec.RequestHeader, frame: bytes, now: float, out: list[Command]) -> bool:
        """Requests the proxy answers itself instead of forwarding; False to go on."""
        response: bytes | None = None
        error: int | None = None
        if header.api_key == apis.API_VERSIONS and header.body_offset < 0:
            # A version newer than the proxy parses: answer v0 UNSUPPORTED_VERSION
            # with the range it does, and the client retries within it.
            error = ErrorCode.unsupported_version
            known = apis.parseable(apis.API_VERSIONS)
            v0 = codec.RequestHeader(header.api_key, 0, header.correlation_id, header.client_id, 0)
            response = codec.build_response(v0, error_code=error, api_keys=(ApiVersion(api_key=apis.API_VERSIONS, min_version=known.min, max_version=known.max),))
        if response is None:
            return False
        pending = InFlight(header, codec.RequestFacts(), now, len(frame))
        self._reply(pending, response, int(error), "answered-by-proxy", now, out)
        return True

    # ---- the workload's own SASL (answered by the proxy) -----------------------------------

    def _unauthenticated(self, header: codec.RequestHeader, now: float, out: list[Command]) -> None:
        what = self._describe_context()
        if self.sasl.in_exchange:
            reason = f"{what} arrived in the middle of a SASL exchange, before it completed"
        else:
            reason = (f"{what} arrived before the workload authenticated; its cgroup's enrolment "
                      f"(auth {self.sasl.binding.mode}) requires SASL authentication first")
        self._close(reason, now, out, level="warning")

    def _sasl_request(self, header: codec.RequestHeader, frame: bytes, now: float, out: list[Command]) -> None:
        request = codec.decode_request(frame, header)
        pending = InFlight(header, codec.RequestFacts(), now, len(frame))
        if header.api_key == apis.SASL_HANDSHAKE:
            error, mechanisms = self.sasl.handshake(str(request.mechanism), header.api_version)
            if error != ErrorCode.none:
                out.append(Log("warning", f"session {self.session_id}: SaslHandshake for mechanism "
                                          f"{str(request.mechanism)[:64]!r} answered {error.name}"))
            response = codec.build_response(header, error_code=error, mechanisms=mechanisms)
            self._reply(pending, response, int(error), "answered-by-proxy", now, out)
            return
        step = self.sasl.authenticate(bytes(request.auth_bytes), now)
        if isinstance(step, VerifyToken):
            self._verifying = pending
            out.append(VerifyTokenCommand(step.token))
            return
        self._sasl_answer(pending, step, now, out)

    def _token_verified(self, result, now: float, out: list[Command]) -> None:
        pending, self._verifying = self._verifying, None
        if pending is None:
            return  # the session moved on (closed); a late answer has nothing to answer
        self._context = (pending.header, "request")
        self._sasl_answer(pending, self.sasl.token_verified(result, now), now, out)
        if self.closed or self._close_when_answered is not None:
            return
        self._resume([], now, out)

    def _approval_decided(self, refusal: str | None, now: float, out: list[Command]) -> None:
        awaiting, self._awaiting = self._awaiting, None
        if awaiting is None:
            return  # nothing held (a late or repeated answer)
        frame, header = awaiting
        self._context = (header, "request")
        self.requests -= 1  # counted again as it is decided again
        # Approved: decided again under the grants; should they have ended meanwhile, refused, not held again.
        self._recheck = refusal or ("it was approved, but the approval's grant no longer covers it (ended or "
                                    "revoked before the request went on)")
        self._resume([frame], now, out)

    def _resume(self, first: list[bytes], now: float, out: list[Command]) -> None:
        """Go on with what the client sent while the session waited (a token's verification, an approval)."""
        frames, self._parked_frames = first + self._parked_frames, []
        parked, self._parked, self._parked_bytes = b"".join(self._parked), [], 0
        try:
            if frames:
                self._process_frames(frames, now, out)
            if parked and not self.closed:
                self._relay_client(parked, now, out)
        except FrameError as e:
            raise _BadInput(f"malformed frame from client: {e}") from None
        except codec.DecodeError as e:
            raise _BadInput(f"undecodable client request: {e}") from None

    def _sasl_answer(self, pending: InFlight, reply: Reply, now: float, out: list[Command]) -> None:
        header = pending.header
        fields = dict(error_code=reply.error, error_message=reply.message, auth_bytes=reply.auth_bytes)
        if header.api_version >= 1:
            fields["session_lifetime"] = datetime.timedelta(milliseconds=reply.lifetime_ms)
        response = codec.build_response(header, **fields)
        finished, self.sasl.finished = self.sasl.finished, None
        if finished is not None:
            out.append(Audit(self._authentication(finished, now)))
            if finished.ok:
                self._authenticated(finished, out)
        if reply.failed:
            reason = (finished.reason if finished is not None else reply.message) or "SASL authentication failed"
            out.append(Log("warning", f"session {self.session_id}: SASL authentication refused: {reason}"))
            self._close_when_answered = f"SASL authentication failed: {reason}"
        self._reply(pending, response, int(reply.error), "answered-by-proxy", now, out)
        if self._close_when_answered is not None and not self._in_flight and self._streaming is None:
            self._close(self._close_when_answered, now, out, level="warning", delay_s=FAILED_AUTHENTICATION_DELAY_S)

    def _authenticated(self, finished: Finished, out: list[Command]) -> None:
        principal = finished.principal
        if self.enforcer is None or self.enforcer.principal != principal:
            if self._enforcer_for is None:
                raise RuntimeError("the session has no way to make an enforcer for an authenticated principal")
            self.enforcer = self._enforcer_for(principal)
        out.append(Log("info", f"session {self.session_id} authenticated ({finished.kind}, {finished.mechanism}): "
                               f"{finished.reason}"))

    def _authentication(self, finished: Finished, now: float) -> Authentication:
        proof, principal = finished.proof, finished.principal
        return Authentication(
            session_id=self.session_id, at=now, kind=finished.kind, mechanism=finished.mechanism,
            outcome="ok" if finished.ok else "refused", reason=finished.reason,
            method=None if proof is None else proof.method,
            identity=None if principal is None else principal.identity,
            groups=None if principal is None else json.dumps(sorted(principal.groups)),
            subject=None if proof is None else proof.subject, issuer=None if proof is None else proof.issuer,
            client_id=None if proof is None else proof.client_id, jti=None if proof is None else proof.jti,
            issued_at=None if proof is None else proof.issued_at,
            expires_at=None if proof is None else proof.expires_at,
            session_expires_at=finished.expires_at, username=None if proof is None else proof.username,
        )

    # ---- relay: the broker's responses -------------------------------------------

    def _relay_upstream(self, data: bytes, now: float, out: list[Command]) -> None:
        try:
            self._relay_upstream_frames(data, now, out)
        except FrameError as e:
            raise _BadInput(f"malformed frame from broker: {e}") from None
        except codec.DecodeError as e:
            raise _BadInput(f"undecodable broker response: {e}") from None

    def _relay_upstream_frames(self, data: bytes, now: float, out: list[Command]) -> None:
        if self._streaming is not None:
            data = self._stream(data, now, out)
            if not data or self.closed:
                return
        frames = self._upstream_frames.feed(data)
        if frames:
            self._answer_frames(frames, now, out)
        if self._upstream_frames.pending >= 8 and not self.closed:
            self._maybe_stream(now, out)

    def _maybe_stream(self, now: float, out: list[Command]) -> None:
        """Start passing a large response through as it arrives, when nothing in it needs rewriting.

        A Fetch response of a megabyte held until its last byte costs the
        consumer a store-and-forward delay on every fetch; passed through, the
        workload reads it while the rest is still arriving. It is still read
        whole, afterwards, for the audit.
        """
        pending = self._in_flight.head
        if pending is not None and pending is self._read_whole:
            return  # decided when the response's first bytes arrived; every later read would ask again
        size, correlation_id = _SIZE_AND_CORRELATION.unpack(self._upstream_frames.peek(8))
        if size < _STREAM_AT_BYTES:
            return
        fault = self._in_flight.head_fault(correlation_id)
        if fault is not None:
            self._close(fault, now, out, level="warning")
            return
        verdict = pending.verdict
        if pending.header.api_key != apis.FETCH or (verdict is not None and verdict.reads_response):
            self._read_whole = pending
            return
        self._in_flight.popleft()
        self._streaming = _Streaming(pending, 4 + size, [])
        self._stream(self._upstream_frames.take_pending(), now, out)

    def _stream(self, data: bytes, now: float, out: list[Command]) -> bytes:
        """Forward the streamed response's bytes; audit it once whole. Returns what follows it."""
        streaming = self._streaming
        if len(data) <= streaming.remaining:  # the usual read: all of it is the response's (no copy)
            piece, rest = data, b""
        else:
            piece, rest = data[:streaming.remaining], data[streaming.remaining:]
        streaming.remaining -= len(piece)
        streaming.chunks.append(piece)
        self.bytes_to_client += len(piece)
        out.append(SendToClient(piece))
        if streaming.remaining == 0:
            self._streaming = None
            frame = b"".join(streaming.chunks)
            header = streaming.pending.header
            self._context = (header, "response")
            facts = codec.response_facts(frame, header.api_key, header.api_version)
            out.append(Audit(self._operation(streaming.pending, now, len(frame), facts.error_code, "forwarded", facts)))
            send: list[bytes] = []
            self._send_ready(now, send, out)
            self._send(send, out)
        return rest

    def _answer_frames(self, frames: list[bytes], now: float, out: list[Command]) -> None:
        send: list[bytes] = []
        for frame in frames:
            self._context = "a response from the broker"
            correlation_id = codec.response_correlation_id(frame)
            fault = self._in_flight.head_fault(correlation_id)
            if fault is not None:
                self._send(send, out)
                self._close(fault, now, out, level="warning")
                return
            pending = self._in_flight.head
            header = pending.header
            self._context = (header, "response")
            if header.api_key == apis.API_VERSIONS:
                frame = codec.cap_api_versions(frame, header.api_version, permissions.offered)
            elif pending.verdict is not None:
                frame, masked = self.enforcer.complete(frame, header, pending.verdict)
                if masked:
                    pending.masked = (pending.masked or 0) + masked
            if header.api_key in self._names_brokers:
                fault = self._discover(frame, header, now, out)
                if fault is not None:  # the answers before it go on; it does not
                    self._send(send, out)
                    self._close(fault, now, out, level="warning")
                    return
            error = None
            if header.api_key == apis.PRODUCE and pending.verdict is not None and pending.verdict.merge is None:
                error = codec.produce_response_error(frame, header.api_version, pending.facts)
            facts = codec.response_facts(frame, header.api_key, header.api_version) if error is None \
                else codec.ResponseFacts(error)
            if facts.error_code and header.api_key == apis.PRODUCE and header.api_version >= PRODUCE_NAMES_LEADERS \
                    and self.discovery is not None:  # only a failed Produce may name the new leaders (KIP-951)
                fault = self._discover(frame, header, now, out)
                if fault is not None:
                    self._send(send, out)
                    self._close(fault, now, out, level="warning")
                    return
            self._in_flight.popleft()
            outcome = _OUTCOMES.get(pending.verdict.outcome if pending.verdict is not None else "", "forwarded")
            out.append(Audit(self._operation(pending, now, len(frame), facts.error_code, outcome, facts)))
            send.append(frame)
            self._send_ready(now, send, out)
        self._send(send, out)

    def _discover(self, frame: bytes, header: codec.RequestHeader, now: float, out: list[Command]) -> str | None:
        """Steer the brokers this answer names before it goes on (`discovery.py`); a reason: it must not."""
        what = f"{apis.api_name(header.api_key)} v{header.api_version} response"
        limit = self.discovery.config.max_per_response
        try:
            named = read_named(frame, header.api_key, header.api_version, limit)
        except TooMany as e:
            return (f"{what} {e}, more than the {limit} the appliance takes from one answer "
                    "(discovery.max_per_response); it was not delivered")
        learned = self.discovery.learn(named.endpoints, now, what, listing=named.listing, cluster_id=named.cluster_id)
        if not learned:
            return None
        if learned.fault is not None:
            return learned.fault
        identity = None if self.enforcer is None else self.enforcer.principal.identity
        for level, event in audit_events(learned, what, now, self.discovery.config.refuse_outside,
                                         session_id=self.session_id, identity=identity):
            out.append(Log(level, f"session {self.session_id}: {event.message}"))
            out.append(Audit(event))
        refusing = self.discovery.config.refuse_outside
        out.append(SteerBrokers(learned.steer, learned.outside if refusing else (), learned.names))
        return None

    def _send(self, frames: list[bytes], out: list[Command]) -> None:
        if frames:
            data_out = frames[0] if len(frames) == 1 else b"".join(frames)
            self.bytes_to_client += len(data_out)
            out.append(SendToClient(data_out))
        if self._close_when_answered is not None and not self._in_flight and self._streaming is None:
            self._close(self._close_when_answered, out=out, now=self._last_now, level="warning",
                        delay_s=FAILED_AUTHENTICATION_DELAY_S)

    def _operation(
        self, pending: InFlight, now: float, response_bytes: int | None, error_code: int | None,
        outcome: str, response: codec.ResponseFacts | None = None,
    ) -> Operation | RecordedOperation:
        """The audit's record of a request: its operations row, with the records a recording rule excerpts
        (the request's for Produce, the delivered response's for Fetch) when there are any."""
        operation = self._operation_row(pending, now, response_bytes, error_code, outcome, response)
        sources = pending.verdict.excerpt_sources() if pending.verdict is not None else ()
        if sources:
            return RecordedOperation(operation, "produce" if pending.header.api_key == apis.PRODUCE else "fetch",
                                     sources)
        return operation

    def _operation_row(
        self, pending: InFlight, now: float, response_bytes: int | None, error_code: int | None,
        outcome: str, response: codec.ResponseFacts | None = None,
    ) -> Operation:
        header, facts, verdict = pending.header, pending.facts, pending.verdict
        named = facts.topics if response is None else codec.merged_topics(facts.topics, response.topics)
        topics = _topics_json(named) if named else None
        records, record_bytes = facts.records, facts.record_bytes
        if response is not None and response.records is not None:
            records, record_bytes = response.records, response.record_bytes
        return Operation(
            session_id=self.session_id,
            at=pending.at,
            api_key=header.api_key,
            api_name=apis.api_name(header.api_key),
            api_version=header.api_version,
            correlation_id=header.correlation_id,
            client_id=header.client_id,
            topics=topics,
            group_id=facts.group,
            records=records,
            record_bytes=record_bytes,
            request_bytes=pending.request_bytes,
            response_bytes=response_bytes,
            error_code=error_code,
            latency_ms=None if response_bytes is None else round((now - pending.at) * 1000, 3),
            outcome=outcome,
            decision=None if verdict is None or not verdict.checks else verdict.outcome,
            checks=None if verdict is None or not verdict.checks else _checks_json(verdict.checks),
            masked=pending.masked,
        )
