"""The gateway VM for tests: the locally built Debian 12 box, booted once by Vagrant on libvirt/QEMU.

One `GatewayVm` is one boot with everything of its own: a run directory holding
VAGRANT_HOME (the box is added there), Vagrant's machine directory and a libvirt
storage pool for the disks, and a libvirt domain name prefix. The daemons and the
VM's NAT network come from vagrant/libvirt-up, in the `appliance-vm` network
namespace; Vagrant runs inside it, because that is where the VM's address is.

    vm = GatewayVm.create()
    vm.ensure_box(); vm.ensure_wheelhouse(); vm.up(); vm.provision()
    vm.ssh("systemctl is-system-running")
    vm.write_file("/etc/appliance/policy.yaml", text)
    vm.destroy(); assert vm.leftovers() == []

Commands reach the VM by plain `ssh` with the configuration `vagrant ssh-config` gives once:
`vagrant ssh` starts Vagrant (Ruby, its plugins) for every command, seconds each on a busy host.

Each phase's seconds land in `vm.timings`, for the test to print: under QEMU's
TCG a boot is minutes, so a CI run boots once and the box build is cached.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
NETNS = "appliance-vm"
# Where the VM sees the host: the NAT network's bridge inside the namespace, and the
# host's own end of the namespace's veth pair (vagrant/libvirt-up).
HOST_ON_BRIDGE = "192.168.121.1"
HOST_ON_VETH = "10.233.0.1"
LIBVIRT_URI = "qemu:///system"
# The tools a boot needs, and where they come from.
HOST_TOOLS = {
    "vagrant": "vagrant", "virsh": "libvirt-clients", "libvirtd": "libvirt-daemon",
    "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "debootstrap": "debootstrap",
    "rsync": "rsync", "dnsmasq": "dnsmasq-base",
}


class VmError(RuntimeError):
    """A step of the VM's life failed; the message names the step, the command and its output."""


def missing_host_tools() -> list[str]:
    """The host tools a boot needs that are not installed, each with its Debian package."""
    return [f"{tool} (Debian package {package})" for tool, package in HOST_TOOLS.items()
            if shutil.which(tool) is None]


