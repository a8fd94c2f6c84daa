"""Process-wide settings the serving process applies before it starts the event loop."""

import ctypes
import logging

from appliance import service


def test_the_allocator_accepts_the_large_buffer_settings(caplog):
    with caplog.at_level(logging.WARNING, logger="appliance"):
        service._keep_large_buffers_warm()
    assert not caplog.records
    # A 1 MiB buffer now comes from the heap, below the program break; by
    # default glibc would mmap it, far above.
    libc = ctypes.CDLL(None)
    libc.sbrk.restype = ctypes.c_void_p
    libc.malloc.restype = ctypes.c_void_p
    block = libc.malloc(1 << 20)
    try:
        assert block < libc.sbrk(0)
    finally:
        libc.free(ctypes.c_void_p(block))


def test_the_open_file_limit_is_raised_to_the_hard_limit_and_caps_sessions():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        assert service.raise_fd_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        # 1024 open files hold (1024 - 128 - 4) // 2 sessions, not 1024
        assert service._sessions_the_fd_limit_allows(1024, 4) == (min(1024, hard) - 128 - 4) // 2
        assert service._sessions_the_fd_limit_allows(10, 4) == 10
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_unclean_stop_is_recorded_at_the_next_start_and_its_sessions_closed(tmp_path):
    import json

    from appliance.audit import store
    from appliance.audit.records import SessionOpened
    from appliance.audit.writer import AuditWriter
    from appliance.config import parse_config

    config = parse_config({"state_dir": str(tmp_path)})
    db = store.open_db(config.audit_db)
    store.write_batch(db, [SessionOpened("s1", 100.0, "orders", (), 1, "/o", 1, 7, 0, 0, "kcat", "a", "b")])
    config.run_marker.write_text(json.dumps({"pid": 4242, "started_at": 90.0}))  # a run killed with -9

    app = service.Appliance(config)
    previous = app._claim_run_marker()
    assert previous == {"pid": 4242, "started_at": 90.0}
    assert json.loads(config.run_marker.read_text())["pid"] != 4242
    closed = app._close_orphan_sessions(previous)
    app.writer = AuditWriter(config.audit_db, flush_ms=10)
    app._record_unclean_stop(previous, closed)
    app.writer.close()
    (event,) = store.query_events(db, kind="unclean-stop")
    assert event["pid"] == 4242 and json.loads(event["detail"])["sessions_closed"] == 1
    (session,) = store.query_sessions(db)
    assert session["ended_at"] == 100.0 and session["close_reason"].startswith("appliance stopped uncleanly (pid 4242")
    assert service.Appliance(config)._claim_run_marker() is not None  # still there: this run did not stop either


class _FailingWriter:
    def __init__(self) -> None:
        self.failing, self.failing_since, self.lost, self.events = None, None, 0, []

    def submit(self, record) -> bool:
        self.events.append(record)
        return True


def test_a_failing_audit_is_said_loudly_once_then_reminded_and_its_recovery_noted(tmp_path, caplog):
    from appliance.config import parse_config

    for mode, consequence in (("refuse", "new requests are refused with KAFKA_STORAGE_ERROR (56)"),
                              ("forward", "requests are forwarded without audit records (audit_failure: forward)")):
        app = service.Appliance(parse_config({"state_dir": str(tmp_path), "audit_failure": mode}))
        app.writer = _FailingWriter()
        app.writer.failing, app.writer.failing_since = "write error on /a/audit.db: database or disk is full", 1.0
        with caplog.at_level(logging.CRITICAL, logger="appliance"):
            caplog.clear()
            app._watch_audit()
            app._watch_audit()  # the same failure: no second event
        (event,) = app.writer.events
        assert event.kind == "audit-failing" and consequence in event.message and "disk is full" in event.message
        assert [r.levelname for r in caplog.records] == ["CRITICAL"] and consequence in caplog.records[0].getMessage()
        app._audit_failing_reminded -= 11  # ten seconds on: reminded
        with caplog.at_level(logging.CRITICAL, logger="appliance"):
            caplog.clear()
            app._watch_audit()
        assert "AUDIT STILL FAILING" in caplog.records[0].getMessage()
        app.writer.failing = None
        with caplog.at_level(logging.WARNING, logger="appliance"):
            caplog.clear()
            app._watch_audit()
        assert "audit writing again" in caplog.records[0].getMessage()


def test_a_second_serve_on_the_same_audit_refuses_to_start(tmp_path):
    import json
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pytest

    from appliance.config import parse_config

    config = parse_config({"state_dir": str(tmp_path)})
    # A live process whose command line reads like a serving appliance.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "appliance", "serve"])
    while not Path(f"/proc/{other.pid}/cmdline").read_bytes():  # empty for a moment while it execs
        time.sleep(0.01)
    try:
        config.run_marker.write_text(json.dumps({"pid": other.pid, "started_at": 1.0}))
        with pytest.raises(service.AlreadyServing, match=f"another `appliance serve` \\(pid {other.pid}\\) is running"):
            service.Appliance(config)._claim_run_marker()
    finally:
        other.kill()
        other.wait()
    assert service.Appliance(config)._claim_run_marker()["pid"] == other.pid  # gone now: an unclean stop


def test_workload_tls_starts_beside_brokers_given_by_name_and_names_them_in_their_addresses_certificates(tmp_path):
    from appliance.config import BrokerAddress, parse_config

    config = parse_config({"state_dir": str(tmp_path),
                           "brokers": ["10.0.0.5:9092", "kafka-bootstrap.example.com:9092"]})
    app = service.Appliance(config)
    workload_tls = app._workload_tls()  # a broker given by name has no address to certify before it resolves
    app.names.resolved(config.broker_names[0], ["10.0.0.7"])
    workload_tls.context_for(BrokerAddress("10.0.0.7", 9092), 0.0)
    issued = workload_tls._leaves[BrokerAddress("10.0.0.7", 9092)]
    assert issued.names == ("10.0.0.7", "kafka-bootstrap.example.com")
