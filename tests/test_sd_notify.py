"""sd_notify(3) messages and the watchdog interval (pure), and one datagram through a real socket."""

from __future__ import annotations

import socket

import pytest

from appliance import sd_notify


def test_messages_are_newline_terminated_assignments_in_a_fixed_order():
    assert sd_notify.message(ready=True) == b"READY=1\n"
    assert sd_notify.message(watchdog=True) == b"WATCHDOG=1\n"
    assert sd_notify.message(ready=True, status="serving on port 19190") == b"READY=1\nSTATUS=serving on port 19190\n"
    assert sd_notify.message(stopping=True, mainpid=42) == b"STOPPING=1\nMAINPID=42\n"


def test_a_status_stays_one_line_so_it_cannot_add_an_assignment():
    assert sd_notify.message(status="a\nREADY=1") == b"STATUS=a READY=1\n"


def test_an_empty_message_is_refused():
    with pytest.raises(ValueError):
        sd_notify.message()


def test_the_socket_is_a_path_an_abstract_name_or_nothing():
    assert sd_notify.socket_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert sd_notify.socket_address({"NOTIFY_SOCKET": "@sd-notify-1"}) == b"\0sd-notify-1"
    assert sd_notify.socket_address({}) is None
    assert sd_notify.socket_address({"NOTIFY_SOCKET": ""}) is None
    assert sd_notify.socket_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_the_watchdog_pings_at_half_its_timeout_and_only_from_the_process_it_names():
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "20000000"}, pid=7) == 10.0
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "7"}, pid=7) == 10.0
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "8"}, pid=7) is None
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "0"}, pid=7) is None
    assert sd_notify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid=7) is None
    assert sd_notify.watchdog_interval_s({}, pid=7) is None


def test_a_notifier_sends_one_datagram_and_is_silent_without_a_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        sd_notify.Notifier({"NOTIFY_SOCKET": str(path)}).send(ready=True)
        assert receiver.recv(4096) == b"READY=1\n"
    quiet = sd_notify.Notifier({})
    assert not quiet.enabled
    quiet.send(ready=True)  # nothing to send to, nothing raised


def test_a_send_to_a_socket_that_is_gone_is_logged_not_raised(tmp_path, caplog):
    sd_notify.Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send(watchdog=True)
    assert "sd_notify" in caplog.text
