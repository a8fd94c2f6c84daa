"""The console's server-side session table: open, valid for its person until its time, revoked, bounded."""

from __future__ import annotations

import itertools

from appliance.console.sessions import SessionTable


def counter():
    numbers = itertools.count()
    return lambda n: next(numbers).to_bytes(n, "big")


def test_a_session_is_valid_for_its_person_until_its_time_or_until_revoked():
    table, randomness = SessionTable(), counter()
    sid = table.open("ada", until=200.0, now=100.0, randomness=randomness)
    assert table.valid(sid, "ada", 150.0)
    assert not table.valid(sid, "grace", 150.0)  # another person's cookie cannot carry ada's id
    assert not table.valid(sid, "ada", 200.0) and len(table) == 0  # ended, and forgotten
    sid = table.open("ada", until=300.0, now=100.0, randomness=randomness)
    assert table.revoke(sid) and not table.valid(sid, "ada", 150.0)
    assert not table.revoke(sid)


def test_ids_from_a_cookie_that_are_not_open_sessions_are_not_valid():
    table = SessionTable()
    table.open("ada", until=200.0, now=100.0, randomness=counter())
    for sid in (None, "", 7, ["x"], {"a": 1}, "not-an-open-session"):
        assert not table.valid(sid, "ada", 150.0)
        assert not table.revoke(sid)


def test_the_table_is_bounded_forgetting_ended_sessions_then_the_one_ending_soonest():
    table, randomness = SessionTable(max_sessions=3), counter()
    ended = table.open("a", until=110.0, now=100.0, randomness=randomness)
    soonest = table.open("b", until=500.0, now=100.0, randomness=randomness)
    later = table.open("c", until=900.0, now=100.0, randomness=randomness)
    fourth = table.open("d", until=800.0, now=200.0, randomness=randomness)  # the ended one makes room
    assert len(table) == 3 and not table.valid(ended, "a", 105.0)
    fifth = table.open("e", until=700.0, now=200.0, randomness=randomness)  # full: the soonest-ending goes
    assert len(table) == 3 and not table.valid(soonest, "b", 300.0)
    assert all(table.valid(s, n, 300.0) for s, n in ((later, "c"), (fourth, "d"), (fifth, "e")))
