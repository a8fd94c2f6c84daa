"""Containers and cgroup patterns as workloads (pure, over a cgroup tree and the runtimes' state files).

    find_container("3f4e9a1c2b7d", root)            # -> ContainerCgroup, or ContainerError naming why
    runtime_of("docker-3f4e...9a.scope")             # -> ("docker", "3f4e...9a"), or None
    CgroupGlob.parse("/system.slice/docker-*.scope") # a pattern enrolment's path, checked
    glob.matches(root)                               # the cgroups it names now
    identity_for(source, cgroup_path, roots)         # "unit", "match" or "label:KEY" -> identity, or why not

Each container runtime puts a container in a cgroup named after its id, in
one of a few ways (systemd driver: a scope unit; cgroupfs driver: a directory
under the runtime's parent). `RUNTIME_NAMES` lists them. The runtime's own
helper processes (conmon) get cgroups named like the container's and are not
the container; they are never matched.

A pattern enrolment names cgroups by a glob, one `fnmatch` pattern per path
component below a fixed first component, so `/*` (every top-level cgroup,
the appliance's own among them) cannot be written. The identity of each
matched cgroup comes from its unit name, from what the first `*` matched, or
from a label the container runtime recorded for the container (Docker's
`config.v2.json` Labels, or the OCI bundle's annotations for Podman,
containerd and CRI-O). Labels are read from root-owned runtime state, capped
in size, and the identity is validated like any other; a container whose
label is missing or invalid is not enrolled, and the reason is returned.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
MIN_ID_PREFIX = 12  # as `docker ps` shows them
MAX_STATE_FILE_BYTES = 4 << 20
MAX_GLOB_MATCHES = 4096

# (runtime, regular expression over a cgroup directory's name whose group 1 is the container id)
RUNTIME_NAMES: tuple[tuple[str, re.Pattern], ...] = (
    ("docker", re.compile(r"^docker-([0-9a-f]{64})\.scope$")),
    ("podman", re.compile(r"^libpod-([0-9a-f]{64})(?:\.scope)?$")),
    ("containerd", re.compile(r"^cri-containerd-([0-9a-f]{64})\.scope$")),
    ("containerd", re.compile(r"^nerdctl-([0-9a-f]{64})\.scope$")),
    ("crio", re.compile(r"^crio-([0-9a-f]{64})\.scope$")),
)
# cgroupfs drivers: /docker/ID, /<containerd namespace>/ID, kubepods/.../ID: a bare id under a parent,
# whose runtime only the parent's name may tell; "any" looks in every runtime's state.
_BARE_PARENTS = {"docker": "docker", "libpod_parent": "podman"}
_UNIT_SUFFIXES = (".service", ".scope", ".slice")


class ContainerError(ValueError):
    """A container id, pattern or label that cannot be used, naming what was wrong."""


@dataclass(frozen=True, slots=True)
class ContainerRoots:
    """Where each runtime keeps its containers' state (the `container_roots` setting)."""

    docker: Path = Path("/var/lib/docker")
    podman: Path = Path("/var/lib/containers/storage")
    containerd: Path = Path("/run/containerd")
    crio: Path = Path("/run/containers/storage")


@dataclass(frozen=True, slots=True)
class ContainerCgroup:
    runtime: str
    container_id: str
    path: str  # relative to the cgroup v2 root, starting with /


def runtime_of(name: str, parent: str = "") -> tuple[str, str] | None:
    """(runtime, container id) when a cgroup directory's name is a container's; None otherwise."""
    for runtime, pattern in RUNTIME_NAMES:
        found = pattern.match(name)
        if found:
            return runtime, found.group(1)
    if CONTAINER_ID.match(name):  # a cgroupfs driver's bare id; its parent says whose
        return _BARE_PARENTS.get(os.path.basename(parent), "any"), name
    return None


