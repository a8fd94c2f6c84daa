"""The console's HTTP shell: Starlette routes over login.py and pages.py (pure) and state.py (the files).

    app = make_app(config, state, provider, session_key)     # an ASGI app; `appliance console` serves it

Each handler reads the request, asks the pure core what it may do, does the
I/O (the provider, the store, the audit) in a worker thread, and renders a
Jinja2 template. The session is Starlette's signed cookie (itsdangerous;
HttpOnly, SameSite=Lax, Secure when the console serves TLS) carrying a session
id that must also be open in the process's SessionTable (sessions.py), so
logout ends it even for a copy of the cookie. Pages without a valid session
redirect to /login; a POST without one is a 401, and a POST whose CSRF token
is not the session's a 403.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from appliance.approvals.decisions import refused_revoke_event, refused_vote_event, revoke_event, vote_event
from appliance.approvals.model import ApprovalError, Approver, State, expired
from appliance.approvals.rows import grant_row, request_row
from appliance.audit.replay import ReplayError
from appliance.config import Config
from appliance.console import login, pages
from appliance.console.login import LoginRefused, Pending, Person
from appliance.console.provider import ConsoleProvider
from appliance.console.sessions import SessionTable
from appliance.console.state import ConsoleState
from appliance.identity.provider_http import ProviderError

TEMPLATES = Path(__file__).resolve().parent / "templates"
COOKIE = "appliance_console"


def _left_out(n: int) -> str:
    return f" ({n} more refused before this one were left out of the audit)" if n else ""


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


class Console:
    def __init__(self, config: Config, state: ConsoleState, provider: ConsoleProvider) -> None:
        self.config, self.settings, self.state, self.provider = config, config.console, state, provider
        self.open_sessions = SessionTable()  # logins in force (sessions.py)
        self.refusal_budget = pages.RefusalBudget()  # how many of one person's refusals the audit records
        import jinja2

        # Every value is escaped: identities, commands, topics and reasons come from workloads and people.
        self.templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                                                                autoescape=True))
        self.templates.env.filters["when"] = _when

    # ---- helpers --------------------------------------------------------------------

    def person(self, request: Request) -> Person | None:
        """The person whose session this request carries, while that session is open (not logged out, not
        ended); else None."""
        now = time.time()
        person = Person.from_dict(request.session.get("person"), now)
        if person is None or not self.open_sessions.valid(request.session.get("sid"), person.name, now):
            return None
        return person

    @staticmethod
    def ended_session_of(request: Request) -> str | None:
        """The name in a signed cookie whose session is no longer open (logged out, ended, or from before a
        restart): someone is replaying an old cookie, or a tab was left open."""
        data = request.session.get("person")
        name = data.get("name") if isinstance(data, dict) else None
        return name[:128] if isinstance(name, str) and name else None

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        person = self.person(request)
        return self.templates.TemplateResponse(request, name, {
            "person": person, "csrf": request.session.get("csrf", ""), "page": name.removesuffix(".html"),
            "flash": request.session.pop("flash", None),
            **context}, status_code=status)

    def refuse(self, request: Request, refusal: pages.Refusal | LoginRefused) -> Response:
        text = refusal.text if isinstance(refusal, pages.Refusal) else refusal.reason
        return self.render(request, "refused.html", {"reason": text}, status=refusal.status)

    def page(self, handler):
        """A GET page: with a valid session, the handler's answer; without, a redirect to /login, which comes
        back here once the person has logged in (a link from an approval webhook lands on its request)."""
        async def wrapped(request: Request) -> Response:
            person = self.person(request)
            if person is None:
                back = pages.return_path(request.url.path)
                return RedirectResponse("/login" if back == "/" else f"/login?{urlencode({'next': back})}",
                                        status_code=303)
            return await handler(request, person)
        return wrapped

    async def guarded(self, request: Request, *, needs_vote: bool) -> tuple[Person | None, Any]:
        form = await request.form()
        person = self.person(request)
        refusal = pages.guard_post(person, request.session.get("csrf"), form, needs_vote=needs_vote)
        if refusal is not None:
            if person is not None:
                if (left_out := self.refusal_budget.take(person.name, time.time())) is not None:
                    await run_in_threadpool(self.state.record, "console-refused",
                                            f"console request {request.method} {request.url.path} by {person.name} "
                                            f"refused: {refusal.text}{_left_out(left_out)}", by=pages.who(person),
                                            path=request.url.path, **({"left_out": left_out} if left_out else {}))
            elif (ended := self.ended_session_of(request)) is not None:
                if (left_out := self.refusal_budget.take(f"ended:{ended}", time.time())) is not None:
                    await run_in_threadpool(self.state.record, "console-refused",
                                            f"console request {request.method} {request.url.path} with an ended "
                                            f"session of {ended} refused: {refusal.text}{_left_out(left_out)}",
                                            by=f"{ended} (console)", path=request.url.path, session="ended",
                                            **({"left_out": left_out} if left_out else {}))
            return None, (PlainTextResponse(refusal.text, status_code=refusal.status) if person is None
                          else self.refuse(request, refusal))
        return person, form

    # ---- login ------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if self.person(request) is not None:
            # Already logged in: back to the page asked for, the session kept. A GET is all another site can
            # make a browser send with its SameSite=Lax cookie; it must not end an approver's session.
            return RedirectResponse(pages.return_path(request.query_params.get("next")), status_code=303)
        try:
            endpoints = await run_in_threadpool(self.provider.endpoints)
        except ProviderError as e:
            return self.refuse(request, LoginRefused(f"the identity provider cannot be asked: {e}", 502))
        pending, url = login.start_login(endpoints.authorization, self.settings, secrets.token_bytes)
        self.open_sessions.revoke(request.session.get("sid"))  # a new login ends this browser's old session
        request.session.clear()
        request.session["login"] = pending.as_dict()
        request.session["next"] = pages.return_path(request.query_params.get("next"))
        return RedirectResponse(url, status_code=303)

    async def callback(self, request: Request) -> Response:
        pending = Pending.from_dict(request.session.get("login"))
        code = login.check_callback(pending, request.query_params)
        if isinstance(code, LoginRefused):
            return self.refuse(request, code)
        assert pending is not None
        request.session.pop("login", None)  # one redirect per login: a replayed one finds no state
        try:
            answer = await run_in_threadpool(self.provider.exchange, code, pending.code_verifier)
            id_token = answer.get("id_token")
            keys = await run_in_threadpool(self.provider.keys_for, id_token if isinstance(id_token, str) else "")
        except ProviderError as e:
            return self.refuse(request, LoginRefused(f"the login could not be completed: {e}", 502))
        person = login.finish_login(pending, id_token, keys, self.settings, time.time())
        if isinstance(person, LoginRefused):
            await run_in_threadpool(self.state.record, "console-refused", f"console login refused: {person.reason}")
            return self.refuse(request, person)
        back = pages.return_path(request.session.get("next"))
        request.session.clear()
        request.session["person"] = person.as_dict()
        request.session["sid"] = self.open_sessions.open(person.name, until=person.until, now=time.time(),
                                                    randomness=secrets.token_bytes)
        request.session["csrf"] = secrets.token_urlsafe(32)
        await run_in_threadpool(self.state.record, "console-login",
                                f"{person.name} logged in to the console as {', '.join(person.roles)}",
                                by=pages.who(person), subject=person.subject, roles=list(person.roles))
        return RedirectResponse(back, status_code=303)

    async def logout(self, request: Request) -> Response:
        person, form = await self.guarded(request, needs_vote=False)
        if person is None:
            return form
        self.open_sessions.revoke(request.session.get("sid"))  # server-side: a copy of the cookie ends here too
        request.session.clear()
        await run_in_threadpool(self.state.record, "console-logout", f"{person.name} logged out of the console",
                                by=pages.who(person))
        # Not to /login: the provider's own session would log the browser straight back in.
        return RedirectResponse("/logged-out", status_code=303)

    async def logged_out(self, request: Request) -> Response:
        return self.render(request, "logged-out.html", {})

    # ---- pages --------------------------------------------------------------------------

    async def live(self, request: Request, person: Person) -> Response:
        status = await run_in_threadpool(self.state.status)
        return self.render(request, "live.html", {"status": status,
                                                  "sessions": (status or {}).get("sessions", [])})

    async def listing(self, request: Request, what: str, known: tuple[str, ...]) -> Response:
        chosen = pages.filters(request.query_params, known, time.time())
        if isinstance(chosen, pages.Refusal):
            return self.refuse(request, chosen)
        filters, limit = chosen
        try:
            rows = await run_in_threadpool(lambda: self.state.query(what, **filters, limit=limit))
        except FileNotFoundError as e:
            return self.refuse(request, pages.Refusal(404, str(e)))
        return self.render(request, f"{what}.html", {"rows": rows, "query": dict(request.query_params),
                                                     "known": known, "limits": pages.LIMITS, "limit": limit})

    async def sessions(self, request: Request, person: Person) -> Response:
        return await self.listing(request, "sessions", pages.SESSION_FILTERS)

    async def operations(self, request: Request, person: Person) -> Response:
        return await self.listing(request, "operations", pages.OPERATION_FILTERS)

    async def events(self, request: Request, person: Person) -> Response:
        return await self.listing(request, "events", pages.EVENT_FILTERS)

    async def refusals(self, request: Request, person: Person) -> Response:
        try:
            operations, events = await run_in_threadpool(self.state.refusals, pages.REFUSAL_KINDS, 100)
        except FileNotFoundError as e:
            return self.refuse(request, pages.Refusal(404, str(e)))
        return self.render(request, "refusals.html", {"operations": operations, "events": events})

    async def approvals(self, request: Request, person: Person) -> Response:
        pending = await run_in_threadpool(self.state.requests, State.PENDING)
        recent = await run_in_threadpool(self.state.requests, None, 50)
        return self.render(request, "approvals.html", {
            "pending": [request_row(r) for r in pending],
            "recent": [request_row(r) for r in recent if r.state != State.PENDING]})

    async def approval(self, request: Request, person: Person) -> Response:
        """One request, any state, with its votes, and the approve and deny forms while it is pending: where
        the webhook's links lead. Showing it never acts; the forms POST with the session's CSRF token."""
        request_id = pages.request_id_of(request.path_params["request_id"])
        if isinstance(request_id, pages.Refusal):
            return self.refuse(request, request_id)
        try:
            found = await run_in_threadpool(self.state.request, request_id)
        except ApprovalError as e:
            return self.refuse(request, pages.Refusal(404, str(e)))
        row, open_ = request_row(found), found.state == State.PENDING and not expired(found, time.time())
        if found.state == State.PENDING and not open_:
            row["state"] = str(State.EXPIRED)  # past its time; serve marks it so within a second
        return self.render(request, "approval.html", {"r": row, "pending": open_})

    async def grants(self, request: Request, person: Person) -> Response:
        now = time.time()
        everything = request.query_params.get("all") == "1"
        rows = await run_in_threadpool(self.state.grants, None if everything else now)
        return self.render(request, "grants.html", {"grants": [grant_row(g, now) for g in rows],
                                                    "everything": everything})

    async def replay(self, request: Request, person: Person) -> Response:
        try:
            session, entries = await run_in_threadpool(self.state.timeline, request.path_params["session_id"])
        except ReplayError as e:
            return self.refuse(request, pages.Refusal(404, str(e)))
        except FileNotFoundError as e:
            return self.refuse(request, pages.Refusal(404, str(e)))
        return self.render(request, "replay.html", pages.replay_view(session, entries))

    async def verify_page(self, request: Request, person: Person) -> Response:
        view = pages.verify_view(self.state.verified, self.state.verified_at, self.state.verify_error)
        return self.render(request, "verify.html", view)

    # ---- actions ------------------------------------------------------------------------

    async def vote(self, request: Request) -> Response:
        person, form = await self.guarded(request, needs_vote=True)
        if person is None:
            return form
        request_id = request.path_params["request_id"]
        chosen = pages.vote_of(request_id, request.path_params["action"], form)
        if isinstance(chosen, pages.Refusal):
            return self.refuse(request, chosen)
        by = pages.who(person)
        try:
            decided, grant = await run_in_threadpool(self.state.vote, request_id, Approver(person.name,
                                                                                            person.groups),
                                                     chosen.approve, chosen.reason)
        except ApprovalError as e:
            if (left_out := self.refusal_budget.take(person.name, time.time())) is not None:
                kind, message, detail = refused_vote_event(request_id, who=by, approve=chosen.approve, fault=str(e))
                await run_in_threadpool(lambda: self.state.record(kind, message + _left_out(left_out), **detail,
                                                                  **({"left_out": left_out} if left_out else {})))
            return self.refuse(request, pages.Refusal(409, str(e)))
        kind, message, detail = vote_event(decided, grant, who=by, approve=chosen.approve, reason=chosen.reason)
        await run_in_threadpool(lambda: self.state.record(kind, message, identity=decided.identity,
                                                          session_id=decided.session_id, **detail))
        request.session["flash"] = message
        # Back to where the vote was cast: the request's own page (two fixed places, never a URL from the form).
        return RedirectResponse(f"/approvals/{decided.id}" if form.get("from") == "request" else "/approvals",
                                status_code=303)

    async def revoke(self, request: Request) -> Response:
        person, form = await self.guarded(request, needs_vote=True)
        if person is None:
            return form
        grant_id = request.path_params["grant_id"]
        reason = pages.reason_of(form)
        if isinstance(reason, pages.Refusal):
            return self.refuse(request, reason)
        by = pages.who(person)
        try:
            grant = await run_in_threadpool(self.state.revoke, grant_id, by, reason, person.groups)
        except ApprovalError as e:
            if (left_out := self.refusal_budget.take(person.name, time.time())) is not None:
                kind, message, detail = refused_revoke_event(grant_id, who=by, fault=str(e))
                await run_in_threadpool(lambda: self.state.record(kind, message + _left_out(left_out), **detail,
                                                                  **({"left_out": left_out} if left_out else {})))
            return self.refuse(request, pages.Refusal(409, str(e)))
        kind, message, detail = revoke_event(grant, who=by, reason=reason)
        await run_in_threadpool(lambda: self.state.record(kind, message, identity=grant.identity, **detail))
        request.session["flash"] = message
        return RedirectResponse("/grants", status_code=303)

    async def verify_now(self, request: Request) -> Response:
        person, form = await self.guarded(request, needs_vote=False)
        if person is None:
            return form
        if not await run_in_threadpool(self.state.verify):
            request.session["flash"] = "a verify is already under way; its result shows here once it is done"
            return RedirectResponse("/verify", status_code=303)
        report = self.state.verified
        outcome = ("could not run: " + str(self.state.verify_error)) if report is None else \
            ("ok" if report["ok"] else f"broken: {report['first_fault']}")
        await run_in_threadpool(lambda: self.state.record(
            "console-verify", f"{person.name} verified the audit record from the console: {outcome}",
            by=pages.who(person), ok=None if report is None else report["ok"]))
        return RedirectResponse("/verify", status_code=303)

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login), Route("/callback", self.callback),
            Route("/logout", self.logout, methods=["POST"]), Route("/logged-out", self.logged_out),
            Route("/", self.page(self.live)), Route("/sessions", self.page(self.sessions)),
            Route("/operations", self.page(self.operations)), Route("/events", self.page(self.events)),
            Route("/refusals", self.page(self.refusals)), Route("/approvals", self.page(self.approvals)),
            Route("/approvals/{request_id}", self.page(self.approval)),
            Route("/approvals/{request_id}/{action}", self.vote, methods=["POST"]),
            Route("/grants", self.page(self.grants)),
            Route("/grants/{grant_id}/revoke", self.revoke, methods=["POST"]),
            Route("/sessions/{session_id}/replay", self.page(self.replay)),
            Route("/verify", self.page(self.verify_page)), Route("/verify", self.verify_now, methods=["POST"]),
        ]


def _security_headers(tls: bool):
    async def dispatch(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        if tls:  # a browser that has seen it once never tries the console in the clear again
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response
    return dispatch


# The largest request body the console reads: its forms are a CSRF token, a reason of at most 1000 characters
# and a field or two. Anyone who can reach the port may POST, and the form is parsed before the session is
# looked at, so a body is bounded before it is read (Starlette's own form limits are 1000 fields of 1 MiB each,
# and multipart files are spooled to disk without a bound).
MAX_BODY_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"


class BoundedBody:
    """ASGI middleware: a request with a body must be a urlencoded form (else 415) of at most MAX_BODY_BYTES
    (else 413, by its Content-Length before anything is read, or once the stream passes the bound), arriving
    within `body_timeout_s` (else 408)."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = 10.0) -> None:
        self.app, self.max_bytes, self.body_timeout_s = app, max_bytes, body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind and kind != FORM_TYPE.encode():
            await _refuse(send, 415, f"a console form is {FORM_TYPE}, not {kind.decode('latin-1')[:80]}")
            return
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _refuse(send, 413, f"a console form is at most {self.max_bytes} bytes")
            return
        body, more = b"", True
        try:
            async with asyncio.timeout(self.body_timeout_s):  # a body sent a byte at a time holds no connection
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > self.max_bytes:
                        await _refuse(send, 413, f"a console form is at most {self.max_bytes} bytes")
                        return
        except TimeoutError:
            await _refuse(send, 408, f"the form did not arrive within {self.body_timeout_s:g} s")
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)


async def _refuse(send, status: int, text: str) -> None:
    await PlainTextResponse(text, status_code=status, headers={"Connection": "close"})(
        {"type": "http"}, None, send)


def make_app(config: Config, state: ConsoleState, provider: ConsoleProvider, session_key: bytes) -> Starlette:
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    console = Console(config, state, provider)
    routes = console.routes() + [Mount("/static", StaticFiles(directory=str(TEMPLATES / "static")), name="static")]
    return Starlette(routes=routes, middleware=[
        Middleware(BaseHTTPMiddleware, dispatch=_security_headers(config.console.tls is not None)),
        Middleware(BoundedBody),
        Middleware(SessionMiddleware, secret_key=session_key.hex(), session_cookie=COOKIE,
                   max_age=int(config.console.session_s), same_site="lax", https_only=config.console.tls is not None),
    ])
