"""The gateway VM: the locally built Debian 12 box boots under Vagrant (libvirt, QEMU TCG), is
provisioned under systemd by scripts/install, and runs the production path against a Kafka
broker outside it; then it leaves nothing behind when destroyed.

The production path, as an operator sets it up: the embedded broker runs on the host at
10.233.0.1 (the host's end of the VM's veth pair, advertised as such), and the VM's
/etc/appliance holds the broker address, a policy and the appliance's root-only credentials;
`systemctl start appliance` returns at READY=1. A workload run by systemd in an enrolled slice
produces with kafka-python from the appliance's venv; the kernel steers it into the proxy, the
record is read back on the host from the broker itself, and `appliance audit` in the VM shows
the session and the produce. An unenrolled process is refused with no SYN from it reaching the host.
`systemctl kill -s KILL appliance`: connects from the enrolled slice are refused until systemd
has restarted it, every one answered after that is an audited session, and producing works.

One boot for the whole module (minutes under TCG); the tests run in file order, each building
on the ones before, and the last one destroys the VM. Each phase's seconds are printed at the
end, with the audit rows the VM showed. A missing tool fails the run.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance.broker.embedded import EmbeddedBroker
from appliance.config import EmbeddedBrokerConfig
from tests.integration.vm import HOST_ON_BRIDGE, HOST_ON_VETH, NETNS, GatewayVm, VmError, missing_host_tools

pytestmark = pytest.mark.integration

BRIDGE_PORT, VETH_PORT = 39170, 39171
# The broker outside the VM: its client listener on the host's end of the veth pair; its controller
# and inter-broker listeners on the host's loopback (39173, 39174), out of the VM's reach.
BROKER_PORT, BROKER_CONTROLLER_PORT = 39172, 39173
BROKER = f"{HOST_ON_VETH}:{BROKER_PORT}"
BROKER_DATA = Path("/var/lib/appliance-test/vm-broker")
TOPIC = IDENTITY = "vm-orders"
# The workloads: transient services systemd runs in this slice, which is what is enrolled.
SLICE = "orders.slice"
APPLIANCE = "sudo appliance --config /etc/appliance/appliance.yaml"
SHOWN = "sudo env COLUMNS=240 appliance --config /etc/appliance/appliance.yaml"  # tables to print, not cut to 80
VENV_PYTHON = "/opt/appliance/venv/bin/python"
CLIENTS = "/appliance/tests/integration/clients"
POLICY = f"""\
# The gateway VM test's policy: {IDENTITY} may produce to (and describe) {TOPIC}, nothing else.
version: 1
immutable_topics: []
rules:
  - name: {IDENTITY}-produce
    identities: [{IDENTITY}]
    operations: [produce, describe]
    topics: [{TOPIC}]
