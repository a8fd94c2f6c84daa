"""Is each steered broker reachable? A periodic TCP connect from the appliance's own (exempt) cgroup.

The kernel refuses enrolled connects to a broker marked DOWN with
ECONNREFUSED, which is what a client would get without the appliance; an
accepted connection that the proxy then closes reads to clients as a protocol
fault instead (franz-go asks whether TLS is missing and fails records rather
than retrying). `BrokerProbe` decides the marks: every interval it connects
to each broker and closes at once; a refused or unanswered connect marks that
broker DOWN, a completed one UP. A session's failed upstream connect marks it
DOWN at once (`failed`), so the next connects are refused without waiting for
the probe.

The decisions (`observe`) are pure; `run` is the thin asyncio shell.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

log = logging.getLogger("appliance.probe")
Address = tuple[str, int]


class BrokerProbe:
    def __init__(self, brokers: Iterable[Address], mark: Callable[[Address, bool], None], *,
                 interval_s: float) -> None:
        self.brokers = tuple(brokers)
        self.interval_s = interval_s
        self.timeout_s = min(interval_s, 1.0)
        self._mark = mark
        self.up: dict[Address, bool] = {b: True for b in self.brokers}  # the kernel starts with UP

    def add(self, address: Address) -> None:
        """Probe a broker learned while serving (discovery) too; the kernel added it UP."""
        if address not in self.up:
            self.brokers += (address,)
            self.up[address] = True

    def remove(self, address: Address) -> None:
        """Stop probing a broker discovery forgot (the kernel no longer holds it)."""
        if self.up.pop(address, None) is not None:
            self.brokers = tuple(b for b in self.brokers if b != address)

    def observe(self, address: Address, reachable: bool) -> bool:
        """Record one observation; True if the broker's state changed (and the kernel was told)."""
        if address not in self.up or self.up[address] == reachable:
            return False
        self.up[address] = reachable
        self._mark(address, reachable)
        return True

    def failed(self, address: Address) -> None:
        """A session could not connect to this broker: refuse new connects to it until a probe succeeds."""
        self.observe(address, False)

    async def check(self, address: Address) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(*address), self.timeout_s)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    async def run(self) -> None:
        while True:
            results = await asyncio.gather(*(self.check(b) for b in self.brokers))
            for address, reachable in zip(self.brokers, results):
                try:
                    self.observe(address, reachable)
                except Exception:  # keep probing; the next round tries again
                    log.exception("marking broker %s:%d failed", *address)
                    self.up[address] = not reachable
            await asyncio.sleep(self.interval_s)
