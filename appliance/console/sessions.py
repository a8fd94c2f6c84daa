"""The console's sessions, held server-side, so that logging out ends one (pure: time and randomness come in).

The cookie is Starlette's signed session (itsdangerous): the signature stops a
forged cookie, not a copied one. Were the cookie all there is, a copy taken
before logout (from a shared machine, a proxy's log, a browser profile) would
stay good until its max-age. So each login gets a random session id, kept in
the signed cookie and in this table, and a cookie is a session only while the
table holds its id for the same person: logout removes it, and so does the
end of the login's time.

    table = SessionTable()
    sid = table.open("ada", until=now + 3600, now=now, randomness=secrets.token_bytes)
    table.valid(sid, "ada", now)      # True until table.revoke(sid) or `until`

The table lives in the console process's memory, so restarting the console
logs everyone out. It is bounded: at most `MAX_SESSIONS_PER_PERSON` sessions of one person
(a login beyond that ends that person's own session that ends soonest) and
`MAX_SESSIONS` in all (a login beyond that first forgets the ended ones,
then the one that ends soonest).
Only a completed login (a person the provider vouched for, in a console group)
adds one: nothing a stranger sends makes the table grow.
"""

from __future__ import annotations

import base64
import hmac
import threading
from dataclasses import dataclass
from typing import Any, Callable

MAX_SESSIONS = 4096
# Sessions one person may have open at once (browsers, tabs after a logout elsewhere, machines); a login beyond
# it ends that person's own session that ends soonest. Without it, one person (an auditor, say) logging in
# MAX_SESSIONS times by script would end everyone else's sessions, approvers' among them.
MAX_SESSIONS_PER_PERSON = 32
SESSION_ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class OpenSession:
    name: str  # the person it was opened for
    until: float


class SessionTable:
    def __init__(self, max_sessions: int = MAX_SESSIONS, max_per_person: int = MAX_SESSIONS_PER_PERSON) -> None:
        self.max_sessions, self.max_per_person = max_sessions, max_per_person
        self._open: dict[str, OpenSession] = {}
        self._lock = threading.Lock()  # handlers run on the event loop; the lock keeps a worker thread safe too

    def __len__(self) -> int:
        return len(self._open)

    def open(self, name: str, *, until: float, now: float, randomness: Callable[[int], bytes]) -> str:
        """A new session's id, good for `name` until `until`."""
        sid = base64.urlsafe_b64encode(randomness(SESSION_ID_BYTES)).rstrip(b"=").decode()
        with self._lock:
            own = [s for s, o in self._open.items() if o.name == name]
            if len(own) >= self.max_per_person:
                for ended in [s for s in own if self._open[s].until <= now]:
                    del self._open[ended]
                own = [s for s in own if s in self._open]
            while len(own) >= self.max_per_person:
                soonest = min(own, key=lambda s: self._open[s].until)
                del self._open[soonest]
                own.remove(soonest)
            if len(self._open) >= self.max_sessions:
                for ended in [s for s, o in self._open.items() if o.until <= now]:
                    del self._open[ended]
            while len(self._open) >= self.max_sessions:
                del self._open[min(self._open, key=lambda s: self._open[s].until)]
            self._open[sid] = OpenSession(name, until)
        return sid

    def valid(self, sid: Any, name: str, now: float) -> bool:
        """Whether `sid` (from a cookie: anything) is an open session of `name` now."""
        if not isinstance(sid, str) or not sid:
            return False
        with self._lock:
            found = self._open.get(sid)
            if found is not None and found.until <= now:
                del self._open[sid]
                found = None
        return found is not None and hmac.compare_digest(found.name.encode(), name.encode())

    def revoke(self, sid: Any) -> bool:
        """End the session `sid`; whether it was open."""
        if not isinstance(sid, str):
            return False
        with self._lock:
            return self._open.pop(sid, None) is not None
