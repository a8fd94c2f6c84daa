"""The bounded fuzz run of the normal test suite (a few seconds); `python -m tests.fuzz.long` runs it for hours."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import harness

SEEDS = st.integers(min_value=0, max_value=2**63)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)
@given(SEEDS)
def test_session_survives_every_mutated_conversation(seed):
    result = harness.run_session(seed)
    assert not result.findings, result.findings


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEEDS)
def test_batch_rewriter_returns_bytes_or_refuses(seed):
    result = harness.run_batches(seed)
    assert not result.findings, result.findings


def test_a_fixed_stretch_of_seeds_and_memory_stays_flat():
    # Warm the caches (kio's per-class readers, plans, lru caches), then the same work again must not grow.
    warm = harness.run(range(0, 1500))
    before = harness.rss_kib()
    again = harness.run(range(1500, 4500))
    grown = harness.rss_kib() - before
    assert not warm.findings and not again.findings, (warm.findings + again.findings)[:5]
    assert again.closes == 3000 and again.forwarded > 1000
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB over 3000 sessions"


# Seeds of the long run that once reached the session's error boundary, replayed for good.
# 270684, 661413, 796084: a Produce v10/v12 answer whose node_endpoints (KIP-951) was a null array.
FOUND_BY_THE_LONG_RUN = (270684, 661413, 796084)


def test_the_seeds_the_long_run_found_faults_with_stay_clean():
    for seed in FOUND_BY_THE_LONG_RUN:
        assert not harness.run_session(seed).findings, seed