"""
# The unenrolled probe's source port, and a rule on the host counting the SYNs that arrive from it
# (the VM's connections arrive from the veth's far end; its NAT keeps a free source port). The
# appliance's own connects to the broker (its reachability probe, its upstream sessions) come from
# other ports.
PROBE_PORT = 45999
SYN_RULE = ["INPUT", "-i", "appl-vm0", "-p", "tcp", "--sport", str(PROBE_PORT), "--syn",
            "-m", "comment", "--comment", "appliance-vm-test-probe-syns"]
# Run inside the VM: connect, send a token, print what came back.
CONNECT_FROM_VM = (
    "python3 -c 'import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20); "
    "s.sendall(sys.argv[3].encode()+b\"\\n\"); print(s.makefile().readline().strip())' {host} {port} {token}"
)
# Run inside the namespace, on the host: accept one connection, answer its line, print the peer.
ONE_SHOT_LISTENER = """
import socket, sys
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
listener.settimeout(120)
print("listening", flush=True)
connection, peer = listener.accept()
line = connection.makefile().readline().strip()
connection.sendall(f"ack {line}\\n".encode())
print(peer[0], line, flush=True)
"""


@pytest.fixture(scope="module")
def vm(request):
    missing = missing_host_tools()
    if missing:
        pytest.fail(f"VM prerequisites missing: {', '.join(missing)}; run vagrant/host-setup", pytrace=False)
    gateway = GatewayVm.create()
    try:
        try:
            gateway.start_libvirt()
            gateway.ensure_box()
            gateway.ensure_wheelhouse()
            gateway.up()
            gateway.provision()
            failure = None
        except VmError as failed:
            failure = str(failed)
        if failure:
            pytest.fail(failure, pytrace=False)
        yield gateway
    finally:
        _tear_down(gateway, request)


def _tear_down(gateway: GatewayVm, request) -> None:
    try:
        gateway.destroy()
        gateway.remove_box_image()
    finally:
        gateway.clean_up()
        figures = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in gateway.timings.items())
        _show(request, f"gateway VM timings: {figures}")


def _show(request, text: str) -> None:
    # Past the output capture: the figures and the VM's audit rows are the point of a passing run, too.
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{text}", flush=True)


@pytest.fixture(scope="module")
def broker(vm):
    """The embedded broker on the host, at 10.233.0.1 (which exists once libvirt-up made the veth pair)."""
    shutil.rmtree(BROKER_DATA, ignore_errors=True)
    outside = EmbeddedBroker(EmbeddedBrokerConfig(
        host4=HOST_ON_VETH, port4=BROKER_PORT, host6="", controller_port=BROKER_CONTROLLER_PORT,
        data_dir=BROKER_DATA, cgroup="appliance-test-broker"))
    started = time.monotonic()
    outside.start()
    vm.timings["broker"] = time.monotonic() - started
    subprocess.run(["iptables", "-I", *SYN_RULE], check=True)
    try:
        yield outside
    finally:
        subprocess.run(["iptables", "-D", *SYN_RULE], check=False)
        outside.stop()
        shutil.rmtree(BROKER_DATA, ignore_errors=True)


def _probe_syns() -> int:
    """SYNs from the VM's PROBE_PORT that reached the host so far (the counting rule's packets)."""
    listing = subprocess.run(["iptables", "-L", "INPUT", "-v", "-x", "-n"], capture_output=True, text=True,
                             check=True).stdout
    counts = [int(line.split()[0]) for line in listing.splitlines() if "appliance-vm-test-probe-syns" in line]
    assert len(counts) == 1, listing
    return counts[0]


def _sasl(broker: EmbeddedBroker) -> dict:
    creds = broker.credentials
    return {"bootstrap_servers": BROKER, "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": creds.mechanism,
            "sasl_plain_username": creds.username, "sasl_plain_password": creds.password}


def _read_back(broker: EmbeddedBroker) -> list[str]:
    """Every record of the topic, read on the host from the broker directly, with the appliance's credentials."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(consumer_timeout_ms=10000, enable_auto_commit=False, **_sasl(broker))
    try:
        partition = TopicPartition(TOPIC, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        return [record.value.decode() for record in consumer]
    finally:
        consumer.close()


def _vm_audit(vm: GatewayVm, table: str, *args: str) -> list[dict]:
    return json.loads(vm.ssh(f"{APPLIANCE} audit {table} --json --limit 10000 {' '.join(args)}").stdout)


def _eventually(check, *, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            assert found, f"{message} within {timeout:.0f} s (last: {found!r})"
            return found
        time.sleep(1)


def _journal(vm: GatewayVm) -> str:
    return vm.ssh("sudo journalctl -u appliance -b --no-pager -n 60", check=False).stdout


def _produce(vm: GatewayVm, unit: str, n: int, fmt: str) -> dict:
    """kafka-python from the appliance's venv, run by systemd as a transient service in the enrolled slice."""
    done = vm.ssh(f"sudo systemd-run --quiet --wait --pipe --collect --slice={SLICE} --unit={unit} "
                  f"--uid=nobody --gid=nogroup {VENV_PYTHON} {CLIENTS}/pyfamily.py kafka-python produce "
                  f"{BROKER} {TOPIC} {n} '{fmt}' --timeout 60", check=False, timeout=180)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{_journal(vm)}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_provisioner_ran_under_systemd(vm):
    record = dict(line.split("=", 1) for line in vm.ssh("cat /var/lib/appliance-provision/ran").stdout.split())
    assert record["pid1"] == "systemd"
    assert record["system"] in {"running", "starting", "degraded"}, record
    # Booted through: systemd reached its goal (or names what failed), ssh is a systemd service.
    state = vm.ssh("sudo systemctl is-system-running --wait", check=False).stdout.strip()
    assert state == "running", vm.ssh("sudo systemctl --failed --no-legend", check=False).stdout
    assert vm.ssh("systemctl is-active ssh.service").stdout.strip() == "active"


def test_the_project_tree_is_synced_in(vm):
    assert vm.ssh("test -f /appliance/pyproject.toml && test -x /appliance/vagrant/provision && echo ok").stdout.strip() == "ok"
    # With the dependencies' wheels the host built (vagrant/build-wheelhouse), which provisioning installs from.
    assert vm.ssh("test -e /var/cache/appliance/wheelhouse/.complete && ls /var/cache/appliance/wheelhouse/*.whl | wc -l"
                  ).stdout.strip() != "0"


def test_the_provisioner_installed_the_appliance(vm):
    # scripts/install from the synced tree: the venv, the command on PATH, the unit enabled
    # (not started: the VM has no broker credentials yet).
    assert "serve" in vm.ssh("/usr/local/bin/appliance --help").stdout
    assert vm.ssh("systemctl is-enabled appliance.service").stdout.strip() == "enabled"


def test_the_kernel_has_bpf_and_cgroup2(vm):
    assert vm.ssh("stat -f -c %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    assert vm.ssh("test -s /sys/kernel/btf/vmlinux && echo btf").stdout.strip() == "btf"
    # bcc from the box's packages compiles against the box kernel's headers.
    assert vm.ssh("test -e /lib/modules/$(uname -r)/build/Makefile && echo headers").stdout.strip() == "headers"
    assert vm.ssh("sudo grep -c ' /sys/fs/bpf bpf ' /proc/mounts", check=False).stdout.strip() == "1"


def test_the_vm_reaches_a_listener_on_the_bridge_gateway(vm):
    # The namespace side of the VM's NAT network: what a broker beside libvirt would be.
    listener = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, sys.executable, "-c", ONE_SHOT_LISTENER, HOST_ON_BRIDGE, str(BRIDGE_PORT)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        reply = vm.ssh(CONNECT_FROM_VM.format(host=HOST_ON_BRIDGE, port=BRIDGE_PORT, token="bridge")).stdout.strip()
        assert reply == "ack bridge"
        peer, line = listener.stdout.readline().split()
        assert peer.startswith("192.168.121.") and line == "bridge"
    finally:
        listener.kill()
        listener.wait()


def test_the_vm_reaches_a_listener_on_the_host(vm):
    # The host's own network namespace, where a Kafka broker outside the VM listens; the VM's
    # connection arrives masqueraded as the namespace's end of the veth pair.
    with socket.create_server((HOST_ON_VETH, VETH_PORT)) as listener:
        listener.settimeout(120)
        seen: dict[str, str] = {}

        def answer_one():
            connection, peer = listener.accept()
            with connection:
                seen["line"] = connection.makefile().readline().strip()
                seen["peer"] = peer[0]
                connection.sendall(f"ack {seen['line']}\n".encode())

        accepting = threading.Thread(target=answer_one)
        accepting.start()
        reply = vm.ssh(CONNECT_FROM_VM.format(host=HOST_ON_VETH, port=VETH_PORT, token="host")).stdout.strip()
        accepting.join(timeout=30)
    assert reply == "ack host"
    assert seen == {"line": "host", "peer": "10.233.0.2"}


def test_the_appliance_runs_under_systemd_against_the_broker_outside(vm, broker):
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(**_sasl(broker))
    try:
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
    finally:
        admin.close()
    # What an operator does after scripts/install: the brokers, the credentials, a policy.
    config = vm.ssh("sudo cat /etc/appliance/appliance.yaml").stdout
    config, replaced = re.subn(r"^brokers:\n(?:- .*\n)+", f"brokers:\n- {BROKER}\n", config, flags=re.M)
    assert replaced == 1, config
    vm.write_file("/etc/appliance/appliance.yaml", config)
    creds = broker.credentials
    vm.write_file("/etc/appliance/credentials/upstream.json", json.dumps(
        {"mechanism": creds.mechanism, "username": creds.username, "password": creds.password}) + "\n", mode="0600")
    vm.write_file("/etc/appliance/policy.yaml", POLICY)
    assert vm.ssh("sudo stat -c '%a %U' /etc/appliance/credentials /etc/appliance/credentials/upstream.json"
                  ).stdout.split() == ["700", "root", "600", "root"]
    started = time.monotonic()
    # Type=notify: start returns once serve has sent READY=1 (programs attached, listeners admitted).
    start = vm.ssh("sudo systemctl start appliance", check=False, timeout=300)
    vm.timings["serve start"] = time.monotonic() - started
    assert start.returncode == 0, f"{start.stdout}{start.stderr}\n{_journal(vm)}"
    shown = dict(line.split("=", 1) for line in vm.ssh(
        "systemctl show appliance -p Type -p ActiveState -p SubState -p NRestarts -p StatusErrno").stdout.split())
    assert shown == {"Type": "notify", "ActiveState": "active", "SubState": "running", "NRestarts": "0",
                     "StatusErrno": "0"}, shown
    assert vm.ssh("systemctl is-active appliance").stdout.strip() == "active"


def test_an_enrolled_workload_produce_is_steered_and_audited(vm, broker, request):
    vm.write_file(f"/etc/systemd/system/{SLICE}", "[Unit]\nDescription=The orders workloads (enrolled)\n")
    vm.ssh(f"sudo systemctl daemon-reload && sudo systemctl start {SLICE}")
    enrolled = vm.ssh(f"{APPLIANCE} enroll {SLICE} --identity {IDENTITY}").stdout
    assert f"enrolled /{SLICE}" in enrolled, enrolled
    _eventually(lambda: IDENTITY in vm.ssh(f"{APPLIANCE} status --json").stdout, timeout=30,
                message="serve applied the enrolment")
    started = time.monotonic()
    produced = _produce(vm, "vm-orders-produce", 3, "from-the-vm-{i}")
    vm.timings["produce"] = time.monotonic() - started
    assert produced == {"acked": 3, "failed": 0, "errors": {}}, produced
    assert _read_back(broker) == ["from-the-vm-0", "from-the-vm-1", "from-the-vm-2"]

    def sessions():
        rows = [s for s in _vm_audit(vm, "sessions", "--identity", IDENTITY)
                if s["cgroup_path"] == f"/{SLICE}/vm-orders-produce.service" and s["ended_at"]]
        return rows or None

    rows = _eventually(sessions, timeout=30, message="the workload's sessions audited")
    assert {s["broker_address"] for s in rows} == {BROKER}, rows
    assert {s["uid"] for s in rows} == {65534} and all(s["pid"] for s in rows), rows
    ops = [o for o in _vm_audit(vm, "operations", "--identity", IDENTITY, "--topic", TOPIC)
           if o["api_name"] == "Produce" and o["session_id"] in {s["session_id"] for s in rows}]
    assert ops and all(o["decision"] == "allowed" for o in ops), ops
    assert sum(o["records"] or 0 for o in ops) == 3, ops
    keys = ("session_id", "identity", "cgroup_path", "pid", "uid", "client_address", "broker_address", "requests",
            "close_reason")
    _show(request, f"in the VM, `appliance audit sessions --identity {IDENTITY} --json`, this workload's rows:\n"
          + "\n".join(json.dumps({k: s[k] for k in keys}) for s in rows) + "\n"
          + vm.ssh(f"{SHOWN} audit operations --identity {IDENTITY} --topic {TOPIC} --limit 5").stdout)


def test_an_unenrolled_process_is_refused_and_nothing_reaches_the_broker(vm, request):
    probe = f"python3 {CLIENTS}/raw.py ask {HOST_ON_VETH} {{port}} --source-port {PROBE_PORT}"
    # The counter sees the probe's SYNs: to a host port nobody listens on, unsteered, one arrives
    # (and the host's RST refuses it).
    syns = _probe_syns()
    unsteered = json.loads(vm.ssh(probe.format(port=VETH_PORT)).stdout)
    assert unsteered["errno"] == 111, unsteered
    assert _eventually(lambda: _probe_syns() - syns, timeout=10, message="the unsteered SYN counted") == 1
    # The vagrant user's command over ssh (cgroup ssh.service): not enrolled. Refused in the kernel at connect():
    # no SYN leaves the VM, let alone bytes.
    syns = _probe_syns()
    refused = json.loads(vm.ssh(probe.format(port=BROKER_PORT)).stdout)
    assert refused["errno"] == 111, refused  # ECONNREFUSED
    time.sleep(2)
    assert _probe_syns() == syns

    def refusal():
        return [e for e in _vm_audit(vm, "events", "--kind", "refused-connect") if e["pid"] == refused["pid"]]

    events = _eventually(refusal, timeout=30, message="the refused connect audited")
    assert json.loads(events[0]["detail"])["destination"] == BROKER, events
    _show(request, "in the VM, the unenrolled connect:\n"
          + vm.ssh(f"{SHOWN} audit events --kind refused-connect --limit 3").stdout)


def test_a_killed_appliance_is_restarted_and_nothing_gets_through_meanwhile(vm, broker, request):
    main_pid = vm.ssh("systemctl show -p MainPID --value appliance").stdout.strip()
    # In one go in the VM: kill serve, retry connects from the enrolled slice at once, and time
    # systemd's restart (a new main PID, active again: READY=1 from the new serve).
    vm.write_file("/tmp/kill-and-retry", f"""\
set -eu
t0=$(date +%s.%N)
systemctl kill -s KILL appliance
systemd-run --quiet --wait --pipe --collect --slice={SLICE} --unit=vm-orders-retry --uid=nobody --gid=nogroup \\
  {VENV_PYTHON} {CLIENTS}/connect_loop.py {HOST_ON_VETH} {BROKER_PORT} 240 >/tmp/retry.json &
until [ "$(systemctl show -p MainPID --value appliance)" != {main_pid} ] && [ "$(systemctl is-active appliance)" = active ]; do
  sleep 0.2
done
t1=$(date +%s.%N)
wait
echo "restarted_after_s=$(awk "BEGIN {{print $t1 - $t0}}")"
cat /tmp/retry.json
""")
    done = vm.ssh("sudo bash /tmp/kill-and-retry", check=False, timeout=420)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{_journal(vm)}"
    restarted_line, loop_line = done.stdout.strip().splitlines()[-2:]
    vm.timings["restart after kill"] = float(restarted_line.split("=", 1)[1])
    loop = json.loads(loop_line)
    outcomes = [outcome for _, outcome in loop["attempts"]]
    assert "ECONNREFUSED" in outcomes and outcomes[-3:] == ["answered"] * 3, loop
    assert set(outcomes) <= {"ECONNREFUSED", "answered"}, loop
    # Refused until serve was back, answered after: never an answer between two refusals.
    first_answer = outcomes.index("answered")
    assert all(o == "answered" for o in outcomes[first_answer:]), loop
    assert vm.ssh("systemctl show -p NRestarts --value appliance").stdout.strip() == "1"

    def sessions():  # every answered connect was the restarted proxy's, audited
        rows = [s for s in _vm_audit(vm, "sessions", "--identity", IDENTITY) if s["pid"] == loop["pid"]]
        return rows if len(rows) >= outcomes.count("answered") else None

    rows = _eventually(sessions, timeout=30, message="every answered connect audited as a session")
    assert len(rows) == outcomes.count("answered"), rows
    assert {s["cgroup_path"] for s in rows} == {f"/{SLICE}/vm-orders-retry.service"}, rows
    assert _produce(vm, "vm-orders-produce-again", 2, "after-the-restart-{i}") == {"acked": 2, "failed": 0,
                                                                                 "errors": {}}
    assert _read_back(broker)[-2:] == ["after-the-restart-0", "after-the-restart-1"]
    _show(request, f"kill -9 of serve: {outcomes.count('ECONNREFUSED')} connects refused over "
          f"{loop['attempts'][first_answer][0]:.1f} s, then {outcomes.count('answered')} answered and audited; "
          f"systemd restarted serve after {vm.timings['restart after kill']:.1f} s")


CONSOLE_PROBE = """
import json, urllib.error, urllib.request
class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None
opener = urllib.request.build_opener(Stay)
answers = {}
for path in ("/", "/login"):
    try:
        r = opener.open("http://127.0.0.1:19443" + path, timeout=10)
        answers[path] = [r.status, r.headers.get("Location")]
    except urllib.error.HTTPError as e:
        answers[path] = [e.code, e.headers.get("Location")]
print(json.dumps(answers))
"""


def test_the_console_runs_under_its_hardened_unit(vm):
    """The console's unit, as installed (disabled), started once its settings exist: it serves with no
    capabilities; with the identity provider unreachable, a page still redirects to /login and the login
    says it cannot ask the provider (the provider is asked at login, not at start)."""
    assert vm.ssh("systemctl is-enabled appliance-console.service", check=False).stdout.strip() == "disabled"
    vm.write_file("/etc/appliance/console-client-secret", "vm-console-secret\n", mode="0600")
    config = vm.ssh("sudo cat /etc/appliance/appliance.yaml").stdout
    vm.write_file("/etc/appliance/appliance.yaml", config + (
        "console:\n  enabled: true\n  listen: 127.0.0.1:19443\n  issuer: http://127.0.0.1:9/realms/none\n"
        "  client_id: appliance-console\n  client_secret_file: /etc/appliance/console-client-secret\n"
        "  redirect_uri: http://127.0.0.1:19443/callback\n"))
    start = vm.ssh("sudo systemctl start appliance-console", check=False, timeout=60)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        answers = _eventually(lambda: (lambda r: json.loads(r.stdout) if r.returncode == 0 else None)(
            vm.ssh(f"python3 -c '{CONSOLE_PROBE}'", check=False)), timeout=60, message="the console answering")
        assert answers["/"] == [303, "/login"], answers
        assert answers["/login"][0] == 502, answers
        shown = dict(line.split("=", 1) for line in vm.ssh(
            "systemctl show appliance-console -p ActiveState -p CapabilityBoundingSet -p NRestarts").stdout.split())
        assert shown["ActiveState"] == "active" and shown["NRestarts"] == "0", shown
        assert shown["CapabilityBoundingSet"] == "", shown
    finally:
        journal = vm.ssh("sudo journalctl -u appliance-console -b --no-pager -n 40", check=False).stdout
        vm.ssh("sudo systemctl stop appliance-console", check=False)
    assert "Traceback" not in journal, journal


def test_destroy_leaves_nothing_behind(vm):
    assert vm.domains(), "the VM's domain should exist before destroy"
    vm.destroy()
    vm.remove_box_image()
    assert vm.leftovers() == []
