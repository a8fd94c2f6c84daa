"""The gateway VM: the locally built Debian 12 box boots under Vagrant (libvirt, QEMU TCG), is
provisioned under systemd, has the kernel facilities the appliance needs, reaches the host over
TCP, and leaves nothing behind when destroyed.

One boot for the whole module (minutes under TCG); the tests run in file order and the last one
destroys the VM. Each phase's seconds are printed at the end. A missing tool fails the run.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from tests.integration.vm import HOST_ON_BRIDGE, HOST_ON_VETH, NETNS, GatewayVm, VmError, missing_host_tools

pytestmark = pytest.mark.integration

BRIDGE_PORT, VETH_PORT = 39170, 39171
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
        # Past the output capture: the figures are the point of a passing run, too.
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(f"\ngateway VM timings: {figures}")


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


def test_destroy_leaves_nothing_behind(vm):
    assert vm.domains(), "the VM's domain should exist before destroy"
    vm.destroy()
    vm.remove_box_image()
    assert vm.leftovers() == []
