"""Telling people about a held request: the rule's webhook gets a Slack-compatible message, retried.

`message(request, console_url)` is the JSON posted: Slack's incoming-webhook
shape, a `text` line (what most receivers show) and `blocks` with who asks,
what for, under which rule, until when, and how to decide. With the web
console configured (docs/console.md), both also carry links to the request's
page there, `<console>/approvals/<request id>`, whose approve and deny forms
act only on a POST with the person's session and CSRF token: following a
link never decides anything. `Webhooks` posts it from the
serving process with the one bounded, verified HTTP client
(identity/provider_http.py) in a thread, never on the event loop: up to
`ATTEMPTS` tries, waiting 1, 2, 4 and 8 s between them, then the request is
audited `approval-notified` (with the attempt that got through) or an `error`
naming the URL and the last fault. At most `MAX_IN_FLIGHT` notifications are
under way; one beyond it is not sent and says so, so a workload filing
requests cannot make the appliance hold unbounded work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import Any, Awaitable, Callable

from appliance.approvals.model import ApprovalRequest
from appliance.identity.provider_http import ProviderError, ProviderHttp

log = logging.getLogger("appliance")
ATTEMPTS = 5
FIRST_DELAY_S = 1.0
MAX_IN_FLIGHT = 64


def console_link(console_url: str, request_id: str) -> str:
    """The request's page in the web console."""
    return f"{console_url.rstrip('/')}/approvals/{urllib.parse.quote(request_id, safe='')}"


def message(request: ApprovalRequest, console_url: str | None = None) -> dict[str, Any]:
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(request.expires_at))
    needs = "; ".join(n.describe() for n in request.needs)
    approval = request.approval
    how = (f"appliance approvals approve {request.id} --reason ...   /   "
           f"appliance approvals deny {request.id} --reason ...")
    text = (f"Approval needed: {request.identity} asks for {needs} ({request.api}), rule {request.rule}; "
            f"request {request.id}, open until {until}")
    link = None if console_url is None else console_link(console_url, request.id)
    if link is not None:
        text += f"; approve or deny at {link}"
    links = [] if link is None else [{"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": "Approve…"}, "style": "primary",
         "url": f"{link}#approve"},
        {"type": "button", "text": {"type": "plain_text", "text": "Deny…"}, "style": "danger",
         "url": f"{link}#deny"},
    ]}]
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Approval needed* for `{request.identity}`"}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*Wants*\n{needs}"},
                {"type": "mrkdwn", "text": f"*Kafka API*\n{request.api}"},
                {"type": "mrkdwn", "text": f"*Rule*\n{request.rule}"},
                {"type": "mrkdwn", "text": f"*Approvals needed*\n{approval.approvals} from "
                                           f"{', '.join(approval.approver_groups)}"},
                {"type": "mrkdwn", "text": f"*Request*\n{request.id}"},
                {"type": "mrkdwn", "text": f"*Open until*\n{until}"},
            ]},
            *links,
            {"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"Decide in the console (<{link}|request {request.id}>) or on the gateway: `{how}`" if link
                else f"Decide on the gateway: `{how}`")}]},
        ],
    }


class Webhooks:
    def __init__(self, http: ProviderHttp, event: Callable[..., None], *, console_url: str | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, first_delay_s: float = FIRST_DELAY_S) -> None:
        self.http = http
        self.event = event
        self.console_url = console_url  # the web console's URL when it is enabled: messages link to it
        self.sleep = sleep
        self.first_delay_s = first_delay_s
        self._tasks: set[asyncio.Task] = set()

    def notify(self, request: ApprovalRequest) -> None:
        """Post the request's message to its rule's webhook, if it has one (from the event loop)."""
        url = request.approval.webhook
        if url is None:
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self._failed(request, url, f"not sent: {MAX_IN_FLIGHT} notifications are already under way")
            return
        task = asyncio.get_running_loop().create_task(self._send(request, url))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, request: ApprovalRequest, url: str) -> None:
        document, fault, delay = message(request, self.console_url), "", self.first_delay_s
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await asyncio.to_thread(self.http.post_json, url, document, "approval webhook")
            except ProviderError as e:
                fault = str(e)
                if attempt < ATTEMPTS:
                    await self.sleep(delay)
                    delay *= 2
                continue
            self.event("approval-notified", f"approval request {request.id} posted to its rule's webhook "
                                            f"(attempt {attempt})", identity=request.identity,
                       session_id=request.session_id, detail={"request": request.id, "url": url,
                                                              "attempt": attempt})
            return
        self._failed(request, url, f"{ATTEMPTS} attempts failed; the last: {fault}")

    def _failed(self, request: ApprovalRequest, url: str, why: str) -> None:
        text = f"approval request {request.id}: its rule's webhook {url} was not told: {why}"
        log.warning("%s", text)
        self.event("error", text, identity=request.identity, session_id=request.session_id,
                   detail={"request": request.id, "url": url})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
