"""The frames that stopped or confused `appliance serve` at 753e6e2, sent raw from an enrolled cgroup.

Each goes to the broker's address from a workload whose identity no rule
names; the kernel steers it to the running appliance. Serve must survive
every one, each hostile session must end answered or closed with an audited
reason that names what was wrong, and a producer in another session must go
on producing throughout.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.integration.conftest import BROKER4, CLIENTS, PY, audit, eventually

pytestmark = pytest.mark.integration  # the real appliance, broker and cgroups

HOSTILE = str(Path(__file__).resolve().parent / "clients" / "hostile.py")

# mode -> what the workload sees, and the close reason the audit must show (None: closed by the client).
CASES = {
    "killer": ([], True, "undecodable client request: Metadata v12 request does not decode: topics: array of "
                         "4294967293 elements needs at least 77309411274 bytes, 4 remain"),
    "sasl1": ([58], True, "SASL authentication failed: SaslAuthenticate arrived before a SaslHandshake"),
    "sasl2": ([58], True, "SASL authentication failed: SaslAuthenticate arrived before a SaslHandshake"),
    "addpart4": ([35, 0], False, None),
    "commit10": ([35, 0], False, None),
    "above": ([], True, "Produce v99 (api key 0) is offered at v3-v12 only, and is not a version the proxy can "
                        "answer; it was refused, not forwarded"),
    "duplicate": ([], True, "Metadata v12 request (correlation id 9) reuses the correlation id of a request "
                            "still in flight"),
}


def test_hostile_frames_close_only_their_session_and_serve_survives(appliance, config_path, enroll, direct, sasl_args):
    topic = f"steady-{secrets.token_hex(3)}"
    direct.client("confluent.py", BROKER4, topic, "--create", *sasl_args)
    steady = enroll("steady")
    stranger = enroll("stranger")  # an identity no rule names
    producer = steady.popen([PY, str(CLIENTS / "confluent.py"), BROKER4, topic, "--produce", "3000"])
    seen = {}
    for mode in [*CASES, "findcoord0"]:
        seen[mode] = stranger.client(HOSTILE, mode, "127.0.0.1", "39092", timeout=30)
        assert appliance.proc.poll() is None, f"serve died on {mode}:\n{appliance.log.read_text()[-3000:]}"
    for mode, (errors, closed, _) in CASES.items():
        assert [a["error_code"] for a in seen[mode]["answers"]] == errors, (mode, seen[mode])
        assert seen[mode]["closed"] == closed, (mode, seen[mode])
    # FindCoordinator v0 is answered (by the broker or the policy), or closed with a reason naming it.
    find = seen["findcoord0"]
    assert find["answers"] or find["closed"], find

    out, _ = producer.communicate(timeout=90)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["produced"] == 3000 and summary["errors"] == []
    after = stranger.client(HOSTILE, "metadata", "127.0.0.1", "39092")
    assert [a["error_code"] for a in after["answers"]] == [0] and not after["closed"]

    def stranger_sessions():
        rows = audit(config_path, "sessions", "--identity", "stranger")
        return rows if len([r for r in rows if r["close_reason"]]) >= len(CASES) + 2 else None
    reasons = [r["close_reason"] for r in eventually(stranger_sessions, timeout=15, message="hostile sessions audited")]
    for mode, (_, _, reason) in CASES.items():
        if reason is not None:
            assert any(r and r.startswith(reason) for r in reasons), (mode, reason, reasons)
    if find["closed"] and not find["answers"]:
        assert any(r and "FindCoordinator v0" in r for r in reasons), reasons
    ops = audit(config_path, "operations", "--identity", "stranger")
    refused = {(o["api_name"], o["api_version"]): o for o in ops if o["error_code"] == 35}
    assert refused[("AddPartitionsToTxn", 4)]["outcome"] == "refused"
    assert refused[("OffsetCommit", 10)]["outcome"] == "refused"
    assert all(r is None or "malformed" not in r for r in
               (s["close_reason"] for s in audit(config_path, "sessions", "--identity", "steady")))
