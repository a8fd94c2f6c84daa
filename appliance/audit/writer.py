"""The one thread that owns the audit database's write connection in the serving process.

The proxy's event loop hands records to `submit`, which only appends to a
queue. The thread gathers what arrives for `flush_ms` milliseconds after the first
record, then commits it in one transaction (at once when `flush` or `close`
waits). Loss window on a crash (kill -9, power): the
records submitted in the last `flush_ms` (200 ms by default) plus the batch
being committed. `close` drains everything queued before it returns.

The queue holds at most `queue_max` records. Audit failure is a state, not a
log line: when a batch cannot be committed (disk full, I/O error) or a record
finds the queue full, `failing` names the reason until a commit succeeds
again. Records lost meanwhile are counted, with the time span they cover, and
the first commit that succeeds afterwards writes that as a row of `gaps`, in
the same transaction, so a reader sees exactly what is missing and when.
Events of a failed batch (few, and the ones that say what happened, such as
`audit-failing`) are kept, up to 1000, and written then too.
While failing, the thread retries every `flush_ms` even when nothing new
arrives, so recovery is noticed as soon as space returns.

Retention (`enforce_retention`, from the service's maintenance step) runs here
too, this thread owning the write connection: a prune run (`prune.Pruner`)
takes one bounded batch per turn of the loop, after the records that turn
gathered, so records wait behind at most one prune batch, never a whole run.
While a run is under way the thread does not sleep when nothing arrives.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.audit import store
from appliance.audit.append import Appender
from appliance.audit.checkpoint import SigningKey
from appliance.audit.prune import BATCH, PruneRefused, Pruner
from appliance.audit.records import AuditRecord, Event, Gap

log = logging.getLogger(__name__)
_STOP = object()
_CHECKPOINT = object()
_RETENTION = object()
_MAX_BATCH = 5000
# Events (starts, refusals, the audit-failing event itself) of a batch that
# failed are kept and written with the gap marker, up to this many; the many
# operation rows are only counted.
_RETAIN_EVENTS = 1000


@dataclass(slots=True)
class _OpenGap:
    started_at: float
    ended_at: float
    records: int
    reasons: dict[str, int]

    def add(self, at_first: float, at_last: float, records: int, reason: str) -> None:
        self.started_at = min(self.started_at, at_first)
        self.ended_at = max(self.ended_at, at_last)
        self.records += records
        self.reasons[reason] = self.reasons.get(reason, 0) + records


def _at(record) -> float:
    return getattr(record, "at", None) or getattr(record, "started_at", None) or getattr(record, "ended_at", None) \
        or time.time()


class AuditWriter:
    def __init__(self, path: Path, *, flush_ms: int = 200, queue_max: int = 50_000,
                 signing_key: SigningKey | None = None, checkpoint_dir: Path | None = None,
                 max_age_days: float | None = None, max_bytes: int | None = None, prune_batch: int = BATCH) -> None:
        self.path = path
        self.signing_key = signing_key
        self.checkpoint_dir = checkpoint_dir
        self.checkpoints = 0  # signed by this writer
        self.flush_s = flush_ms / 1000
        self.queue_max = queue_max
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._urgent = threading.Event()  # set by flush() and close(): commit now
        self._db = store.open_db(path)
        self._appender = Appender(self._db.conn)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self.written = 0
        self.failed_batches = 0
        self.lost = 0  # records never written, over the whole run
        self.gaps_written = 0
        # Why records cannot be written now, and since when; None while they can.
        # Set by either thread, read by the event loop (one attribute: atomic under the GIL).
        self.failing: str | None = None
        self.failing_since: float | None = None
        # Queue-full drops, counted by the submitting thread only; the writer
        # thread reads the total and folds what it has not seen into the gap.
        self._dropped = 0
        self._dropped_first: float | None = None
        self._dropped_last: float | None = None
        self._dropped_seen = 0
        self._gap: _OpenGap | None = None
        self._retained: list[Event] = []
        # Retention: what it keeps, the run under way (this thread's only), the last run's summary.
        self.max_age_days = max_age_days
        self.max_bytes = max_bytes
        self.prune_batch = prune_batch
        self._pruner: Pruner | None = None
        self.last_prune: dict | None = None  # read by the event loop for status (one attribute)
        self.prune_error: str | None = None
        self._thread.start()

    def submit(self, record: AuditRecord) -> bool:
        """Queue a record; False (and the record counted as lost) when the queue is full."""
        if self._queue.qsize() >= self.queue_max:
            now = time.time()
            self._dropped += 1
            if self._dropped_first is None:
                self._dropped_first = now
            self._dropped_last = now
            if self.failing is None:
                self._fail(f"audit queue full ({self.queue_max} records waiting; audit_queue_max)")
            for source in getattr(record, "sources", ()):  # excerpts never to be built give their bytes back
                source.release()
            return False
        self._queue.put(record)
        return True

    def flush(self, timeout: float = 5.0) -> None:
        """Block until everything submitted so far is committed (or failed)."""
        done = threading.Event()
        self._queue.put(done)
        self._urgent.set()
        done.wait(timeout)

    def checkpoint(self) -> None:
        """Sign a checkpoint of everything submitted before this, in the writer thread (no-op without a key)."""
        if self.signing_key is not None:
            self._queue.put(_CHECKPOINT)

    def enforce_retention(self) -> None:
        """Start a prune run in the writer thread, unless one is under way (no-op without a retention)."""
        if self.max_age_days is not None or self.max_bytes is not None:
            self._queue.put(_RETENTION)

    @property
    def pruning(self) -> bool:
        return self._pruner is not None

    def close(self) -> None:
        self._queue.put(_STOP)
        self._urgent.set()
        self._thread.join()
        self._db.conn.close()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def _fail(self, reason: str) -> None:
        if self.failing is None:
            self.failing_since = time.time()
            log.critical("AUDIT FAILING: %s; records are being lost (see `appliance status`)", reason)
        self.failing = reason

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # Sleep until a record arrives, then let records gather for one
            # flush interval without waking for each: committing on every
            # wake-up made a transaction per handful of records under load, and
            # this thread's CPU and GIL time came out of the proxy's.
            pruning = self._pruner is not None
            try:
                items = [self._queue.get_nowait() if pruning else
                         self._queue.get(timeout=self.flush_s if self.failing else None)]
            except queue.Empty:
                items = []  # failing and idle: try the gap marker alone, to notice recovery
            if items or not pruning:
                self._urgent.wait(self.flush_s)
            self._urgent.clear()
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending: list[AuditRecord] = []
            waiters: list[threading.Event] = []
            checkpoint = retention = False
            for item in items:
                if item is _STOP:
                    stopping = True
                elif item is _CHECKPOINT:
                    checkpoint = True
                elif item is _RETENTION:
                    retention = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    pending.append(item)
            self._fold_dropped()
            if not pending and (self._gap is not None or self._retained):
                self._write([])
            for start in range(0, len(pending), _MAX_BATCH):
                self._write(pending[start:start + _MAX_BATCH])
            if retention and self._pruner is None and not stopping:
                self._start_prune()
            if self._pruner is not None:
                self._prune_step(stopping)
            if (checkpoint or stopping) and self.signing_key is not None:
                self._checkpoint()
            for w in waiters:
                w.set()

    def _start_prune(self) -> None:
        self.prune_error = None
        try:
            self._pruner = Pruner(self._appender, now=time.time(), batch=self.prune_batch, max_bytes=self.max_bytes,
                                  max_age_s=None if self.max_age_days is None else self.max_age_days * 86400)
        except Exception:  # noqa: BLE001 - retention waits for the next interval; records are unaffected
            log.exception("audit retention could not start on %s", self.path)

    def _prune_step(self, stopping: bool) -> None:
        """One batch of the run under way; at its end (or at a stop) its audit-pruned event."""
        pruner = self._pruner
        try:
            more = not stopping and pruner.step()
        except Exception as e:  # noqa: BLE001 - each batch is its own transaction: what was done holds
            more = False
            self.prune_error = str(e)
            refused = isinstance(e, PruneRefused)
            log.log(logging.CRITICAL if refused else logging.ERROR, "audit retention stopped on %s: %s", self.path, e,
                    exc_info=not refused)
            self._write([Event(at=time.time(), kind="error", message=f"audit retention stopped: {e}")])
        if more:
            return
        self._pruner = None
        event = pruner.event()
        if event is not None:
            self._write([event])
            self.last_prune = {**pruner.summary(), "at": event.at}
            log.info("%s", event.message)

    def _checkpoint(self) -> None:
        try:
            if self._appender.checkpoint(self.signing_key, self.checkpoint_dir) is not None:
                self.checkpoints += 1
        except Exception:  # noqa: BLE001 - the chain itself is intact; the next checkpoint covers this one's span
            log.exception("audit checkpoint could not be written to %s", self.path)

    def _fold_dropped(self) -> None:
        dropped = self._dropped - self._dropped_seen
        if dropped:
            self._dropped_seen += dropped
            self._lose(self._dropped_first or time.time(), self._dropped_last or time.time(), dropped,
                       f"audit queue full (audit_queue_max {self.queue_max})")
            self._dropped_first = None

    def _lose(self, first: float, last: float, records: int, reason: str) -> None:
        self.lost += records
        if self._gap is None:
            self._gap = _OpenGap(first, last, 0, {})
        self._gap.add(first, last, records, reason)

    def _write(self, batch: list[AuditRecord]) -> None:
        gap = self._gap
        retained, self._retained = self._retained, []
        records = retained + batch
        if gap is not None:
            now = time.time()
            reasons = ", ".join(f"{n} by {why}" for why, n in gap.reasons.items())
            records = records + [
                Gap(gap.started_at, gap.ended_at, gap.records, reasons),
                Event(at=now, kind="audit-recovered",
                      message=f"audit writing again after failing since {time.strftime('%H:%M:%S', time.localtime(self.failing_since or gap.started_at))}: "
                              f"{gap.records} records lost between {gap.started_at:.3f} and {gap.ended_at:.3f} "
                              f"({reasons}); see the gaps table"),
            ]
        try:
            self._appender.write_batch(records)
        except Exception as e:  # noqa: BLE001 - whatever SQLite says, these records are lost, and counted
            self.failed_batches += 1
            keep = [r for r in records if isinstance(r, Event) and r.kind != "audit-recovered"]
            self._retained = keep[:_RETAIN_EVENTS]
            lost = [r for r in batch if not isinstance(r, (Event, Gap))] + keep[_RETAIN_EVENTS:]
            if lost:
                self._lose(min(map(_at, lost)), max(map(_at, lost)), len(lost), f"write error: {e}")
            if self.failing is None:
                log.exception("audit batch of %d records could not be written to %s", len(batch), self.path)
            self._fail(f"write error on {self.path}: {e}")
            return
        self.written += len(retained) + len(batch)
        if gap is not None:
            self.gaps_written += 1
            self._gap = None
            log.critical("AUDIT RECOVERED: writing again; %d records were lost (%s), recorded in the gaps table",
                         gap.records, ", ".join(gap.reasons))
        if self.failing is not None and self._dropped == self._dropped_seen \
                and self._queue.qsize() < self.queue_max // 2:
            self.failing = None
            self.failing_since = None
