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