def find_container(prefix: str, root: Path) -> ContainerCgroup:
    """The one container cgroup whose id starts with `prefix` (at least 12 hex digits)."""
    wanted = prefix.lower()
    if not re.fullmatch(r"[0-9a-f]{%d,64}" % MIN_ID_PREFIX, wanted):
        raise ContainerError(f"container id {prefix!r} is not one: give at least {MIN_ID_PREFIX} of its 64 "
                             "hexadecimal digits, as `docker ps`, `podman ps` or `crictl ps` show it")
    found: dict[str, ContainerCgroup] = {}
    for directory, children, _ in os.walk(root):
        for child in children:
            known = runtime_of(child, directory)
            if known is not None and known[1].startswith(wanted):
                path = "/" + os.path.relpath(os.path.join(directory, child), root)
                # The outermost cgroup of a container: its own sub-cgroups (systemd inside it) are part of it.
                if not any(path.startswith(p.path + "/") for p in found.values()):
                    found[path] = ContainerCgroup(known[0], known[1], path)
    ids = {c.container_id for c in found.values()}
    if not found:
        raise ContainerError(f"no container whose id starts with {prefix} has a cgroup under {root} (is it "
                             "running? stopped containers have none)")
    if len(ids) > 1:
        raise ContainerError(f"container id {prefix} is ambiguous: it starts {len(ids)} containers' ids "
                             f"({', '.join(sorted(i[:16] for i in ids))}); give more digits")
    if len(found) > 1:
        raise ContainerError(f"container {prefix} has {len(found)} cgroups ({', '.join(sorted(found))}); "
                             "enrol the one meant by its path")
    return next(iter(found.values()))


@dataclass(frozen=True, slots=True)
class CgroupGlob:
    """A checked pattern over cgroup paths: a fixed first component, then fnmatch per component."""

    pattern: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, pattern: str) -> CgroupGlob:
        parts = tuple(p for p in pattern.strip().split("/") if p)
        if not parts:
            raise ContainerError(f"cgroup pattern {pattern!r} is empty")
        if any(p in (".", "..") for p in parts):
            raise ContainerError(f"cgroup pattern {pattern!r} may not contain . or .. components")
        if _has_magic(parts[0]):
            raise ContainerError(f"cgroup pattern {pattern!r} must start with a fixed component (a slice such as "
                                 "system.slice): a wildcard there would match the appliance's own cgroups")
        if "**" in pattern:
            raise ContainerError(f"cgroup pattern {pattern!r}: ** is not supported; one * matches within one "
                                 "path component")
        if not any(_has_magic(p) for p in parts):
            raise ContainerError(f"cgroup pattern {pattern!r} has no wildcard; enrol the cgroup by its path")
        return cls("/" + "/".join(parts), parts)

    def matches(self, root: Path) -> list[str]:
        """Paths (relative to root, starting with /) of the directories the pattern names now, sorted."""
        level = [root / self.parts[0]] if (root / self.parts[0]).is_dir() else []
        for part in self.parts[1:]:
            following = []
            for directory in level:
                try:
                    names = os.listdir(directory)
                except OSError:
                    continue  # removed meanwhile
                for name in names:
                    if fnmatch.fnmatchcase(name, part) and (directory / name).is_dir():
                        following.append(directory / name)
                        if len(following) > MAX_GLOB_MATCHES:
                            raise ContainerError(f"cgroup pattern {self.pattern} matches more than "
                                                 f"{MAX_GLOB_MATCHES} cgroups; narrow it")
            level = following
        return sorted("/" + str(p.relative_to(root)) for p in level)

    def first_wildcard_match(self, path: str) -> str | None:
        """What the pattern's first `*` matched in `path` (one of its matches), if it has one there."""
        parts = [p for p in path.split("/") if p]
        for part, name in zip(self.parts, parts):
            if "*" in part:
                found = re.fullmatch(_capturing_first_star(part), name)
                return found.group(1) if found else None
        return None


