"""Attacks on the running console and on what it shows, with real processes: `appliance console` on the test
appliance's state directory, Debian's Chromium through Selenium, librdkafka workloads and raw sockets.

- A hostile workload puts markup in what the console shows (its client.id, the topic names it asks to create,
  so an approval request carries them): loaded in Chromium, nothing runs and no element is made.
- A stranger on the gateway (any local user: the console listens on loopback) sends bodies that would fill
  the console's memory or its temporary directory: refused by size and type, before they are read.
- Slow clients holding the console's port do not slow the serving proxy (another process) or the console.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time

import pytest

from tests.integration.conftest import BROKER4, PY, eventually
from tests.integration.fixtures import CONSOLE_PORT
from tests.integration.test_approvals import approvals, pending_for, result_of
from tests.integration.test_console import (CONSOLE, PERSON, _browser, _http, _log_in,  # noqa: F401 (fixture)
                                            console)

HOSTILE = '"><img src=x onerror=document.title=/pwned/.source><script>document.title="pwned"</script>'

HOSTILE_ADMIN = """
import json, sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1], "client.id": sys.argv[3]})
future = admin.create_topics([NewTopic(sys.argv[2], num_partitions=1, replication_factor=1)],
                             request_timeout=20)[sys.argv[2]]
try:
    future.result(25)
    print(json.dumps({"ok": True}))
except Exception as e:
    err = e.args[0] if e.args else e
    print(json.dumps({"ok": False, "code": getattr(err, "name", lambda: str(err))(),
                      "message": getattr(err, "str", lambda: str(err))()}))
