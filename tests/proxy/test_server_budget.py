"""The shell's books: pausing a workload's socket for the budget, and the sweep's deadlines (no sockets)."""

from appliance.audit.records import SessionClosed
from appliance.identity.enrollment import Enrollment
from appliance.proxy import events as ev
from appliance.proxy.limits import Clock, Limits
from appliance.proxy.original_dst import OriginalDestination
from appliance.proxy.server import ProxyServer, _Connection
from tests.proxy.test_session import ALLOW_ALL, PLAIN

KiB = 1024
LIMITS = Limits(session_buffer_bytes=64 * KiB, buffer_budget_bytes=128 * KiB, connect_timeout_s=10,
                sasl_timeout_s=10, idle_timeout_s=600, request_timeout_s=360, frame_timeout_s=30)


class Transport:
    def __init__(self) -> None:
        self.reading, self.closed, self.written = True, False, []

    def pause_reading(self) -> None:
        assert self.reading, "paused twice: the reasons must be counted, not stacked"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written.append(data)


def server(audited: list) -> ProxyServer:
    return ProxyServer(hosts=(), port=0, lookup=None, identity_of=None, credentials=PLAIN, policy=lambda: ALLOW_ALL,
                       audit=audited.append, max_frame_bytes=1 << 20, limits=LIMITS, max_request_bytes=32 * KiB,
                       max_sessions=10, max_sessions_per_workload=10, release_memory=lambda: None)


def connection(proxy: ProxyServer, n: int) -> _Connection:
    origin = OriginalDestination("127.0.0.1", 9092, "127.0.0.1", 5000 + n, 7, 7, 1, 1, 0, 0, "test")
    conn = _Connection(proxy, Transport(), origin, Enrollment("orders", (), "/o", 7, 0.0), "test", 0.0)
    proxy.live[conn.session.session_id] = conn
    proxy.per_workload[7] = proxy.per_workload.get(7, 0) + 1
    return conn


def test_bytes_held_before_authentication_pause_the_client_until_relaying_takes_them():
    proxy = server([])
    conn = connection(proxy, 1)
    conn.client_reading.pause("connecting")
    conn.upstream = Transport()
    conn.client_reading.resume("connecting")
    conn.dispatch(ev.ClientData(b"\0" * (65 * KiB)))  # held: upstream authentication has not finished
    assert proxy.held_total == 65 * KiB and not conn.client.reading and conn in proxy.paused
    conn.close()
    assert proxy.held_total == 0 and not proxy.paused and proxy.per_workload == {}


def test_over_the_global_budget_the_big_holders_wait_and_the_small_ones_go_on():
    proxy = server([])
    big = [connection(proxy, i) for i in range(3)]
    small = connection(proxy, 9)
    for conn in big + [small]:
        conn.upstream = Transport()
    for conn in big:
        conn.dispatch(ev.ClientData(b"\0" * (50 * KiB)))  # 150 KiB held in all: over the 128 KiB budget
    small.dispatch(ev.ClientData(b"\0" * 100))
    assert [c.client.reading for c in big] == [True, True, False]  # the third read took the total over
    assert small.client.reading
    big[0].close()  # 100 KiB held now: under budget, the paused one is read again
    assert big[2].client.reading and not proxy.paused


def test_the_sweep_ends_sessions_whose_deadline_passed_naming_it():
    audited = []
    proxy = server(audited)
    stuck = connection(proxy, 1)  # the broker never accepted the connect
    proxy.sweep(5.0)
    assert not stuck.gone
    proxy.sweep(11.0)
    assert stuck.gone and stuck.client.closed and not proxy.live
    (closed,) = [r for r in audited if isinstance(r, SessionClosed)]
    assert closed.close_reason.startswith("connect deadline: the broker at 127.0.0.1:9092 did not accept")
    assert proxy.limits_status()["deadline_closes"] == {"connect": 1}


def test_the_audit_gate_is_there_only_when_audit_failure_is_refuse():
    from appliance.policy.enforce import Enforcer
    from appliance.proxy.audit_gate import AuditGate

    forwarding = server([])
    assert isinstance(connection(forwarding, 1).session.enforcer, Enforcer)
    refusing = server([])
    refusing.audit_failing = lambda: None
    assert isinstance(connection(refusing, 1).session.enforcer, AuditGate)


