"""Each doctor check judged from facts alone: what passes, what fails, and the fix it names."""

from __future__ import annotations

import dataclasses
import errno
import stat

from appliance.doctor import checks
from appliance.doctor.checks import (
    BrokerProbeResult, Clock, Facts, Mount, PortProbe, ProgramLoad, SecretFile, Status, evaluate, failed,
)

MOUNTS = checks.parse_mounts(
    "sysfs /sys sysfs rw 0 0\n"
    "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n"
    "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    "bpf /sys/fs/bpf bpf rw 0 0\n"
    "/dev/vda / ext4 rw 0 0\n"
    "tmpfs /tmp tmpfs rw 0 0\n")
CREDS = SecretFile("upstream_credentials", "/etc/appliance/credentials/upstream.json",
                   mode=stat.S_IFREG | 0o600, uid=0, dir_mode=stat.S_IFDIR | 0o700)
HEALTHY = Facts(
    euid=0, kernel_release="6.1.0-18-amd64",
    kernel_config={"CONFIG_BPF_SYSCALL": "y", "CONFIG_CGROUP_BPF": "y", "CONFIG_BPF_JIT": "y"},
    kernel_config_source="/boot/config-6.1.0-18-amd64",
    program_loads=(ProgramLoad("sock_addr", 0), ProgramLoad("sock_ops", 0), ProgramLoad("sk_lookup", 0)),
    bcc_error=None, mounts=MOUNTS, btf=True, headers_makefile=True, bpffs_dir="/sys/fs/bpf/appliance",
    listeners=(PortProbe("127.0.0.1", 19190, None), PortProbe("::1", 19190, None)), serving_pid=None,
    secret_files=(CREDS,), brokers=(BrokerProbeResult("10.0.0.5:9092", True, "TCP connect in 2 ms"),),
    clock=Clock(timesync_synchronized=True), tokens_in_use=False, policy_file="/etc/appliance/policy.yaml",
    policy_error=None, config_source="/etc/appliance/appliance.yaml",
)


def finding(facts: Facts, name: str) -> checks.Finding:
    return next(f for f in evaluate(facts) if f.check == name)


def test_a_healthy_host_passes_every_check():
    findings = evaluate(HEALTHY)
    assert [f for f in findings if f.status is not Status.OK] == []
    assert not failed(findings)


def test_each_failure_says_what_is_wrong_and_how_to_fix_it():
    for f in evaluate(dataclasses.replace(HEALTHY, euid=1000, kernel_release="5.10.0-28-amd64", btf=False)):
        if f.status is Status.FAIL:
            assert f.fix, f


def test_an_old_kernel_fails_and_an_unreadable_release_is_unknown():
    assert finding(dataclasses.replace(HEALTHY, kernel_release="5.10.0-28-amd64"), "kernel").status is Status.FAIL
    assert finding(dataclasses.replace(HEALTHY, kernel_release="6.18.44-fc-v1045"), "kernel").status is Status.OK
    assert finding(dataclasses.replace(HEALTHY, kernel_release="weird"), "kernel").status is Status.UNKNOWN


def test_kernel_options_missing_fail_and_no_config_file_is_unknown():
    f = finding(dataclasses.replace(HEALTHY, kernel_config={"CONFIG_BPF_SYSCALL": "y"}), "kernel-config")
    assert f.status is Status.FAIL and "CONFIG_CGROUP_BPF" in f.detail
    f = finding(dataclasses.replace(HEALTHY, kernel_config=None, kernel_config_source=None), "kernel-config")
    assert f.status is Status.UNKNOWN


def test_a_program_type_the_kernel_refuses_names_the_type():
    facts = dataclasses.replace(HEALTHY, program_loads=(ProgramLoad("sk_lookup", errno.EINVAL),))
    f = finding(facts, "bpf-sk_lookup")
    assert f.status is Status.FAIL and "Invalid argument" in f.detail
    f = finding(dataclasses.replace(HEALTHY, program_loads=(ProgramLoad("sock_addr", errno.EPERM),)), "bpf-sock_addr")
    assert f.status is Status.FAIL and "root" in f.fix


def test_no_cgroup2_mount_fails():
    facts = dataclasses.replace(HEALTHY, mounts=tuple(m for m in MOUNTS if m.fstype != "cgroup2"))
    assert finding(facts, "cgroup2").status is Status.FAIL
    assert "/sys/fs/cgroup/unified" in finding(HEALTHY, "cgroup2").detail


def test_a_bpffs_dir_on_another_filesystem_fails_naming_that_filesystem():
    f = finding(dataclasses.replace(HEALTHY, bpffs_dir="/tmp/appliance-bpf"), "bpffs")
    assert f.status is Status.FAIL
    assert "/tmp/appliance-bpf is on tmpfs mounted at /tmp" in f.detail and "mount -t bpf" in f.fix
    assert finding(dataclasses.replace(HEALTHY, bpffs_dir="/sys/fs/bpf"), "bpffs").status is Status.OK
    # /sys/fs/bpfx is not under /sys/fs/bpf
    assert finding(dataclasses.replace(HEALTHY, bpffs_dir="/sys/fs/bpfx/a"), "bpffs").status is Status.FAIL


def test_the_mount_table_decodes_escaped_spaces():
    assert checks.parse_mounts("bpf /mnt/my\\040bpf bpf rw 0 0\n") == (Mount("/mnt/my bpf", "bpf"),)


def test_missing_btf_or_headers_fail():
    assert finding(dataclasses.replace(HEALTHY, btf=False), "btf").status is Status.FAIL
    f = finding(dataclasses.replace(HEALTHY, headers_makefile=False), "kernel-headers")
    assert f.status is Status.FAIL and "linux-headers-6.1.0-18-amd64" in f.fix


