"""Revoked credentials: subjects, token ids, identities and client ids an operator cut off (`appliance revoke`).

One root-only JSON file is the source of truth across restarts: the CLI
appends to it (atomically, under a lock), and the serving process re-reads
it when it changes, ends the live sessions it covers and refuses their
credentials from then on. A revocation may end (`until`); one without an end
stands until it is withdrawn (`appliance revoke --withdraw`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.identity import state_file
from appliance.identity.binding import Proof

KINDS = ("subject", "jti", "identity", "client_id")


class RevocationError(ValueError):
    """A revocation request or file that cannot be used, naming what was wrong."""


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: str  # one of KINDS
    value: str
    at: float  # when it was made
    by: str  # who made it (the operator's login and uid)
    reason: str
    until: float | None = None  # None: until withdrawn

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def covers(self, proof: Proof | None, identity: str, now: float) -> bool:
        if not self.active(now):
            return False
        if self.kind == "identity":
            # The session's identity, and the one the proof names: a cgroup+token (or cgroup) enrolment that
            # accepts a revoked identity's tokens must refuse them too, though its sessions take its own name.
            return identity == self.value or (proof is not None and proof.identity == self.value)
        if proof is None:
            return False
        return {"subject": proof.subject, "jti": proof.jti, "client_id": proof.client_id}[self.kind] == self.value

    def describe(self) -> str:
        until = "" if self.until is None else f" until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.until))}"
        return f"{self.kind.replace('_', ' ')} {self.value!r} revoked by {self.by}{until}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Revocations:
    entries: tuple[Revocation, ...] = ()

    def covering(self, proof: Proof | None, identity: str, now: float) -> Revocation | None:
        return next((r for r in self.entries if r.covers(proof, identity, now)), None)


class RevocationStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _locked(self):
        return state_file.locked(self.path)

    def load(self) -> Revocations:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Revocations()
        try:
            raw = json.loads(text)
            entries = tuple(Revocation(kind=str(e["kind"]), value=str(e["value"]), at=float(e["at"]),
                                       by=str(e["by"]), reason=str(e["reason"]),
                                       until=None if e.get("until") is None else float(e["until"]))
                            for e in raw["revocations"])
        except (ValueError, KeyError, TypeError) as e:
            raise RevocationError(f"{self.path}: revocation file is damaged ({e}); fix or remove it") from None
        bad = [e.kind for e in entries if e.kind not in KINDS]
        if bad:
            raise RevocationError(f"{self.path}: unknown revocation kind {bad[0]!r}; kinds are {', '.join(KINDS)}")
        return Revocations(entries)

    def _save(self, revocations: Revocations) -> None:
        state_file.replace_private(self.path, json.dumps({"revocations": [asdict(r) for r in revocations.entries]}, indent=2) + "\n")

    def revoke(self, kind: str, value: str, *, by: str, reason: str, until: float | None,
               now: float | None = None) -> Revocation:
        if kind not in KINDS:
            raise RevocationError(f"{kind!r} is not something that can be revoked; use one of {', '.join(KINDS)}")
        if not value or len(value) > 1024:
            raise RevocationError(f"the {kind} to revoke must be 1-1024 characters")
        now = time.time() if now is None else now
        if until is not None and until <= now:
            raise RevocationError("--until is in the past: the revocation would never apply")
        record = Revocation(kind, value, now, by, reason, until)
        with self._locked():
            current = self.load()
            # Expired revocations are dropped as new ones are made, so the file stays small.
            kept = tuple(r for r in current.entries if r.active(now))
            self._save(Revocations(kept + (record,)))
        return record

    def withdraw(self, kind: str, value: str) -> int:
        with self._locked():
            current = self.load()
            kept = tuple(r for r in current.entries if not (r.kind == kind and r.value == value))
            self._save(Revocations(kept))
        return len(current.entries) - len(kept)

    def stamp(self) -> int:
        """A value that changes whenever the file does (its mtime), for cheap polling."""
        return state_file.stamp(self.path)
