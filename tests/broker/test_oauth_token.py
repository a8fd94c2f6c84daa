"""When the appliance refreshes its own token, and what new connections get meanwhile (pure: time is an argument)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.broker.oauth_token import (
    BearerToken,
    RefreshSchedule,
    TokenResponseError,
    TokenUnavailable,
    error_response_text,
    parse_token_response,
)

ENDPOINT = "http://idp/token"


def answer(**fields) -> bytes:
    return json.dumps({"access_token": "eyJ.abc-_~+/.sig==", "token_type": "Bearer", "expires_in": 300,
                       **fields}).encode()


def test_a_good_answer_gives_the_token_and_its_lifetime():
    token = parse_token_response(answer(), ENDPOINT, 1000.0)
    assert token == BearerToken("eyJ.abc-_~+/.sig==", 1000.0, 1300.0)
    assert "eyJ" not in repr(token)
    assert parse_token_response(answer(token_type="bearer", expires_in="60"), ENDPOINT, 0).expires_at == 60


@pytest.mark.parametrize("body, problem", [
    (b"<html>", "not JSON"),
    (b"[1]", "not a JSON object"),
    (answer(access_token=""), "no 'access_token'"),
    (answer(access_token=7), "no 'access_token'"),
    (answer(access_token="a\x01b"), "characters a bearer token may not"),
    (answer(access_token="a b"), "characters a bearer token may not"),
    (answer(access_token="a" * 70000), "more than 65536"),
    (answer(token_type="mac"), "token_type is 'mac', not 'Bearer'"),
    (answer(token_type=None), "token_type is 'None'"),
    (answer(expires_in=None), "expires_in is 'None'"),
    (answer(expires_in=0), "expires_in is '0'"),
    (answer(expires_in=True), "expires_in is 'True'"),
    (answer(expires_in=10**9), "at most a week"),
])
def test_an_unusable_answer_names_the_endpoint_and_the_fault(body, problem):
    with pytest.raises(TokenResponseError) as e:
        parse_token_response(body, ENDPOINT, 0)
    assert str(e.value).startswith(f"token endpoint {ENDPOINT}: ") and problem in str(e.value)


def test_an_error_answer_reads_as_one_safe_line():
    assert error_response_text(b'{"error":"invalid_client","error_description":"Invalid client credentials"}') \
        == "invalid_client (Invalid client credentials)"
    assert error_response_text(b'{"error":"x\\u001b[31m"}') == "x?[31m"
    assert error_response_text(b"<html>") == ""


def test_first_fetch_is_due_at_once_and_nothing_is_held_until_then():
    s = RefreshSchedule()
    assert s.due(0.0)
    assert s.current(0.0) == TokenUnavailable("the appliance has not obtained its first token from the provider yet")


def test_refresh_is_due_at_eighty_percent_of_the_lifetime():
    s = RefreshSchedule()
    s.fetched(BearerToken("t", 1000.0, 1300.0), 1000.0)
    assert not s.due(1239.9) and s.due(1240.0)
    assert s.current(1239.0) == BearerToken("t", 1000.0, 1300.0)


def test_a_failed_refresh_keeps_the_valid_token_and_backs_off():
    s = RefreshSchedule()
    token = BearerToken("t", 1000.0, 1300.0)
    s.fetched(token, 1000.0)
    now = 1240.0
    waits = []
    for _ in range(5):
        s.failed("token endpoint http://idp/token answered HTTP 503", now)
        waits.append(s.next_fetch_at - now)
        now = s.next_fetch_at
        assert s.current(now) is token  # still valid: sessions never see the failure
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert s.failures == 5


def test_backoff_is_capped_and_a_last_retry_comes_before_the_held_token_runs_out():
    s = RefreshSchedule()
    s.fetched(BearerToken("t", 0.0, 100.0), 0.0)
    now, times = 80.0, []
    for _ in range(6):
        s.failed("down", now)
        now = s.next_fetch_at
        times.append(now)
    # 81, 83, 87, then 95 would leave no retry while the token is usable (until 95): 94 instead,
    # one more at 95, and past expiry the backoff goes on (95 + 32).
    assert times == [81.0, 83.0, 87.0, 94.0, 95.0, 127.0]
    empty = RefreshSchedule()
    for _ in range(12):
        empty.failed("down", 0.0)
    assert empty.next_fetch_at == 60.0


def test_once_the_token_has_run_out_connections_get_the_provider_s_error():
    s = RefreshSchedule()
    s.fetched(BearerToken("t", 0.0, 100.0), 0.0)
    s.failed("token endpoint http://idp/token answered HTTP 401: invalid_client", 80.0)
    got = s.current(96.0)  # inside the 5 s margin before expiry
    assert isinstance(got, TokenUnavailable)
    assert "ran out" in got.reason and "answered HTTP 401: invalid_client" in got.reason
    fresh = RefreshSchedule()
    fresh.failed("token endpoint http://idp/token: unreachable (Connection refused)", 0.0)
    assert fresh.current(0.0) == TokenUnavailable("token endpoint http://idp/token: unreachable (Connection refused)")


def test_success_after_failures_resets_the_backoff_and_clears_the_error():
    s = RefreshSchedule()
    s.failed("down", 0.0)
    s.failed("down", 1.0)
    s.fetched(BearerToken("t2", 3.0, 303.0), 3.0)
    assert s.failures == 0 and s.last_error is None and s.next_fetch_at == 243.0


def test_a_very_short_token_does_not_make_the_refresh_loop_spin():
    s = RefreshSchedule()
    s.fetched(BearerToken("t", 10.0, 10.5), 10.0)
    assert s.next_fetch_at == 11.0


@given(lifetime=st.floats(1, 86400), failures=st.integers(0, 40), start=st.floats(0, 1e9))
def test_the_next_fetch_is_never_in_the_past_and_a_valid_token_is_always_handed_out(lifetime, failures, start):
    s = RefreshSchedule()
    token = BearerToken("t", start, start + lifetime)
    s.fetched(token, start)
    now = s.next_fetch_at
    for _ in range(failures):
        s.failed("down", now)
        assert s.next_fetch_at > now
        now = s.next_fetch_at
        if token.valid_at(now):
            assert s.current(now) is token