def _run(step: str, argv: list[str], *, env: dict[str, str] | None = None, timeout: float,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        raise VmError(f"{step}: `{' '.join(argv)}` took over {timeout:.0f} s\n{timed_out.stdout or ''}{timed_out.stderr or ''}") from None
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise VmError(f"{step}: `{' '.join(argv)}` exited {done.returncode}\n{tail}")
    return done


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("virsh", ["virsh", "-q", "-c", LIBVIRT_URI, *args], timeout=60, check=check)


@dataclass
class GatewayVm:
    run_dir: Path
    name_prefix: str
    pool: str
    timings: dict[str, float] = field(default_factory=dict)
    started_libvirt: bool = False
    destroyed: bool = False

    @classmethod
    def create(cls) -> GatewayVm:
        run_dir = Path(tempfile.mkdtemp(prefix="appliance-vm-", dir="/var/tmp"))
        # libvirt runs QEMU as libvirt-qemu, which must reach the kernel in the box and the pool's disks.
        run_dir.chmod(0o755)
        tag = run_dir.name.removeprefix("appliance-vm-").lower().replace("_", "")
        # vagrant-libvirt appends the machine's name ("default") to the prefix as it is.
        return cls(run_dir=run_dir, name_prefix=f"appliance-test-{tag}-", pool=f"appliance-test-{tag}")

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "VAGRANT_HOME": str(self.run_dir / "vagrant-home"),
            "VAGRANT_DOTFILE_PATH": str(self.run_dir / "machine"),
            "VAGRANT_CWD": str(VAGRANT_DIR),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt",
            "VAGRANT_CHECKPOINT_DISABLE": "1",  # no update check: nothing but package registries is reachable
            "APPLIANCE_VM_PREFIX": self.name_prefix,
            "APPLIANCE_VM_POOL": self.pool,
        }

    def _timed(self, phase: str, step):
        started = time.monotonic()
        try:
            return step()
        finally:
            self.timings[phase] = time.monotonic() - started

    def _vagrant(self, step: str, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(step, ["ip", "netns", "exec", NETNS, "vagrant", *args], env=self.env, timeout=timeout, check=check)

    def start_libvirt(self) -> None:
        """libvirtd, virtlogd and the NAT network in their namespace; stopped again at destroy if this started them."""
        self.started_libvirt = not Path("/run/appliance-vm").exists()
        _run("libvirt-up", [str(VAGRANT_DIR / "libvirt-up")], timeout=120)
        pool_dir = self.run_dir / "pool"
        pool_dir.mkdir()
        virsh("pool-define-as", self.pool, "dir", "--target", str(pool_dir))
        virsh("pool-start", self.pool)

    def ensure_box(self) -> None:
        """Build the box unless cached (vagrant/build-box), and add it to this run's VAGRANT_HOME."""
        self._timed("box", lambda: _run("build-box", [str(VAGRANT_DIR / "build-box")], env=self.env, timeout=1800))

    def ensure_wheelhouse(self) -> None:
        """Build the dependencies' wheels on the host unless cached (vagrant/build-wheelhouse): `up` syncs them in."""
        self._timed("wheelhouse", lambda: _run("build-wheelhouse", [str(VAGRANT_DIR / "build-wheelhouse")],
                                               env=self.env, timeout=900))

    def up(self) -> None:
        """Boot and sync the tree; provisioning is its own phase, timed apart."""
        self._timed("up", lambda: self._vagrant("vagrant up", "up", "--no-provision", timeout=1500))

    def provision(self) -> None:
        self._timed("provision", lambda: self._vagrant("vagrant provision", "provision", timeout=1800))

    def _ssh_config(self) -> Path:
        config = self.run_dir / "ssh_config"
        if not config.exists():
            config.write_text(self._vagrant("vagrant ssh-config", "ssh-config", timeout=120).stdout)
        return config

    def ssh(self, command: str, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the VM as the vagrant user (prefix sudo for root)."""
        return _run(f"ssh {command!r}", ["ip", "netns", "exec", NETNS, "ssh", "-q", "-F", str(self._ssh_config()),
                                         "default", "--", command], timeout=timeout, check=check)

    def write_file(self, path: str, text: str, *, mode: str = "0644") -> None:
        """Write `text` to `path` in the VM, owned by root, with `mode` (and the directory if missing)."""
        encoded = base64.b64encode(text.encode()).decode()
        self.ssh(f"echo {encoded} | base64 -d > /tmp/.write-file && "
                 f"sudo install -D -o root -g root -m {mode} /tmp/.write-file {path} && rm /tmp/.write-file")

    def domains(self) -> list[str]:
        names = virsh("list", "--all", "--name").stdout.split()
        return [name for name in names if name.startswith(self.name_prefix)]

    def volumes(self) -> list[str]:
        done = virsh("vol-list", self.pool, check=False)
        return [line.split()[0] for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []

    def qemu_processes(self) -> list[str]:
        done = _run("ps", ["ps", "-eo", "pid=,args="], timeout=30)
        return [line.strip() for line in done.stdout.splitlines()
                if "qemu-system" in line and f"guest={self.name_prefix}" in line]

    def destroy(self) -> None:
        """`vagrant destroy -f`, then remove the box's image from the pool (vagrant-libvirt leaves it there on purpose)."""
        if self.destroyed:
            return
        started = time.monotonic()
        try:
            if (self.run_dir / "machine").exists():
                self._vagrant("vagrant destroy", "destroy", "-f", timeout=600)
        finally:
            self.timings["destroy"] = time.monotonic() - started
            self.destroyed = True

    def remove_box_image(self) -> None:
        for volume in self.volumes():
            if "_vagrant_box_image_" in volume:
                virsh("vol-delete", "--pool", self.pool, volume)

    def leftovers(self) -> list[str]:
        """What a destroyed VM left behind: domains, volumes in its pool, QEMU processes."""
        return ([f"domain {name}" for name in self.domains()]
                + [f"volume {name} in pool {self.pool}" for name in self.volumes()]
                + [f"process {line}" for line in self.qemu_processes()])

    def clean_up(self) -> None:
        """After destroy: the pool, the run directory, and libvirt if this run started it."""
        virsh("pool-destroy", self.pool, check=False)
        virsh("pool-undefine", self.pool, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.started_libvirt:
            _run("libvirt-down", [str(VAGRANT_DIR / "libvirt-down")], timeout=120)
