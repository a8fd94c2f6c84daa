"""What the console's pages show and what its actions may do, as data in and data out (pure).

No request object, no file, no clock: the shell (app.py) passes the query,
the form, the session's person and CSRF token and the time, and gets back
either a refusal (status and text) or what to do and render.

- `guard_post` is every POST's gate: a session (else 401), the session's
  CSRF token in the form (else 403), and, for votes and revocations, the
  approver role (else 403).
- `filters` keeps only the query parameters a page knows, bounded.
- `request_id_of` and `return_path` check what a URL names before it is used.
- `replay_view` turns a replay timeline into the scrubber's frames.
"""

from __future__ import annotations

import hmac
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

from appliance.audit.replay import Entry
from appliance.console.login import Person

MAX_FILTER_CHARS = 200
MAX_REASON_CHARS = 1000
LIMITS = (50, 100, 500)

# The filters each listing takes (query parameter -> the audit query's keyword).
SESSION_FILTERS = ("identity", "subject", "since")
OPERATION_FILTERS = ("identity", "topic", "session", "decision", "since")
EVENT_FILTERS = ("kind", "identity", "since")
# The event kinds the refusals view lists, beside operations that were not allowed.
REFUSAL_KINDS = ("refused-connect", "refused-session", "approval-refused", "discovery-refused")


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    text: str


@dataclass(frozen=True, slots=True)
class Vote:
    request_id: str
    approve: bool
    reason: str


def guard_post(person: Person | None, session_csrf: str | None, form: Mapping[str, Any], *,
               needs_vote: bool) -> Refusal | None:
    """None when this POST may go on; else why not, with its status."""
    if person is None:
        return Refusal(401, "no valid console session: log in first")
    given = form.get("csrf")
    if not session_csrf or not isinstance(given, str) or not hmac.compare_digest(given.encode(),
                                                                               session_csrf.encode()):
        return Refusal(403, "the form's CSRF token is missing or is not this session's: reload the page and try "
                            "again")
    if needs_vote and not person.may_vote:
        return Refusal(403, f"{person.name} is an auditor: only the approver group may approve, deny or revoke")
    return None


def reason_of(form: Mapping[str, Any]) -> str | Refusal:
    reason = form.get("reason")
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        return Refusal(400, "a reason is required: say why, for the audit")
    if len(reason) > MAX_REASON_CHARS:
        return Refusal(400, f"the reason is {len(reason)} characters; at most {MAX_REASON_CHARS}")
    return reason


def vote_of(request_id: str, action: str, form: Mapping[str, Any]) -> Vote | Refusal:
    if action not in ("approve", "deny"):
        return Refusal(404, f"no action {action!r}: approve or deny")
    reason = reason_of(form)
    if isinstance(reason, Refusal):
        return reason
    return Vote(request_id, action == "approve", reason)


# An approval request's or grant's id as the appliance makes them (approvals/model.py new_id: apr-/grt- and hex).
_ID = re.compile(r"[a-z]{3}-[0-9a-f]{1,32}")
# A page of the console a login may return to: a plain path, never another site's URL (no "//", no "\\").
_RETURN_PATH = re.compile(r"/(?:[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*)?")
MAX_RETURN_PATH_CHARS = 200


def request_id_of(text: str) -> str | Refusal:
    """The approval request id a URL names, or a 404 saying what an id looks like."""
    if not _ID.fullmatch(text):
        return Refusal(404, f"{text[:40]!r} is not an approval request id (apr- and hex digits, as `appliance "
                            "approvals list` shows them)")
    return text


def return_path(text: Any) -> str:
    """Where a login goes once done: the console page it was asked for, or / for anything else."""
    if not isinstance(text, str) or len(text) > MAX_RETURN_PATH_CHARS or not _RETURN_PATH.fullmatch(text) \
            or text.startswith(("/login", "/callback", "/logout", "/static")):
        return "/"
    return text


def who(person: Person) -> str:
    """How the audit names a console user's act."""
    return f"{person.name} (console)"


def parse_since(text: str, now: float) -> float | Refusal:
    """`since` as a time: an age with a unit (30m, 2h, 7d) before `now`, or an ISO date/time in UTC."""
    import calendar

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return now - int(text[:-1]) * units[text[-1]]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    return Refusal(400, f"since {text[:40]!r} is neither an age (30m, 2h, 7d) nor a UTC date (2026-12-07T19:00)")


def filters(query: Mapping[str, str], known: tuple[str, ...], now: float) -> tuple[dict[str, Any], int] | Refusal:
    """The page's filters from the query string (empty ones dropped), and its row limit."""
    chosen: dict[str, Any] = {}
    for key in known:
        value = (query.get(key) or "").strip()
        if not value:
            continue
        if len(value) > MAX_FILTER_CHARS or not value.isprintable():
            return Refusal(400, f"filter {key!r} must be at most {MAX_FILTER_CHARS} printable characters")
        if key == "since":
            since = parse_since(value, now)
            if isinstance(since, Refusal):
                return since
            chosen[key] = since
        else:
            chosen[key] = value
    limit_text = query.get("limit") or str(LIMITS[1])
    if not limit_text.isdigit() or int(limit_text) not in LIMITS:
        return Refusal(400, f"limit must be one of {', '.join(map(str, LIMITS))}")
    return chosen, int(limit_text)


def replay_view(session: Mapping[str, Any], entries: list[Entry]) -> dict[str, Any]:
    """The session's header and one frame per timeline entry, for the scrubber (an <input type=range>)."""
    started = session["started_at"]
    frames = [{"index": i, "at": e.at, "offset_s": round(e.at - started, 3), "kind": e.kind, "text": e.text}
              for i, e in enumerate(entries)]
    return {"session": dict(session), "frames": frames, "last": max(len(frames) - 1, 0),
            "live": session.get("ended_at") is None}


def verify_view(report: Mapping[str, Any] | None, checked_at: float | None, error: str | None) -> dict[str, Any]:
    """The verify page: the last report (cached) and when it ran, or that none has yet."""
    if error is not None:
        return {"state": "error", "error": error, "checked_at": checked_at, "report": None}
    if report is None:
        return {"state": "never", "error": None, "checked_at": None, "report": None}
    return {"state": "ok" if report["ok"] else "broken", "error": None, "checked_at": checked_at, "report": report}


class RefusalBudget:
    """How many refusals of one person (or one ended session's name) the audit records: at most `burst` in each
    `window_s`; those beyond are counted, and the next one recorded says how many were left out. A script
    POSTing refused votes as fast as the console answers would otherwise append hundreds of events a second
    to the audit database, competing with the serving proxy's own audit writes for its lock."""

    def __init__(self, burst: int = 20, window_s: float = 60.0, max_names: int = 4096) -> None:
        self.burst, self.window_s, self.max_names = burst, window_s, max_names
        self._seen: dict[str, tuple[float, int, int]] = {}  # name -> (window start, recorded, left out)

    def take(self, name: str, now: float) -> int | None:
        """None: leave this refusal out of the audit; else record it, with this many left out before it."""
        start, recorded, left_out = self._seen.get(name, (now, 0, 0))
        if now - start >= self.window_s:
            start, recorded = now, 0
        if recorded >= self.burst:
            self._seen[name] = (start, recorded, left_out + 1)
            return None
        if name not in self._seen and len(self._seen) >= self.max_names:
            self._seen.pop(next(iter(self._seen)))
        self._seen[name] = (start, recorded + 1, 0)
        return left_out

