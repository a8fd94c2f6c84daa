"""The proxy's only module with sockets: accept steered connections, open upstream, carry out commands.

Each accepted connection is looked up in the kernel (`original_dst`); one the
kernel did not steer, or whose workload is no longer enrolled, is closed at
once and audited. Otherwise the shell connects to the original broker address
(the appliance's own cgroup is exempt from steering, so this connect is never
redirected) and feeds the session every byte and closure as events, carrying
out the commands it returns. Flow control: when one side's socket buffer
fills, reading from the other side pauses.

`UpstreamPool` keeps a few broker connections per broker address open and
already authenticated, so a new session starts relaying without its own SASL
exchange.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Callable

from kio.serial.errors import SerialError

from appliance.audit.records import Event, SessionOpened
from appliance.broker.credentials import UpstreamCredentials
from appliance.identity import process
from appliance.identity.enrollment import Enrollment
from appliance.policy.enforce import Enforcer
from appliance.policy.model import Policy, Principal
from appliance.proxy import events as ev
from appliance.proxy.commands import Audit, CloseConnection, Log, SendToClient, SendToUpstream
from appliance.kafka.framing import FrameError, FrameSplitter
from appliance.proxy.original_dst import Lookup, OriginalDestination
from appliance.proxy.session import Session
from appliance.proxy.upstream_auth import UpstreamAuthenticator, UpstreamAuthError

log = logging.getLogger("appliance.proxy")
# A pooled connection is handed out only while younger than this, well inside
# the broker's connections.max.idle.ms (10 minutes by default), so a session is
# not given one the broker is closing at that moment.
_POOL_MAX_IDLE_S = 60.0
_POOL_RETRY_AFTER_S = 10.0
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


class _Connection:
    """Both sockets of one proxied connection and the session between them."""

    def __init__(self, server: ProxyServer, client: asyncio.Transport, origin: OriginalDestination,
                 enrollment: Enrollment, command: str, now: float) -> None:
        self.server = server
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.origin = origin
        enforcer = Enforcer(Principal(enrollment.identity, frozenset(enrollment.groups)), server.policy)
        self.session = Session(uuid.uuid4().hex, server.credentials, enforcer, max_frame_bytes=server.max_frame_bytes,
                               now=now)
        self.info = LiveSession(
            self.session.session_id, enrollment.identity, origin.enrolled_cgroup_id, origin.tgid,
            command, origin.client_address, origin.broker_address, now,
        )

    def dispatch(self, event: ev.Event) -> None:
        for command in self.session.handle(event, time.time()):
            match command:
                case SendToUpstream(data):
                    self.upstream.write(data)
                case SendToClient(data):
                    self.client.write(data)
                case Audit(record):
                    self.server.audit(record)
                case Log(level, message):
                    log.log(_LOG_LEVELS[level], "%s", message)
                case CloseConnection():
                    self.close()

    def close(self) -> None:
        self.server.live.pop(self.session.session_id, None)
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    async def connect_upstream(self) -> None:
        address = (self.origin.broker_host, self.origin.broker_port)
        pool = self.server.pool
        parked = pool.take(address)
        pool.refill(address)
        if parked is not None:
            if self.session.closed:
                parked.close()
                return
            self.upstream = parked
            parked.set_protocol(_UpstreamProtocol(self))
            self.dispatch(ev.UpstreamConnected(authenticated=True))
            self.client.resume_reading()
            return
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: _UpstreamProtocol(self), self.origin.broker_host, self.origin.broker_port)
        except OSError as e:
            self.server.upstream_failed(address)
            self.dispatch(ev.UpstreamClosed(f"cannot reach broker {self.origin.broker_address}: {e.strerror or e}"))
            return
        if self.session.closed:
            transport.close()
            return
        self.upstream = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.dispatch(ev.UpstreamConnected())
        self.client.resume_reading()


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.conn: _Connection | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.conn = self.server.accept(transport)
        if self.conn is not None:
            transport.pause_reading()  # until upstream is open
            asyncio.get_running_loop().create_task(self.conn.connect_upstream())

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.dispatch(ev.ClientData(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.dispatch(ev.ClientClosed(f"client closed the connection{f': {exc}' if exc else ''}"))
            self.conn.close()

    def pause_writing(self) -> None:
        if self.conn is not None and self.conn.upstream is not None:
            self.conn.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.conn is not None and self.conn.upstream is not None:
            self.conn.upstream.resume_reading()


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.dispatch(ev.UpstreamData(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.dispatch(ev.UpstreamClosed(f"broker closed the connection{f': {exc}' if exc else ''}"))
        self.conn.close()

    def pause_writing(self) -> None:
        self.conn.client.pause_reading()

    def resume_writing(self) -> None:
        self.conn.client.resume_reading()


class _Parked(asyncio.Protocol):
    """A pooled broker connection: authenticates, then waits, idle, to be handed to a session."""

    def __init__(self, pool: UpstreamPool, address: tuple[str, int]) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.auth = UpstreamAuthenticator(pool.credentials)
        self.frames = FrameSplitter(pool.max_frame_bytes)
        self.ready = False
        self.ready_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.auth.start())

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
                self.ready = True
                self.ready_at = time.monotonic()
                self.pool.park(self)

    def usable(self, now: float) -> bool:
        """Open, and young enough that the broker will not end it soon after a session takes it."""
        age = now - self.ready_at
        lifetime = self.auth.session_lifetime_s
        return (not self.transport.is_closing() and age < _POOL_MAX_IDLE_S
                and (lifetime is None or age < lifetime / 2))

    def _failed(self, reason) -> None:
        log.error("pooled connection to %s:%d: upstream authentication failed: %s; no pooled connections to it "
                  "for %d s", *self.address, reason, _POOL_RETRY_AFTER_S)
        self.pool.failed(self.address)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)


class UpstreamPool:
    """Up to `size` authenticated, idle broker connections per broker address that workloads use.

    A session takes one instead of connecting and authenticating itself; each
    take (or miss) starts opening a replacement. A connection the broker closes
    while it waits (idle timeout, broker restart) leaves the pool, and one that
    has waited a minute, or half the SASL session lifetime the broker granted,
    is closed instead of handed out. After the broker refuses the credentials,
    the pool opens no connections to that address for 10 seconds.
    """

    def __init__(self, credentials: UpstreamCredentials, max_frame_bytes: int, size: int) -> None:
        self.credentials = credentials
        self.max_frame_bytes = max_frame_bytes
        self.size = size
        self._ready: dict[tuple[str, int], deque[_Parked]] = {}
        self._opening: dict[tuple[str, int], int] = {}
        self._failed_at: dict[tuple[str, int], float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    def take(self, address: tuple[str, int]) -> asyncio.Transport | None:
        ready = self._ready.get(address)
        now = time.monotonic()
        while ready:
            parked = ready.popleft()
            if parked.usable(now):
                return parked.transport
            parked.transport.close()
        return None

    def refill(self, address: tuple[str, int]) -> None:
        if self._closed or time.monotonic() - self._failed_at.get(address, -_POOL_RETRY_AFTER_S) < _POOL_RETRY_AFTER_S:
            return
        missing = self.size - len(self._ready.get(address, ())) - self._opening.get(address, 0)
        for _ in range(max(0, missing)):
            self._opening[address] = self._opening.get(address, 0) + 1
            task = asyncio.get_running_loop().create_task(self._open(address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, address: tuple[str, int]) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: _Parked(self, address), *address)
        except Exception as e:  # noqa: BLE001 - whatever failed, this attempt no longer counts as opening
            self._opening[address] -= 1
            log.debug("pooled connection to %s:%d not opened: %s", *address, e)

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


class ProxyServer:
    def __init__(
        self, *, hosts: tuple[str, ...], port: int, lookup: Lookup,
        identity_of: Callable[[int], Enrollment | None], credentials: UpstreamCredentials,
        policy: Callable[[], Policy], audit: Callable, max_frame_bytes: int, upstream_pool: int = 0,
        upstream_failed: Callable[[tuple[str, int]], None] = lambda address: None,
    ) -> None:
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
        self.pool = UpstreamPool(credentials, max_frame_bytes, upstream_pool)
        self.live: dict[str, _Connection] = {}
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host in self.hosts:
            self._servers.append(await loop.create_server(
                lambda: _ClientProtocol(self), host, self.port, reuse_address=True, backlog=1024))

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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        who = process.describe(origin.tgid, origin.cgroup_id, origin.comm, now)
        conn = _Connection(self, transport, origin, enrollment, who.command, now)
        self.audit(SessionOpened(
            session_id=conn.session.session_id, started_at=now, identity=enrollment.identity,
            groups=enrollment.groups, cgroup_id=origin.cgroup_id, cgroup_path=who.cgroup_path,
            enrolled_cgroup_id=origin.enrolled_cgroup_id, pid=origin.tgid, uid=origin.uid, gid=origin.gid,
            command=who.command, client_address=origin.client_address, broker_address=origin.broker_address,
        ))
        log.info("session %s: %s (pid %d, %s) -> %s", conn.session.session_id, enrollment.identity,
                 origin.tgid, who.command[:60], origin.broker_address)
        self.live[conn.session.session_id] = conn
        return conn

    def _refuse(self, transport: asyncio.Transport, now: float, message: str, **fields) -> None:
        log.warning("%s", message)
        self.audit(Event(at=now, kind="refused-session", message=message, **fields))
        transport.abort()

    def revoke(self, enrolled_cgroup_id: int, reason: str) -> int:
        """Close every live session of a workload; returns how many."""
        doomed = [c for c in self.live.values() if c.origin.enrolled_cgroup_id == enrolled_cgroup_id]
        for conn in doomed:
            conn.dispatch(ev.Revoked(reason))
        return len(doomed)

    def sessions(self) -> list[LiveSession]:
        return [c.info for c in self.live.values()]

    async def stop(self, reason: str = "appliance stopping") -> None:
        self.pool.close()
        for server in self._servers:
            server.close()
        for conn in list(self.live.values()):
            conn.dispatch(ev.Revoked(reason))
        for server in self._servers:
            await server.wait_closed()
