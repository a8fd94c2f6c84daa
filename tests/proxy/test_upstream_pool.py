"""Which pooled broker connections the proxy hands out, and when it stops opening them."""

import datetime
import time

from kio.schema.errors import ErrorCode
from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse

from appliance.broker.credentials import UpstreamCredentials
from appliance.proxy.server import UpstreamPool, _Parked
from appliance.proxy.upstream_auth import UpstreamAuthenticator
from tests.kafka.builders import response_frame
from tests.proxy.test_session import handshake_ok

PLAIN = UpstreamCredentials("PLAIN", "appliance", "s3cret")
BROKER = ("127.0.0.1", 39092)


class _Transport:
    """Stands in for the socket side of an asyncio transport: open or closed."""

    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def parked(pool: UpstreamPool, *, age_s: float, lifetime_s: float | None = None) -> _Parked:
    p = _Parked(pool, BROKER)
    p.transport = _Transport()
    p.ready, p.ready_at = True, time.monotonic() - age_s
    p.auth.session_lifetime_s = lifetime_s
    pool._opening[BROKER] = pool._opening.get(BROKER, 0) + 1
    pool.park(p)
    return p


def test_only_connections_the_broker_will_keep_honouring_are_handed_out():
    pool = UpstreamPool(PLAIN, 1 << 20, size=4)
    stale = parked(pool, age_s=90)  # idle for over a minute
    expiring = parked(pool, age_s=31, lifetime_s=60)  # past half its SASL lifetime
    fresh = parked(pool, age_s=1, lifetime_s=60)
    assert pool.take(BROKER) is fresh
    assert stale.transport.closed and expiring.transport.closed
    assert pool.take(BROKER) is None and pool.ready() == {"127.0.0.1:39092": 0}


def test_after_a_refusal_the_pool_opens_nothing_for_that_broker():
    pool = UpstreamPool(PLAIN, 1 << 20, size=2)
    pool.failed(BROKER)
    pool.refill(BROKER)  # outside an event loop: opening a connection here would raise
    assert pool._opening.get(BROKER, 0) == 0


def test_the_broker_granted_session_lifetime_is_read_from_the_last_answer():
    for granted, expected in ((datetime.timedelta(minutes=2), 120.0), (datetime.timedelta(0), None)):
        auth = UpstreamAuthenticator(PLAIN)
        auth.start()
        auth.receive(handshake_ok())
        done = auth.receive(response_frame(SaslAuthenticateResponse(
            error_code=ErrorCode.none, error_message=None, auth_bytes=b"", session_lifetime=granted),
            correlation_id=2, flexible_header=True))
        assert done is None and auth.session_lifetime_s == expected


def test_a_pooled_connection_stuck_in_its_sasl_exchange_is_closed_at_the_sasl_deadline():
    pool = UpstreamPool(PLAIN, 1 << 20, size=2, sasl_timeout_s=10)
    stuck = _Parked(pool, BROKER)
    stuck.transport = _Transport()
    pool.authenticating.add(stuck)
    pool.sweep(stuck.opened_at + 9)
    assert not stuck.transport.closed
    pool.sweep(stuck.opened_at + 11)  # the broker never answered: the slot it held in "opening" frees
    assert stuck.transport.closed and not pool.authenticating


def test_a_refused_pooled_token_asks_the_source_for_a_fresh_one_at_most_once_per_interval():
    from appliance.broker.oauth_token import BearerToken
    from appliance.proxy.upstream_auth import UpstreamAuthError
    from tests.proxy.test_server_budget import TokenSource

    source = TokenSource(BearerToken("t", time.time(), time.time() + 300))
    pool = UpstreamPool(source, 1 << 20, size=2)
    for _ in range(3):
        p = _Parked(pool, BROKER)
        p.transport = _Transport()
        p._failed(UpstreamAuthError("broker refused the appliance's OAUTHBEARER token"))
    assert source.refreshes == 1
    plain = UpstreamPool(PLAIN, 1 << 20, size=2)
    p = _Parked(plain, BROKER)
    p.transport = _Transport()
    p._failed(UpstreamAuthError("broker refused the appliance's PLAIN credentials"))  # nothing to refresh


def test_a_pooled_connection_is_handed_out_with_when_and_for_how_long_it_was_authenticated():
    pool = UpstreamPool(PLAIN, 1 << 20, size=2)
    fresh = parked(pool, age_s=1, lifetime_s=60)
    fresh.authenticated_at = 1234.5
    taken = pool.take(BROKER)
    assert (taken.authenticated_at, taken.auth.session_lifetime_s) == (1234.5, 60)