"""


def _console_pid() -> int:
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{CONSOLE_PORT}"], capture_output=True, text=True).stdout
    pid = out.split("pid=")[1].split(",")[0]
    return int(pid)


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_markup_from_a_hostile_workload_is_inert_in_the_browser(console, config_path, enroll):
    """The workload names a topic and a client.id full of markup; the CreateTopics is held (its topic matches
    the approve rule's apr- prefix), so the markup is in an approval request, the operations, the events and
    the replay. Every page shows it as text: no <img> or <script> element from it, the title untouched."""
    from selenium.webdriver.common.by import By

    bot = enroll("approval-bot")
    topic = f"apr-{secrets.token_hex(2)}{HOSTILE}"
    client_id = f"cid{HOSTILE}"
    creating = bot.popen([PY, "-c", HOSTILE_ADMIN, BROKER4, topic, client_id])
    request = eventually(lambda: pending_for(config_path, topic), timeout=20, message="the hostile request filed")
    driver = _browser()
    try:
        _log_in(driver)
        pages = ["/approvals", f"/approvals/{request['id']}", "/operations", "/events", "/refusals", "/",
                 f"/sessions/{request['session_id']}/replay", f"/operations?session={request['session_id']}"]
        for page in pages:
            driver.get(f"{CONSOLE}{page}")
            assert driver.title.endswith("appliance console") and "pwned" not in driver.title, (page, driver.title)
            assert driver.find_elements(By.CSS_SELECTOR, "main img") == [], page
            scripts = [s.get_attribute("src") for s in driver.find_elements(By.TAG_NAME, "script")]
            assert all(src and src.startswith(f"{CONSOLE}/static/") for src in scripts), (page, scripts)
        driver.get(f"{CONSOLE}/approvals/{request['id']}")
        assert topic in driver.find_element(By.TAG_NAME, "main").text  # shown, as text
        driver.get(f"{CONSOLE}/operations?session={request['session_id']}")
        time.sleep(0.5)
        assert "pwned" not in driver.title
    finally:
        driver.quit()
        approvals(config_path, "deny", request["id"], "--reason", "hostile markup test", check=False)
        result_of(creating)


def test_a_stranger_cannot_fill_the_consoles_memory_or_temporary_directory(console):
    """Any local user can reach the console's loopback port and POST without a session. Was a DEFECT: the form
    was read before the session was looked at, with Starlette's limits of 1000 fields of 1 MiB each (one
    request could make the console hold about 1 GB), and multipart files spooled to disk unbounded."""
    pid = _console_pid()
    before = _rss_kib(pid)
    declared = socket.create_connection(("127.0.0.1", CONSOLE_PORT), timeout=10)
    started = time.monotonic()
    declared.sendall(b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 104857600\r\n\r\na=")
    head = declared.recv(4096)
    declared.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert time.monotonic() - started < 2

    streamed = socket.create_connection(("127.0.0.1", CONSOLE_PORT), timeout=10)
    streamed.sendall(b"POST /verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
    answer = b""
    try:
        for _ in range(400):  # up to 100 MiB in 256 KiB chunks, unless the console answers first
            chunk = b"f=" + b"x" * (256 * 1024 - 2)
            streamed.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            streamed.settimeout(0.001)
            try:
                answer += streamed.recv(4096)
            except (BlockingIOError, socket.timeout):
                pass
            streamed.settimeout(10)
            if answer:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    if not answer:
        answer = streamed.recv(4096)
    streamed.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    boundary = "b" + secrets.token_hex(8)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * 4096 + f"\r\n--{boundary}--\r\n".encode()
    multipart = socket.create_connection(("127.0.0.1", CONSOLE_PORT), timeout=10)
    multipart.sendall(f"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    head = multipart.recv(4096)
    multipart.close()
    assert head.startswith(b"HTTP/1.1 415"), head[:200]
    assert _rss_kib(pid) - before < 50 * 1024, f"the console grew by {(_rss_kib(pid) - before) // 1024} MiB"
    status, _, _ = _http("GET", "/login")
    assert status == 303


def test_slow_clients_holding_the_consoles_port_slow_neither_the_proxy_nor_the_console(console, enroll):
    """Slowloris: 500 connections to the console, each sending a header line every second and never finishing.
    The serving proxy is another process: a workload's metadata request through it is answered as fast as
    before. The console keeps answering too, and closes them once its deadline for a request head passes
    (before, uvicorn kept them for ever: see tests/console/test_attacks.py)."""
    bot = enroll("approval-bot")
    probe = ("import json, sys, time\nfrom confluent_kafka.admin import AdminClient\n"
             "a = AdminClient({'bootstrap.servers': sys.argv[1]})\nt = time.monotonic()\n"
             "a.list_topics(timeout=10)\nprint(json.dumps({'s': time.monotonic() - t}))\n")

    def through_proxy() -> float:
        return result_of(bot.popen([PY, "-c", probe, BROKER4]))["s"]

    def console_answers() -> float:
        started = time.monotonic()
        status, _, _ = _http("GET", "/login")
        assert status == 303
        return time.monotonic() - started

    baseline = through_proxy()
    slow = []
    opened = time.monotonic()
    try:
        for _ in range(500):
            s = socket.create_connection(("127.0.0.1", CONSOLE_PORT), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        for i in range(5):
            for s in slow:
                try:
                    s.sendall(b"X-%d: y\r\n" % i)
                except OSError:
                    pass
            time.sleep(1)
        proxied, answered = through_proxy(), console_answers()
        time.sleep(max(0.0, 12 - (time.monotonic() - opened)))  # past the console's 10 s deadline for a head
        still_open = 0
        for s in slow:
            s.settimeout(0.05)
            try:
                if s.recv(1) != b"":
                    still_open += 1
            except socket.timeout:
                still_open += 1
            except OSError:
                pass
    finally:
        for s in slow:
            s.close()
    assert proxied < baseline + 2, f"the proxy answered in {proxied:.2f} s under the slow clients (before: {baseline:.2f} s)"
    assert answered < 2, f"the console answered in {answered:.2f} s with 500 slow clients connected"
    assert still_open == 0, f"{still_open} of 500 connections that never finished their head are still open"
