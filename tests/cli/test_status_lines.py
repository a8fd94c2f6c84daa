"""`appliance status`'s human lines built from the status snapshot (pure)."""

from appliance.cli.serve import _upstream_auth_line


def test_the_upstream_token_line_says_whose_token_until_when_and_the_last_failure():
    healthy = {"mechanism": "OAUTHBEARER", "client_id": "appliance-upstream", "token_valid": True,
               "token_expires_at": 1_800_000_300.0, "next_refresh_in_s": 240.0, "consecutive_failures": 0,
               "last_error": None}
    line = _upstream_auth_line(healthy)
    assert line.startswith("upstream auth: OAUTHBEARER as client 'appliance-upstream', token valid until ")
    assert "next refresh in 240.0 s" in line and "failed" not in line
    failing = dict(healthy, token_valid=False, consecutive_failures=3, last_error="token endpoint answered 401")
    line = _upstream_auth_line(failing)
    assert "NO VALID TOKEN: new broker connections cannot authenticate" in line
    assert "3 failed fetch(es) in a row, last: token endpoint answered 401" in line


def test_the_status_line_shows_the_audit_size_and_the_retention_in_force():
    from appliance.cli.serve import _audit_retention_line
    line = _audit_retention_line({"bytes": {"database": 1_048_576, "wal": 4096},
                                  "retention": {"max_age_days": 90.0, "max_bytes": 21474836480, "interval_s": 300.0,
                                                "pruning": False, "error": None,
                                                "last_prune": {"at": 0.0, "entries": 1_000_000, "first_seq": 1_000_001}}})
    assert line.startswith("audit size: 1,048,576 bytes (+4,096 in the WAL); retention: at most 90 days and "
                           "21,474,836,480 bytes, checked every 300 s; last prune ")
    assert "1,000,000 entries, the chain now starts at chain_seq 1,000,001" in line
    assert _audit_retention_line({"bytes": {}, "retention": {}}).endswith("keep everything (audit_retention not set)")
    assert "RETENTION STOPPED: operations id 5" in _audit_retention_line(
        {"retention": {"max_bytes": 1 << 20, "error": "operations id 5 chain_seq 7: its content does not hash"}})


def test_the_status_line_of_record_excerpts_shows_only_when_something_is_held_or_was_dropped():
    from appliance.cli.serve import _excerpts_line
    from appliance.service import _excerpt_budget

    assert _excerpts_line({}) is None
    assert _excerpts_line({"excerpts": {"held_bytes": 0, "limit_bytes": 67_108_864, "not_kept": 0}}) is None
    assert _excerpts_line({"excerpts": {"held_bytes": 2048, "limit_bytes": 67_108_864, "not_kept": 3}}) == (
        "record excerpts: 2,048 of 67,108,864 bytes of records held for the audit writer; 3 not kept at that bound")
    assert set(_excerpt_budget()) == {"held_bytes", "limit_bytes", "not_kept"}
