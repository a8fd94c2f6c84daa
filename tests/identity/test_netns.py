"""Finding workloads' network namespaces from their cgroups, and entering one only if it is the one found."""

from __future__ import annotations

import os
import socket

import pytest

from appliance.identity import netns


def test_processes_are_listed_from_a_cgroup_and_its_descendants(tmp_path):
    (tmp_path / "cgroup.procs").write_text("10\n11\n")
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "cgroup.procs").write_text("12\n")
    (tmp_path / "empty").mkdir()
    assert sorted(netns.pids_below([tmp_path])) == [10, 11, 12]


def test_the_appliances_own_namespace_and_gone_processes_are_left_out():
    own = netns.own_inode()
    assert netns.inode_of(os.getpid()) == own
    assert netns.namespaces_of([os.getpid()], skip=own) == {}
    assert netns.namespaces_of([os.getpid()], skip=0) == {own: os.getpid()}
    assert netns.inode_of(2**22 + 1) is None  # above pid_max: never a process
    assert netns.namespaces_of([2**22 + 1], skip=0) == {}


def test_a_namespace_file_that_is_no_longer_the_namespace_found_is_not_entered():
    own = netns.own_inode()
    with pytest.raises(OSError, match="no longer network namespace"):
        with netns.entered(f"/proc/{os.getpid()}/ns/net", own + 1):
            pytest.fail("entered a namespace other than the one asked for")
    assert netns.own_inode() == own


def test_sockets_of_one_namespace_share_its_cookie():
    # (fd_of needs CAP_NET_ADMIN: tests/steering/test_kernel.py checks it, as root)
    with socket.socket() as a, socket.socket(socket.AF_INET6) as b:
        assert netns.cookie_of(a) == netns.cookie_of(b) > 0