def test_a_bcc_that_does_not_import_fails():
    f = finding(dataclasses.replace(HEALTHY, bcc_error="ModuleNotFoundError: No module named 'bcc'"), "bcc")
    assert f.status is Status.FAIL and "system-site-packages" in f.fix


def test_a_taken_port_fails_unless_the_appliance_itself_holds_it():
    taken = (PortProbe("127.0.0.1", 19190, errno.EADDRINUSE),)
    f = finding(dataclasses.replace(HEALTHY, listeners=taken), "port 127.0.0.1:19190")
    assert f.status is Status.FAIL and "ss -ltnp" in f.fix
    f = finding(dataclasses.replace(HEALTHY, listeners=taken, serving_pid=4242), "port 127.0.0.1:19190")
    assert f.status is Status.OK and "4242" in f.detail
    f = finding(dataclasses.replace(HEALTHY, listeners=(PortProbe("::1", 19190, errno.EADDRNOTAVAIL),)),
                "port [::1]:19190")
    assert f.status is Status.FAIL


def test_credentials_must_be_roots_alone():
    loose = dataclasses.replace(CREDS, mode=stat.S_IFREG | 0o644)
    f = finding(dataclasses.replace(HEALTHY, secret_files=(loose,)), "upstream_credentials")
    assert f.status is Status.FAIL and "mode 0644" in f.detail and "chmod 600" in f.fix
    foreign = dataclasses.replace(CREDS, uid=1000)
    assert "uid 1000" in finding(dataclasses.replace(HEALTHY, secret_files=(foreign,)), "upstream_credentials").detail
    open_dir = dataclasses.replace(CREDS, dir_mode=stat.S_IFDIR | 0o777)
    assert finding(dataclasses.replace(HEALTHY, secret_files=(open_dir,)), "upstream_credentials").status is Status.FAIL
    link = dataclasses.replace(CREDS, mode=stat.S_IFLNK | 0o777)
    assert "symlink" in finding(dataclasses.replace(HEALTHY, secret_files=(link,)), "upstream_credentials").detail
    gone = SecretFile("upstream_credentials", "/nowhere.json")
    assert "does not exist" in finding(dataclasses.replace(HEALTHY, secret_files=(gone,)), "upstream_credentials").detail


def test_credentials_serve_would_refuse_fail_with_the_loaders_words():
    empty = dataclasses.replace(CREDS, load_error=f"{CREDS.path}: key 'password' must be a non-empty string")
    f = finding(dataclasses.replace(HEALTHY, secret_files=(empty,)), "upstream_credentials")
    assert f.status is Status.FAIL and "key 'password' must be a non-empty string" in f.detail


def test_an_unreachable_broker_fails_naming_it():
    down = (BrokerProbeResult("10.0.0.5:9092", False, "TCP connect failed: Connection refused"),)
    f = finding(dataclasses.replace(HEALTHY, brokers=down), "broker 10.0.0.5:9092")
    assert f.status is Status.FAIL and "Connection refused" in f.detail
    assert "/etc/appliance/appliance.yaml" in f.fix


def test_the_clock_is_ok_when_synchronized_warns_when_not_and_is_unknown_when_it_cannot_tell():
    kernel_synced = Clock(False, adjtimex_state=0, adjtimex_status=0x2001, max_error_us=16_000)
    assert finding(dataclasses.replace(HEALTHY, clock=kernel_synced), "clock").status is Status.OK
    unsynced = Clock(False, adjtimex_state=checks.TIME_ERROR, adjtimex_status=checks.STA_UNSYNC)
    f = finding(dataclasses.replace(HEALTHY, clock=unsynced, tokens_in_use=True), "clock")
    assert f.status is Status.WARN and "token expiry" in f.detail and "timesyncd" in f.fix
    f = finding(dataclasses.replace(HEALTHY, clock=Clock(False)), "clock")
    assert f.status is Status.UNKNOWN and "cannot tell" in f.detail
    assert not failed(evaluate(dataclasses.replace(HEALTHY, clock=unsynced)))


def test_a_policy_that_does_not_load_fails_with_its_error():
    f = finding(dataclasses.replace(HEALTHY, policy_error="/etc/appliance/policy.yaml line 3: bad"), "policy")
    assert f.status is Status.FAIL and "line 3" in f.detail


def test_not_root_fails():
    assert finding(dataclasses.replace(HEALTHY, euid=1000), "root").status is Status.FAIL


def test_settings_point_at_a_file_to_write_when_doctor_ran_on_the_embedded_defaults():
    down = (BrokerProbeResult("127.0.0.1:19092", False, "refused"),)
    f = finding(dataclasses.replace(HEALTHY, brokers=down, config_source="embedded defaults"), "broker 127.0.0.1:19092")
    assert "a configuration file (--config)" in f.fix


def test_the_workload_ca_is_ok_absent_or_loaded_and_fails_with_what_serve_would_say():
    absent = finding(dataclasses.replace(HEALTHY, workload_ca="/var/lib/appliance/workload-ca.pem"), "workload CA")
    assert absent.status is Status.OK and "not made yet" in absent.detail
    loaded = finding(dataclasses.replace(HEALTHY, workload_ca_state="ok"), "workload CA")
    assert loaded.status is Status.OK
    bad = finding(dataclasses.replace(HEALTHY, workload_ca_state="/var/lib/appliance/workload-ca.key: has mode "
                                      "0644, which lets group or others read the CA's private key; run chmod 600"),
                  "workload CA")
    assert bad.status is Status.FAIL and bad.detail.startswith("serve would refuse to start: /var/lib/appliance/"
                                                               "workload-ca.key: has mode 0644")
    assert "--workload-tls terminate" in bad.fix