def _capturing_first_star(part: str) -> str:
    """One path component's fnmatch pattern as a regular expression whose group 1 is its first `*`."""
    out, captured, i = [], False, 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append(".*" if captured else "(.*)")
            captured = True
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in part[i + 2:]:
            end = part.index("]", i + 2)
            body = part[i + 1:end]
            out.append("[" + ("^" + re.escape(body[1:]) if body.startswith("!") else re.escape(body)) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


IDENTITY_SOURCES = ("unit", "match", "label:KEY")


def check_identity_source(source: str) -> str:
    if source in ("unit", "match") or (source.startswith("label:") and len(source) > len("label:")):
        return source
    raise ContainerError(f"identity source {source!r} is not one: use unit (the unit name without its suffix), "
                         "match (what the pattern's first * matched) or label:KEY (a container label)")


def identity_for(source: str, path: str, glob: CgroupGlob, roots: ContainerRoots) -> tuple[str | None, str]:
    """(identity, "") for a matched cgroup, or (None, why not). The identity is not yet validated."""
    name = path.rsplit("/", 1)[-1]
    if source == "unit":
        for suffix in _UNIT_SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)], ""
        return name, ""
    if source == "match":
        matched = glob.first_wildcard_match(path)
        return (matched, "") if matched else (None, f"the pattern's first * matched nothing in {path}")
    key = source[len("label:"):]
    known = runtime_of(name, path.rsplit("/", 1)[0])
    if known is None:
        return None, f"{path} is not a container's cgroup, so it has no label {key}"
    runtime, container_id = known
    try:
        labels = container_labels(runtime, container_id, roots)
    except ContainerError as e:
        return None, str(e)
    value = labels.get(key)
    if not isinstance(value, str) or not value:
        return None, f"container {container_id[:12]} ({runtime}) has no label {key}"
    return value, ""


def _state_files(runtime: str, container_id: str, roots: ContainerRoots) -> list[tuple[Path, str]]:
    """Where a runtime records a container's labels: (file, how to read it)."""
    if runtime == "docker":
        return [(roots.docker / "containers" / container_id / "config.v2.json", "docker")]
    if runtime == "podman":
        return [(roots.podman / "overlay-containers" / container_id / "userdata" / "config.json", "oci")]
    if runtime == "crio":
        return [(roots.crio / "overlay-containers" / container_id / "userdata" / "config.json", "oci")]
    task_dir = roots.containerd / "io.containerd.runtime.v2.task"
    try:
        namespaces = sorted(os.listdir(task_dir))
    except OSError:
        namespaces = []
    containerd = [(task_dir / ns / container_id / "config.json", "oci") for ns in namespaces]
    if runtime == "containerd":
        return containerd
    return [*_state_files("docker", container_id, roots), *_state_files("podman", container_id, roots),
            *_state_files("crio", container_id, roots), *containerd]


def container_labels(runtime: str, container_id: str, roots: ContainerRoots) -> dict:
    """A container's labels (Docker) or OCI annotations (Podman, containerd, CRI-O), from its runtime's state."""
    for path, shape in _state_files(runtime, container_id, roots):
        try:
            with open(path, "rb") as state:
                raw = state.read(MAX_STATE_FILE_BYTES + 1)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ContainerError(f"cannot read {path}: {e.strerror}") from None
        if len(raw) > MAX_STATE_FILE_BYTES:
            raise ContainerError(f"{path} is larger than {MAX_STATE_FILE_BYTES} bytes; not read")
        try:
            document = json.loads(raw)
            labels = document["Config"]["Labels"] if shape == "docker" else document.get("annotations")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ContainerError(f"{path} is not the {runtime} state the appliance reads ({type(e).__name__})") from None
        return labels if isinstance(labels, dict) else {}
    raise ContainerError(f"no state file for container {container_id[:12]} ({runtime}) under its runtime's root")


@dataclass(frozen=True, slots=True)
class PatternMatch:
    path: str  # relative to the cgroup v2 root
    identity: str | None  # None: not enrolled, for `reason`
    reason: str = ""


def expand(pattern: str, identity: str, identity_from: str, root: Path, roots: ContainerRoots,
           known: dict[str, PatternMatch] | None = None) -> list[PatternMatch]:
    """The cgroups a pattern enrolment names now, each with its identity or why it has none.

    `known`: what an earlier expansion found for some of its paths (identity or reason). A container's
    labels do not change while it runs, so a caller that expands often reads each container's state once.
    """
    from appliance.identity.enrollment import EnrollmentError, validate_identity

    glob = CgroupGlob.parse(pattern)
    out = []
    for path in glob.matches(root):
        if not identity_from:
            out.append(PatternMatch(path, identity))
            continue
        if known and path in known:
            out.append(known[path])
            continue
        found, reason = identity_for(identity_from, path, glob, roots)
        if found is not None:
            try:
                validate_identity(found)
            except EnrollmentError as e:
                found, reason = None, f"{identity_from} of {path} gives no usable identity: {e}"
        out.append(PatternMatch(path, found, reason))
        if known is not None:
            known[path] = out[-1]
    return out
