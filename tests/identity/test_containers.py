"""Containers and cgroup patterns as workloads, over a directory tree shaped like the cgroup v2 hierarchy."""

import json

import pytest

from appliance.config import ConfigError, parse_config
from appliance.identity.containers import (
    CgroupGlob, ContainerError, ContainerRoots, expand, find_container, identity_for, runtime_of)
from appliance.identity.enrollment import EnrollmentError, EnrollmentStore

DOCKER = "3f4e9a1c2b7d" + "0" * 52
PODMAN = "a1b2c3d4e5f6" + "1" * 52
CONTAINERD = "c0ffee000000" + "2" * 52


def tree(root, *paths):
    for path in paths:
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("name, parent, expected", [
    (f"docker-{DOCKER}.scope", "/system.slice", ("docker", DOCKER)),
    (f"libpod-{PODMAN}.scope", "/machine.slice", ("podman", PODMAN)),
    (f"libpod-{PODMAN}", "/libpod_parent", ("podman", PODMAN)),
    (f"cri-containerd-{CONTAINERD}.scope", "/kubepods.slice", ("containerd", CONTAINERD)),
    (f"crio-{CONTAINERD}.scope", "/kubepods.slice", ("crio", CONTAINERD)),
    (DOCKER, "/docker", ("docker", DOCKER)),
    (CONTAINERD, "/default", ("any", CONTAINERD)),
    # The runtimes' monitor processes are not the container.
    (f"libpod-conmon-{PODMAN}.scope", "/machine.slice", None),
    (f"crio-conmon-{CONTAINERD}.scope", "/kubepods.slice", None),
    ("docker.service", "/system.slice", None),
    (f"docker-{DOCKER[:63]}.scope", "/system.slice", None),
])
def test_container_cgroup_names_of_each_runtime(name, parent, expected):
    assert runtime_of(name, parent) == expected


def test_a_container_is_found_by_a_unique_prefix_of_its_id(tmp_path):
    tree(tmp_path, f"/system.slice/docker-{DOCKER}.scope/init.scope", f"/machine.slice/libpod-{PODMAN}.scope",
         f"/machine.slice/libpod-conmon-{PODMAN}.scope")
    found = find_container(DOCKER[:12], tmp_path)
    assert (found.runtime, found.container_id, found.path) == ("docker", DOCKER, f"/system.slice/docker-{DOCKER}.scope")
    assert find_container(PODMAN.upper(), tmp_path).path == f"/machine.slice/libpod-{PODMAN}.scope"


@pytest.mark.parametrize("prefix, fault", [
    ("3f4e9a1c", "at least 12"),
    ("3f4e9a1c2b7g", "at least 12"),
    ("../../etc/x", "at least 12"),
    ("ffffffffffff", "no container whose id starts with ffffffffffff"),
    ("a1b2c3d4e5f6", "ambiguous"),
])
def test_a_container_id_that_names_no_one_container_is_refused_with_why(tmp_path, prefix, fault):
    other = "a1b2c3d4e5f6" + "9" * 52
    tree(tmp_path, f"/system.slice/docker-{DOCKER}.scope", f"/machine.slice/libpod-{PODMAN}.scope",
         f"/system.slice/docker-{other}.scope")
    with pytest.raises(ContainerError, match=fault):
        find_container(prefix, tmp_path)


@pytest.mark.parametrize("pattern, fault", [
    ("/*", "fixed component"),
    ("/*.slice/docker-*.scope", "fixed component"),
    ("/system.slice/**", r"\*\* is not supported"),
    ("/system.slice/../docker-*", r"\. or \.\."),
    ("/system.slice/docker.service", "no wildcard"),
    ("  ", "empty"),
])
def test_patterns_that_could_reach_too_far_are_refused(pattern, fault):
    with pytest.raises(ContainerError, match=fault):
        CgroupGlob.parse(pattern)


def test_a_pattern_matches_one_component_per_wildcard(tmp_path):
    tree(tmp_path, f"/system.slice/docker-{DOCKER}.scope/sub", "/system.slice/app-orders.service",
         "/system.slice/app-billing.service", "/system.slice/docker.service", "/user.slice/app-x.service")
    glob = CgroupGlob.parse("system.slice/app-*.service")
    assert glob.pattern == "/system.slice/app-*.service"
    assert glob.matches(tmp_path) == ["/system.slice/app-billing.service", "/system.slice/app-orders.service"]
    assert CgroupGlob.parse("/system.slice/docker-*.scope").matches(tmp_path) == [f"/system.slice/docker-{DOCKER}.scope"]
    assert glob.first_wildcard_match("/system.slice/app-orders.service") == "orders"
    assert CgroupGlob.parse("/a/x-[ab]?-*-*.s").first_wildcard_match("/a/x-a1-one-two.s") == "one"
    assert CgroupGlob.parse("/nothing/*").matches(tmp_path) == []


def roots_in(tmp_path) -> ContainerRoots:
    return ContainerRoots(docker=tmp_path / "docker", podman=tmp_path / "podman", containerd=tmp_path / "containerd",
                          crio=tmp_path / "crio")


def write_json(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document) if not isinstance(document, (bytes, str)) else document)