def test_a_partial_frame_waiting_on_a_broker_that_does_not_read_is_not_the_workloads_stall():
    audited = []
    proxy = server(audited)
    conn = connection(proxy, 1)
    conn.upstream = Transport()
    conn.dispatch(ev.UpstreamConnected(authenticated=True))
    conn.dispatch(ev.ClientData(b"\0\0\x10\0" + b"\0" * 100))  # part of a 4 KiB frame
    conn.client_reading.pause("upstream-busy")  # the broker's socket buffer is full
    proxy.sweep(conn.clock.progress_at + 40)
    assert not conn.gone
    conn.client_reading.resume("upstream-busy")
    proxy.sweep(conn.clock.progress_at + 31)
    assert conn.gone and [r.close_reason for r in audited if isinstance(r, SessionClosed)][0].startswith(
        "frame deadline: 104 bytes of an unfinished frame")


class TokenSource:
    """The credential source's side the shell uses: the current token, and requests for a fresh one."""

    def __init__(self, token) -> None:
        self.token, self.refreshes = token, 0

    def current(self, now: float):
        return self.token

    def refresh_now(self) -> None:
        self.refreshes += 1


def test_the_sweep_prompts_a_due_renewal_with_the_current_token_and_asks_for_a_fresh_one_first():
    import time

    from appliance.broker.oauth_token import BearerToken

    t0 = time.time() - 256.0  # the session is handled on the shell's own clock: granted 256 s ago
    held, fresh = BearerToken("held", t0, t0 + 300.0), BearerToken("fresh", t0 + 240.0, t0 + 540.0)
    source = TokenSource(held)
    proxy = ProxyServer(hosts=(), port=0, lookup=None, identity_of=None, credentials=source, policy=lambda: ALLOW_ALL,
                        audit=[].append, max_frame_bytes=1 << 20, limits=LIMITS, max_request_bytes=32 * KiB,
                        max_sessions=10, max_sessions_per_workload=10, release_memory=lambda: None)
    conn = connection(proxy, 1)
    conn.clock = Clock(time.time())  # accepted now: no idle deadline in the way
    conn.upstream = Transport()
    conn.dispatch(ev.UpstreamConnected(authenticated=True, authenticated_at=t0, session_lifetime_s=300.0))
    assert conn.session.upstream_reauthenticate_at == t0 + 255.0
    proxy.sweep(t0 + 254.0)
    assert not conn.upstream.written and source.refreshes == 0
    proxy.sweep(time.time())  # due, but the held token ends with the session: ask for a fresh one, once
    proxy.sweep(time.time())
    assert not conn.upstream.written and source.refreshes == 1
    source.token = fresh
    proxy.sweep(time.time())
    (handshake,) = conn.upstream.written
    assert b"OAUTHBEARER" in handshake and not conn.gone
    proxy.sweep(time.time())  # under way: not prompted again
    assert len(conn.upstream.written) == 1


def test_requests_held_during_a_renewal_pause_the_workload_at_the_budget_rather_than_close_it():
    import time

    from tests.proxy.test_session import metadata

    proxy = server([])
    conn = connection(proxy, 1)
    conn.clock = Clock(time.time())
    conn.upstream = Transport()
    # A pooled connection granted 300 s, 256 s ago: due now.
    conn.dispatch(ev.UpstreamConnected(authenticated=True, authenticated_at=time.time() - 256,
                                       session_lifetime_s=300.0))
    conn.dispatch(ev.ClientData(metadata(correlation_id=5)))  # in flight: the renewal waits for its answer
    proxy.sweep(time.time())
    assert conn.session.upstream_reauthenticate_at is None  # under way
    assert conn.session.max_renewal_held_bytes == LIMITS.session_buffer_bytes + 256 * KiB
    conn.dispatch(ev.ClientData(b"\0" * (65 * KiB)))  # over the 64 KiB session budget, held
    assert not conn.gone and not conn.client.reading and conn in proxy.paused


def test_heap_freed_by_the_sweeps_own_closes_is_handed_back_at_the_next_sweep(monkeypatch):
    """A session the sweep closes is freed after the sweep (its transport's connection_lost), so trimming in
    that same sweep handed nothing back and forgot the drop; the trim comes one sweep later."""
    import time

    from appliance.proxy import server as shell

    monkeypatch.setattr(shell, "_TRIM_AFTER_BYTES", 32 * KiB)
    releases = []
    proxy = server([])
    proxy.release_memory = lambda: releases.append(proxy.held_total)
    conn = connection(proxy, 1)
    conn.upstream = Transport()
    conn.dispatch(ev.ClientData(b"\0" * (65 * KiB)))  # held: upstream authentication has not finished
    assert proxy.held_total == proxy.held_peak == 65 * KiB
    now = time.time() + LIMITS.connect_timeout_s + 1  # past the connect deadline: this sweep closes it
    proxy.sweep(now)
    assert conn.gone and proxy.held_total == 0 and releases == []
    proxy.sweep(now + 1)
    assert releases == [0] and proxy.held_peak == 0
    proxy.sweep(now + 10)  # nothing more let go of: no further trim
    assert releases == [0]
