"""cgroup v2 resolution on the real hierarchy (needs root: it creates cgroups)."""

import os
import secrets

import pytest

from appliance.identity import cgroups


@pytest.fixture
def parent():
    assert os.geteuid() == 0, "these tests create cgroups and must run as root"
    made = cgroups.ensure(f"appliance-test-cg-{secrets.token_hex(3)}")
    yield made
    for child in sorted(made.directory.rglob("*"), key=lambda p: -len(p.parts)):
        if child.is_dir():
            child.rmdir()
    cgroups.remove(made)


def test_paths_absolute_relative_and_unit_names_resolve_to_the_same_cgroup(parent):
    unit = f"orders-{secrets.token_hex(2)}.service"
    made = cgroups.ensure(f"{parent.path}/system.slice/{unit}")
    assert made.id == made.directory.stat().st_ino
    for name in (made.path, made.path.lstrip("/"), str(made.directory), unit):
        assert cgroups.resolve(name) == made


def test_missing_cgroup_is_named(parent):
    with pytest.raises(cgroups.CgroupError, match="cgroup 'nope-x.service' does not exist under"):
        cgroups.resolve("nope-x.service")


def test_path_of_id_finds_the_cgroup_and_its_process(parent):
    import subprocess

    assert cgroups.path_of_id(parent.id) == parent.path
    child = subprocess.Popen(["sleep", "30"])
    try:
        cgroups.move_process(child.pid, parent)
        assert cgroups.of_process(child.pid) == parent.path
    finally:
        child.kill()
        child.wait()
