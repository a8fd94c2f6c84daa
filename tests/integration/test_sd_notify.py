"""`appliance serve` under systemd's notify protocol, with the test's own datagram socket as NOTIFY_SOCKET,
and `serve --keep-steering` leaving the real programs attached until `appliance detach`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

import pytest
import yaml

from appliance.steering.loader import attached_programs
from tests.integration.fixtures import BROKER4, BROKER6, POLICY, PY

PORT = 39191
BPFFS = "/sys/fs/bpf/appliance-test-notify"
# The suite's appliance, which steers the same brokers, exempts this cgroup by its id
# (tests/integration/fixtures.py): it is kept, never removed.
PROXY_CGROUP = "appliance-test-notify-proxy"


def ours() -> list[dict]:
    return [p for p in attached_programs() if p["bpffs_dir"] == BPFFS]


def connects_to_the_broker(direct) -> bool:
    """A connect from the suite appliance's exempt cgroup: that appliance lets it through, so only this
    module's serve (which exempts just the broker) can refuse it."""
    return direct.client("raw.py", "connect", "127.0.0.1", "39092", timeout=30)["errno"] == 0


@pytest.fixture
def serve_config(tmp_path, broker, config, appliance):
    path = tmp_path / "appliance.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"), "listen_port": PORT,
        "brokers": [BROKER4, BROKER6], "bpffs_dir": BPFFS, "proxy_cgroup": PROXY_CGROUP,
        "exempt_cgroups": [config.embedded_broker.cgroup], "policy_file": str(POLICY),
        "upstream_credentials": str(broker.files.appliance_credentials),
    }))
    yield path
    subprocess.run([PY, "-m", "appliance", "--config", str(path), "detach"], capture_output=True, timeout=60)
    assert ours() == []


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


@contextlib.contextmanager
def _serving(config_path, *args: str, env: dict | None = None):
    """`appliance serve` with its output in a log beside the config; killed if a test leaves it running."""
    log = config_path.with_name("serve.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen([PY, "-m", "appliance", "--config", str(config_path), "serve", *args],
                                env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _messages(sock: socket.socket, until, timeout: float) -> list[bytes]:
    got, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            got.append(sock.recv(4096))
        except socket.timeout:
            break
    return got


def test_ready_comes_once_serve_listens_and_watchdog_pings_follow_at_half_the_timeout(serve_config, notify_socket):
    path, sock = notify_socket
    assert not _listening(PORT)
    with _serving(serve_config, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}) as proc:
        first = _messages(sock, lambda got: bool(got), timeout=60)
        assert first and first[0].startswith(b"READY=1\n"), (first, proc.poll())
        assert b"STATUS=serving on port 39191" in first[0]
        # READY=1 means the listeners are open and steering is attached.
        assert _listening(PORT)
        assert {p["name"] for p in ours()} >= {"sock4_connect", "sock6_connect", "sockops_estab"}
        started = time.monotonic()
        pings = _messages(sock, lambda got: len(got) >= 4, timeout=5)
        assert pings == [b"WATCHDOG=1\n"] * 4, pings
        assert 1.0 <= time.monotonic() - started < 3.5  # every 0.5 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.log.read_text()[-3000:]
        assert b"STOPPING=1\n" in _messages(sock, lambda got: b"STOPPING=1\n" in got, timeout=5)
        assert ours() == []  # without --keep-steering a stop detaches


def test_without_notify_socket_serve_sends_nothing_and_still_serves(serve_config, notify_socket):
    _, sock = notify_socket
    with _serving(serve_config) as proc:
        deadline = time.monotonic() + 60
        # the listeners are bound before steering is attached: ready is the "serving" line, as READY=1 is
        while not (_listening(PORT) and "serving: listener" in proc.log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.log.read_text()[-3000:]
            time.sleep(0.2)
        assert _messages(sock, lambda got: bool(got), timeout=1) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_keep_steering_leaves_the_programs_until_the_next_serve_or_detach(serve_config, notify_socket, direct):
    path, sock = notify_socket
    for _ in range(2):  # the second serve takes the kept set over, as a systemd restart would
        with _serving(serve_config, "--keep-steering", env={"NOTIFY_SOCKET": str(path)}) as proc:
            assert _messages(sock, lambda got: bool(got), timeout=60)[0].startswith(b"READY=1"), proc.poll()
            ids = {p["id"] for p in ours()}
            assert len(ids) >= 5
            detach = subprocess.run([PY, "-m", "appliance", "--config", str(serve_config), "detach"],
                                    capture_output=True, text=True, timeout=60)
            assert detach.returncode != 0 and "is running" in detach.stderr  # never under a serving appliance
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            _messages(sock, lambda got: b"STOPPING=1\n" in got, timeout=5)
            kept = ours()
            assert {p["id"] for p in kept} == ids, kept  # still attached, the same programs
            assert not _listening(PORT)  # nothing listens: enrolled connects are refused, never sent direct
            assert not connects_to_the_broker(direct)  # and a cgroup this set does not exempt is refused in the kernel
    result = subprocess.run([PY, "-m", "appliance", "--config", str(serve_config), "detach", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sk_lookup link" in result.stdout and "sock4_connect" in result.stdout
    assert ours() == [] and not os.path.exists(BPFFS)
    assert connects_to_the_broker(direct)  # nothing of this set steers or refuses any more