def test_identity_from_the_unit_the_match_or_a_runtime_label(tmp_path):
    roots = roots_in(tmp_path)
    write_json(roots.docker / "containers" / DOCKER / "config.v2.json", {"Config": {"Labels": {"appliance.identity": "billing"}}})
    write_json(roots.podman / "overlay-containers" / PODMAN / "userdata" / "config.json", {"annotations": {"appliance.identity": "reports"}})
    write_json(roots.containerd / "io.containerd.runtime.v2.task" / "k8s.io" / CONTAINERD / "config.json",
               {"annotations": {"appliance.identity": "ingest"}})
    app = CgroupGlob.parse("/system.slice/app-*.service")
    assert identity_for("unit", "/system.slice/app-orders.service", app, roots) == ("app-orders", "")
    assert identity_for("match", "/system.slice/app-orders.service", app, roots) == ("orders", "")
    label = "label:appliance.identity"
    docker = CgroupGlob.parse("/system.slice/docker-*.scope")
    assert identity_for(label, f"/system.slice/docker-{DOCKER}.scope", docker, roots) == ("billing", "")
    assert identity_for(label, f"/machine.slice/libpod-{PODMAN}.scope", docker, roots) == ("reports", "")
    assert identity_for(label, f"/kubepods.slice/cri-containerd-{CONTAINERD}.scope", docker, roots) == ("ingest", "")
    assert identity_for(label, f"/default/{CONTAINERD}", docker, roots) == ("ingest", "")
    assert identity_for("label:other", f"/system.slice/docker-{DOCKER}.scope", docker, roots) == (
        None, f"container {DOCKER[:12]} (docker) has no label other")
    assert identity_for(label, "/system.slice/app-orders.service", docker, roots)[1].endswith("has no label appliance.identity")


@pytest.mark.parametrize("content, fault", [
    (b"{not json", "not the docker state"),
    ({"Config": None}, "not the docker state"),
    (b" " * ((4 << 20) + 1), "larger than"),
])
def test_damaged_or_huge_runtime_state_is_no_identity(tmp_path, content, fault):
    roots = roots_in(tmp_path)
    path = roots.docker / "containers" / DOCKER / "config.v2.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    identity, reason = identity_for("label:x", f"/system.slice/docker-{DOCKER}.scope",
                                    CgroupGlob.parse("/system.slice/docker-*.scope"), roots)
    assert identity is None and fault in reason


def test_expanding_a_pattern_validates_each_identity(tmp_path):
    roots = roots_in(tmp_path)
    other = "b" * 64
    tree(tmp_path / "cg", f"/system.slice/docker-{DOCKER}.scope", f"/system.slice/docker-{other}.scope")
    write_json(roots.docker / "containers" / DOCKER / "config.v2.json", {"Config": {"Labels": {"id": "billing"}}})
    write_json(roots.docker / "containers" / other / "config.v2.json", {"Config": {"Labels": {"id": "bad name!"}}})
    matches = expand("/system.slice/docker-*.scope", "", "label:id", tmp_path / "cg", roots)
    assert [(m.path.split("-")[1][:1], m.identity) for m in matches] == [("3", "billing"), ("b", None)]
    assert "gives no usable identity" in matches[1].reason
    fixed = expand("/system.slice/docker-*.scope", "containers", "", tmp_path / "cg", roots)
    assert {m.identity for m in fixed} == {"containers"}


def test_pattern_enrolments_are_kept_with_their_identity_source(tmp_path):
    store = EnrollmentStore(tmp_path / "enrollments.json")
    store.enroll(identity="", groups=("apps",), cgroup_path="/system.slice/docker-*.scope", cgroup_id=0,
                 kind="glob", identity_from="label:appliance.identity")
    record = store.load()["/system.slice/docker-*.scope"]
    assert record.is_pattern and record.identity_from == "label:appliance.identity" and record.groups == ("apps",)
    with pytest.raises(EnrollmentError, match="needs a cgroup pattern"):
        store.enroll(identity="", groups=(), cgroup_path="/orders", cgroup_id=5, identity_from="unit")
    with pytest.raises(EnrollmentError, match="identity source 'name' is not one"):
        store.enroll(identity="", groups=(), cgroup_path="/a/*", cgroup_id=0, kind="glob", identity_from="name")


@pytest.mark.parametrize("value, fault", [
    ("/var/lib/docker", "must map runtimes"),
    ({"lxc": "/var/lib/lxc"}, "'lxc' is not a runtime"),
    ({"docker": "relative"}, "docker must be an absolute path"),
])
def test_container_roots_setting_names_what_is_wrong(value, fault):
    with pytest.raises(ConfigError, match=fault):
        parse_config({"container_roots": value}, source="t.yaml")


def test_a_container_state_is_read_once_per_container_while_it_runs(tmp_path):
    roots = roots_in(tmp_path)
    tree(tmp_path / "cg", f"/system.slice/docker-{DOCKER}.scope")
    state = roots.docker / "containers" / DOCKER / "config.v2.json"
    write_json(state, {"Config": {"Labels": {"id": "billing"}}})
    known = {}
    first = expand("/system.slice/docker-*.scope", "", "label:id", tmp_path / "cg", roots, known)
    state.unlink()  # a second read would now find nothing
    again = expand("/system.slice/docker-*.scope", "", "label:id", tmp_path / "cg", roots, known)
    assert [m.identity for m in first] == [m.identity for m in again] == ["billing"]
