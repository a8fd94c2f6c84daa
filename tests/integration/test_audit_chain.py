"""The tamper-evident audit of a real appliance: real traffic verifies; the sqlite3 shell's edit is named.

A workload produces and consumes through the proxy; the serving appliance chains every row, signs
checkpoints on its schedule (every 2 s here) and at its stop. `audit verify` passes against the live
database and an exported checkpoint; a copy of the database edited with the sqlite3 shell fails, naming the
row, and one whose tail was cut (chain head moved back, stored checkpoints deleted) fails against the
checkpoint exported before.
"""

from __future__ import annotations

import json
import secrets
import subprocess

import yaml

from tests.integration.conftest import BROKER4, PY, STATE, cli, eventually


def verify(config_path, *args: str) -> tuple[int, dict]:
    result = subprocess.run([PY, "-m", "appliance", "--config", str(config_path), "audit", "verify", "--json", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def checkpoint(config_path) -> dict:
    """The latest signed checkpoint: {"tree_size", "note", "verifier_key"}; tree size 0 before the first."""
    result = cli(config_path, "audit", "checkpoint", "--json", check=False)
    if result.returncode != 0:
        assert "has no checkpoint yet" in result.stderr, result.stderr
        return {"tree_size": 0}
    return json.loads(result.stdout)


def copy_of_the_audit(config_path, tmp_path):
    """A consistent copy of the live database (sqlite3's .backup) and a configuration that reads it."""
    copy = tmp_path / "audit-copy"
    copy.mkdir(parents=True)
    subprocess.run(["sqlite3", str(STATE / "audit.db"), f".backup {copy / 'audit.db'}"], check=True)
    config = yaml.safe_load(config_path.read_text())
    config["audit_dir"] = str(copy)
    path = copy.parent / "copy.yaml"
    path.write_text(yaml.safe_dump(config))
    return copy / "audit.db", path


def sql(db, statement: str) -> str:
    return subprocess.run(["sqlite3", str(db), statement], check=True, capture_output=True, text=True).stdout.strip()


def test_real_traffic_verifies_and_an_edit_or_a_cut_tail_is_caught(appliance, config_path, enroll, tmp_path):
    before = checkpoint(config_path)["tree_size"]
    workload = enroll("orders")
    topic = f"chain-{secrets.token_hex(3)}"
    result = workload.client("confluent.py", BROKER4, topic, "--create", "--produce", "5", "--consume", "5")
    assert result["errors"] == [] and result["consumed"] == 5, result
    latest = eventually(lambda: (lambda c: c if c["tree_size"] > before else None)(checkpoint(config_path)),
                        timeout=15, message="a scheduled checkpoint past the traffic")
    assert latest["note"].splitlines()[1] == str(latest["tree_size"])  # the note's tree size line
    published = tmp_path / "published"
    cli(config_path, "audit", "checkpoint", "--export", str(published))
    (exported,) = published.glob("[0-9]*.txt")
    code, report = verify(config_path, "--checkpoint", str(exported))
    assert code == 0 and report["ok"], report
    assert report["rows"].get("operations", 0) > 0 and all(c["ok"] for c in report["checkpoints"])

    # An operator with root edits one Produce row of a copy in the sqlite3 shell: named, exit 1.
    db, copy_config = copy_of_the_audit(config_path, tmp_path)
    row = sql(db, f"SELECT id FROM operations WHERE api_name = 'Produce' AND topics LIKE '%{topic}%' LIMIT 1")
    sql(db, f"UPDATE operations SET records = records + 100 WHERE id = {row}")
    code, report = verify(copy_config, "--checkpoint", str(exported))
    assert code == 1 and not report["ok"]
    assert report["faults"][0]["table"] == "operations" and str(row) in str(report["faults"][0]["row"]), report

    # A tail cut cleanly (rows, the chain head and the stored checkpoints all made to agree) passes the
    # database's own checks, and fails against the checkpoint published before the cut.
    db, copy_config = copy_of_the_audit(config_path, tmp_path / "second")
    size = int(exported.stem)
    for table in ("operations", "events", "authentications", "gaps", "session_changes"):
        sql(db, f"DELETE FROM {table} WHERE chain_seq > {size - 3}")
    sql(db, f"UPDATE chain_head SET seq = {size - 3}, hash = (SELECT chain_hash FROM (SELECT chain_seq, chain_hash "
            f"FROM operations UNION ALL SELECT chain_seq, chain_hash FROM events UNION ALL SELECT chain_seq, "
            f"chain_hash FROM authentications UNION ALL SELECT chain_seq, chain_hash FROM session_changes) "
            f"WHERE chain_seq = {size - 3})")
    sql(db, "DELETE FROM checkpoints")
    # (Without it, this cut still shows where session rows outlive their cut changes; an attacker who also
    # rewrote those would pass: tests/audit/test_verify.py makes that cut and shows it.)
    code, report = verify(copy_config, "--checkpoint", str(exported))
    assert code == 1 and any("checkpoint" in f["table"] for f in report["faults"]), report


def test_a_clean_stop_signs_a_checkpoint_of_the_final_head(appliance, config_path):
    appliance.stop()
    try:
        latest = checkpoint(config_path)
        code, report = verify(config_path)
        assert code == 0 and report["size"] == latest["tree_size"], (report, latest)
    finally:
        appliance.start()
