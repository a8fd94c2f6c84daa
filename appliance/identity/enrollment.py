"""Enrolment records: which cgroups are which workload identity, kept in one JSON file.

The file is the source of truth across restarts and between processes: the
CLI writes it (atomically, under a lock), the serving process re-reads it when
it changes and brings the kernel's map and its live sessions in line within a
second. A record keeps the cgroup's path and the id it had when enrolled; the
server re-resolves the path, so a cgroup recreated under the same path keeps
its identity.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.identity import state_file

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}\Z")
# A SPIFFE ID (the SPIFFE ID standard, section 2): `spiffe://`, a trust domain of lowercase letters,
# digits, `.`, `-` and `_`, then path segments of letters, digits, `.`, `-` and `_`, none empty, `.` or `..`,
# 2048 bytes at most. A JWT-SVID's `sub` is one, so a workload identity may be one; groups may not.
SPIFFE_ID_PATTERN = re.compile(r"^spiffe://[a-z0-9._-]+(/(?!\.\.?(/|\Z))[A-Za-z0-9._-]+)*\Z")
SPIFFE_ID_MAX_BYTES = 2048
NAME_RULE = "1-128 letters, digits and . _ @ : - (starting with a letter or digit)"


def is_identity_name(name: str) -> bool:
    """A name an identity may have: a plain name, or a SPIFFE ID."""
    if NAME_PATTERN.match(name):
        return True
    return len(name) <= SPIFFE_ID_MAX_BYTES and SPIFFE_ID_PATTERN.match(name) is not None


class EnrollmentError(ValueError):
    """An enrolment request or file that cannot be used, naming what was wrong."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    identity: str
    groups: tuple[str, ...]
    cgroup_path: str
    cgroup_id: int
    enrolled_at: float
    auth: str = "cgroup"  # an appliance.identity.binding.AuthMode value
    accepts: tuple[str, ...] = ()  # token identities, subjects or groups (patterns) the cgroup may present
    # "glob": cgroup_path is a pattern (appliance.identity.containers.CgroupGlob) and each cgroup it matches
    # is enrolled, as `identity` or, when identity_from is set, as what that says (unit, match, label:KEY).
    kind: str = "cgroup"
    identity_from: str = ""
    # What the proxy does with a workload that speaks TLS to its broker address: refuse (a fatal alert and
    # an audited reason) or terminate (answer the handshake with the appliance's workload CA; docs/tls.md).
    workload_tls: str = "refuse"

    @property
    def is_pattern(self) -> bool:
        return self.kind == "glob"


def validate_identity(name: str, *, what: str = "identity") -> str:
    if not is_identity_name(name or ""):
        raise EnrollmentError(f"{what} {_quoted(name)} is not valid: use {NAME_RULE}, or a SPIFFE ID "
                              "(spiffe://trust-domain/path)")
    return name


def validate_group(name: str, *, what: str = "group") -> str:
    if not NAME_PATTERN.match(name or ""):
        raise EnrollmentError(f"{what} {_quoted(name)} is not valid: use {NAME_RULE}")
    return name


def _quoted(name: str, limit: int = 160) -> str:
    return repr(name if len(name or "") <= limit else name[:limit] + "...")


def _auth_mode(value: str) -> str:
    from appliance.identity.binding import AuthMode

    try:
        return AuthMode(value).value
    except ValueError:
        raise EnrollmentError(f"auth {value!r} is not an authentication mode: use "
                              f"{', '.join(m.value for m in AuthMode)}") from None


def _accepts(values) -> list[str]:
    from appliance.policy.model import Pattern, PatternError

    if isinstance(values, str):
        raise EnrollmentError(f"accepts must be a list of patterns, not the string {values!r}")
    out = []
    for value in values:
        try:
            Pattern.parse(value)
        except PatternError as e:
            raise EnrollmentError(f"accepts pattern {e}") from None
        out.append(str(value))
    return out


def _kind(value: str) -> str:
    if value not in ("cgroup", "glob"):
        raise EnrollmentError(f"kind {value!r} is not an enrolment kind: use cgroup or glob")
    return value


WORKLOAD_TLS_MODES = ("refuse", "terminate")


def _workload_tls(value: str) -> str:
    if value not in WORKLOAD_TLS_MODES:
        raise EnrollmentError(f"workload_tls {value!r} is not a workload TLS mode: use refuse or terminate")
    return value


def _identity_from(value: str) -> str:
    from appliance.identity.containers import ContainerError, check_identity_source

    if not value:
        return ""
    try:
        return check_identity_source(value)
    except ContainerError as e:
        raise EnrollmentError(str(e)) from None


def binding_of(record: Enrollment):
    """The enrolment as `appliance.identity.binding` binds it to a workload's proof."""
    from appliance.identity.binding import AuthMode, Binding
    from appliance.policy.model import Pattern

    return Binding(record.identity, record.groups, AuthMode(record.auth),
                   tuple(Pattern.parse(a) for a in record.accepts))


class EnrollmentStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _locked(self):
        return state_file.locked(self.path)

    def load(self) -> dict[str, Enrollment]:
        """Enrolments keyed by cgroup path."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            raw = json.loads(text)
            return {
                item["cgroup_path"]: Enrollment(
                    identity=item["identity"], groups=tuple(item.get("groups", ())),
                    cgroup_path=item["cgroup_path"], cgroup_id=int(item["cgroup_id"]),
                    enrolled_at=float(item["enrolled_at"]),
                    auth=_auth_mode(item.get("auth", "cgroup")),
                    accepts=tuple(_accepts(item.get("accepts", ()))),
                    kind=_kind(item.get("kind", "cgroup")),
                    identity_from=_identity_from(item.get("identity_from", "")),
                    workload_tls=_workload_tls(item.get("workload_tls", "refuse")),
                )
                for item in raw["enrollments"]
            }
        except (ValueError, KeyError, TypeError) as e:
            raise EnrollmentError(f"{self.path}: enrolment file is damaged ({e}); fix or remove it") from None

    def _save(self, enrollments: dict[str, Enrollment]) -> None:
        data = {"enrollments": [asdict(e) for e in sorted(enrollments.values(), key=lambda e: e.cgroup_path)]}
        state_file.replace_private(self.path, json.dumps(data, indent=2) + "\n")

    def enroll(self, *, identity: str, groups: tuple[str, ...], cgroup_path: str, cgroup_id: int,
               auth: str = "cgroup", accepts: tuple[str, ...] = (), kind: str = "cgroup",
               identity_from: str = "", workload_tls: str = "refuse") -> Enrollment:
        if identity_from:
            if kind != "glob":
                raise EnrollmentError("an identity taken from each cgroup (identity_from) needs a cgroup pattern")
            identity = ""
        else:
            validate_identity(identity)
        for g in groups:
            validate_group(g)
        record = Enrollment(identity, tuple(groups), cgroup_path, cgroup_id, time.time(), _auth_mode(auth),
                            tuple(_accepts(accepts)), _kind(kind), _identity_from(identity_from),
                            _workload_tls(workload_tls))
        with self._locked():
            current = self.load()
            current[cgroup_path] = record
            self._save(current)
        return record

    def unenroll(self, cgroup_path: str) -> Enrollment:
        with self._locked():
            current = self.load()
            record = current.pop(cgroup_path, None)
            if record is None:
                known = ", ".join(sorted(current)) or "none"
                raise EnrollmentError(f"cgroup {cgroup_path!r} is not enrolled (enrolled: {known})")
            self._save(current)
        return record

    def stamp(self) -> int:
        """A value that changes whenever the file does (its mtime), for cheap polling."""
        return state_file.stamp(self.path)
