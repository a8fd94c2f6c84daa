"""Budgets and deadlines as the shell asks them, with a fake clock: no sockets, no sleeps."""

from appliance.proxy.limits import Clock, Limits, deadline_passed, may_read_client

MiB = 1 << 20
LIMITS = Limits(session_buffer_bytes=16 * MiB, buffer_budget_bytes=64 * MiB, connect_timeout_s=10,
                sasl_timeout_s=10, idle_timeout_s=600, request_timeout_s=360, frame_timeout_s=30)


def test_a_session_over_its_own_budget_is_not_read():
    assert may_read_client(LIMITS, 16 * MiB, 16 * MiB, 1)
    assert not may_read_client(LIMITS, 16 * MiB + 1, 16 * MiB + 1, 1)


def test_over_the_global_budget_only_sessions_above_their_fair_share_wait():
    # 100 sessions share 64 MiB: a fair share is 655 KiB.
    assert may_read_client(LIMITS, 0, 65 * MiB, 100)
    assert may_read_client(LIMITS, 600 << 10, 65 * MiB, 100)
    assert not may_read_client(LIMITS, 1 * MiB, 65 * MiB, 100)
    assert may_read_client(LIMITS, 1 * MiB, 64 * MiB, 100)  # at the budget, not over it


def deadline(clock, now, *, upstream_open=True, relaying=True, oldest=None, held=0):
    return deadline_passed(LIMITS, clock, now, upstream_open=upstream_open, relaying=relaying,
                           oldest_request_at=oldest, held=held, broker="127.0.0.1:9092")


def test_connect_deadline_names_the_broker_and_the_time():
    clock = Clock(1000.0)
    assert deadline(clock, 1010.0, upstream_open=False) is None
    assert deadline(clock, 1010.5, upstream_open=False) == (
        "connect deadline: the broker at 127.0.0.1:9092 did not accept the connection within 10 s (connect_timeout_s)")


def test_sasl_deadline_counts_from_the_upstream_connect():
    clock = Clock(1000.0)
    clock.upstream_connected_at = 1005.0
    assert deadline(clock, 1014.0, relaying=False) is None
    assert deadline(clock, 1015.5, relaying=False).startswith("SASL deadline: the appliance's authentication")


def test_request_deadline_reads_the_oldest_request_in_flight():
    clock = Clock(1000.0)
    clock.saw(1001.0, 0, 1, 0)
    assert deadline(clock, 1300.0, oldest=1001.0) is None
    reason = deadline(clock, 1400.0, oldest=1001.0)
    assert reason.startswith("request deadline: the broker at 127.0.0.1:9092 has not answered a request sent 399 s ago")


def test_a_partial_frame_that_never_completes_passes_the_frame_deadline_even_while_bytes_trickle():
    clock = Clock(1000.0)
    clock.saw(1001.0, 100, 1, 0)  # the first request, and part of the next
    for t in range(1002, 1032):  # one byte a second: active, never a whole frame
        clock.saw(float(t), 100 + t - 1001, 1, 0)
        assert deadline(clock, float(t), held=100 + t - 1001) is None
    assert deadline(clock, 1032.0, held=131).startswith("frame deadline: 131 bytes of an unfinished frame held")


def test_whole_frames_keep_the_frame_deadline_away_even_when_reads_never_end_on_a_boundary():
    clock = Clock(1000.0)
    for i in range(1, 100):
        clock.saw(1000.0 + i, 1000, i, 0)  # every read completes one request and starts the next
    assert deadline(clock, 1100.0, held=1000) is None


def test_idle_deadline_only_when_nothing_is_in_flight_or_held():
    clock = Clock(1000.0)
    clock.saw(1001.0, 0, 1, 10)
    assert deadline(clock, 1601.0) is None
    assert deadline(clock, 1602.0, oldest=1599.0) is None  # a request is waiting: not idle
    assert deadline(clock, 1602.0) == "idle deadline: no request for 601 s (idle_timeout_s 600 s)"
