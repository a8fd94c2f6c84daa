"""Containers as workloads: enrolled by id, or by a cgroup pattern with each identity from a container label.

The cgroups are real (made under the v2 hierarchy with the names Docker's and
Podman's systemd drivers give them) and so are the processes in them, the
kernel's steering, the proxy and the broker. What stands in for the runtime is
its state file, written where `container_roots` (the suite's config) points:
the label a container was started with.
"""

from __future__ import annotations

import errno
import json
import secrets

import pytest

from tests.integration.conftest import BROKER4, CONTAINER_STATE, WORKLOAD_PARENT, audit, cli, eventually
from tests.integration.fixtures import Cgroup
from appliance.identity import cgroups

pytestmark = pytest.mark.integration
LABEL = "appliance.identity"


@pytest.fixture
def containers(appliance):
    """Make container-shaped cgroups under one fresh parent; remove them and their state afterwards."""
    parent = f"{WORKLOAD_PARENT}/containers-{secrets.token_hex(3)}"
    made: list[tuple[Cgroup, object]] = []

    def make(name_of, label: str | None = None, runtime: str = "docker") -> tuple[Cgroup, str]:
        container_id = secrets.token_hex(32)
        cg = Cgroup(cgroups.ensure(f"{parent}/{name_of(container_id)}"))
        state = None
        if runtime == "docker":
            state = CONTAINER_STATE / "docker" / "containers" / container_id / "config.v2.json"
            document = {"Config": {"Labels": {LABEL: label} if label else {}}}
        else:
            state = CONTAINER_STATE / "podman" / "overlay-containers" / container_id / "userdata" / "config.json"
            document = {"annotations": {LABEL: label} if label else {}}
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(document))
        made.append((cg, state))
        return cg, container_id

    make.parent = parent
    yield make
    for cg, state in made:
        cg.cleanup()
        state.unlink(missing_ok=True)
    cgroups.remove(cgroups.ensure(parent))


def docker_scope(container_id: str) -> str:
    return f"docker-{container_id}.scope"


def enrolled_ids(appliance) -> dict[int, str]:
    return {w["cgroup_id"]: w["identity"] for w in (appliance.status() or {}).get("workloads", [])}


def test_a_pattern_enrols_each_container_as_its_label_now_and_later(appliance, config_path, containers):
    labelled, _ = containers(docker_scope, label="orders")
    unlabelled, _ = containers(docker_scope)
    pattern = f"/{containers.parent}/docker-*.scope"
    out = cli(config_path, "enroll", "--glob", pattern, "--identity-from", f"label:{LABEL}").stdout
    assert f"enrolled cgroups matching {pattern} as identity from label:{LABEL}; 2 match now" in out
    try:
        eventually(lambda: enrolled_ids(appliance).get(labelled.cgroup.id) == "orders", timeout=5,
                   message="the labelled container enrolled as its label")
        assert unlabelled.cgroup.id not in enrolled_ids(appliance)
        listed = {r["cgroup_path"]: r["identity"] for r in json.loads(cli(config_path, "workloads", "--json").stdout)}
        assert listed[pattern] == f"from label:{LABEL}" and listed[labelled.cgroup.path] == "orders"
        assert listed[unlabelled.cgroup.path].startswith("(none: ")

        # Its client goes through the proxy, attributed to the label's identity and the container's cgroup.
        result = labelled.client("raw.py", "ask", "127.0.0.1", "39092")
        assert result["errno"] == 0 and result["reply_bytes"] > 0, result
        session = eventually(lambda: next((s for s in audit(config_path, "sessions", "--identity", "orders")
                                           if s["pid"] == result["pid"]), None), message="the container's session")
        assert session["cgroup_path"] == labelled.cgroup.path and session["broker_address"] == BROKER4

        # The container without the label is not enrolled: refused in the kernel, and the audit says why.
        refused = unlabelled.client("raw.py", "connect", "127.0.0.1", "39092")
        assert refused["errno"] == errno.ECONNREFUSED, refused
        skipped = eventually(lambda: [e for e in audit(config_path, "events", "--kind", "enroll-skipped")
                                      if e["cgroup_path"] == unlabelled.cgroup.path] or None,
                             message="the unlabelled container's skip audited")
        assert len(skipped) == 1 and f"has no label {LABEL}" in skipped[0]["message"]

        # A container started after the enrolment is enrolled within the pattern's interval.
        later, _ = containers(docker_scope, label="orders")
        eventually(lambda: enrolled_ids(appliance).get(later.cgroup.id) == "orders", timeout=3,
                   message="a later container enrolled")
        assert later.client("raw.py", "ask", "127.0.0.1", "39092")["reply_bytes"] > 0
    finally:
        cli(config_path, "unenroll", pattern)
    eventually(lambda: labelled.cgroup.id not in enrolled_ids(appliance), timeout=5, message="pattern withdrawn")
    assert labelled.client("raw.py", "connect", "127.0.0.1", "39092")["errno"] == errno.ECONNREFUSED


def test_a_container_is_enrolled_by_its_id(appliance, config_path, containers):
    podman, container_id = containers(lambda i: f"libpod-{i}.scope", runtime="podman")
    containers(lambda i: f"libpod-conmon-{container_id}.scope", runtime="podman")  # its monitor: never the container
    out = cli(config_path, "enroll", "--container", container_id[:12], "--identity", "orders").stdout
    assert f"enrolled container {container_id[:12]} (podman): {podman.cgroup.path}" in out
    try:
        eventually(lambda: enrolled_ids(appliance).get(podman.cgroup.id) == "orders", timeout=5,
                   message="the container enrolled")
        result = podman.client("raw.py", "ask", "127.0.0.1", "39092")
        assert result["errno"] == 0 and result["reply_bytes"] > 0, result
        eventually(lambda: any(s["pid"] == result["pid"] and s["cgroup_path"] == podman.cgroup.path
                               for s in audit(config_path, "sessions", "--identity", "orders")),
                   message="the container's session audited")
        event = [e for e in audit(config_path, "events", "--kind", "enroll") if e["cgroup_path"] == podman.cgroup.path][-1]
        assert json.loads(event["detail"])["container"] == container_id
    finally:
        cli(config_path, "unenroll", podman.cgroup.path)


def test_container_ids_and_patterns_that_name_nothing_usable_are_refused(appliance, config_path):
    unknown = cli(config_path, "enroll", "--container", "0123456789ab", "--identity", "orders", check=False)
    assert unknown.returncode != 0 and "no container whose id starts with 0123456789ab" in unknown.stderr
    wide = cli(config_path, "enroll", "--glob", "/*", "--identity", "orders", check=False)
    assert wide.returncode != 0 and "must start with a fixed component" in wide.stderr
    both = cli(config_path, "enroll", "--glob", "/system.slice/x-*.scope", check=False)
    assert both.returncode != 0 and "give --identity, or --identity-from with --glob" in both.stderr
