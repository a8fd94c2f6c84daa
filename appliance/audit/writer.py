"""The one thread that owns the audit database's write connection in the serving process.

The proxy's event loop hands records to `submit`, which only appends to a
queue. The thread gathers what arrives for `flush_ms` milliseconds after the first
record, then commits it in one transaction (at once when `flush` or `close`
waits). Loss window on a crash (kill -9, power): the
records submitted in the last `flush_ms` (200 ms by default) plus the batch
being committed. `close` drains everything queued before it returns.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from appliance.audit import store
from appliance.audit.records import AuditRecord

log = logging.getLogger(__name__)
_STOP = object()
_MAX_BATCH = 5000


class AuditWriter:
    def __init__(self, path: Path, *, flush_ms: int = 200) -> None:
        self.path = path
        self.flush_s = flush_ms / 1000
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._urgent = threading.Event()  # set by flush() and close(): commit now
        self._db = store.open_db(path)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self.written = 0
        self.failed_batches = 0
        self._thread.start()

    def submit(self, record: AuditRecord) -> None:
        self._queue.put(record)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until everything submitted so far is committed."""
        done = threading.Event()
        self._queue.put(done)
        self._urgent.set()
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._urgent.set()
        self._thread.join()
        self._db.conn.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            # Sleep until a record arrives, then let records gather for one
            # flush interval without waking for each: committing on every
            # wake-up made a transaction per handful of records under load, and
            # this thread's CPU and GIL time came out of the proxy's.
            items = [self._queue.get()]
            self._urgent.wait(self.flush_s)
            self._urgent.clear()
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending: list[AuditRecord] = []
            waiters: list[threading.Event] = []
            for item in items:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    pending.append(item)
            for start in range(0, len(pending), _MAX_BATCH):
                batch = pending[start:start + _MAX_BATCH]
                try:
                    store.write_batch(self._db, batch)
                    self.written += len(batch)
                except Exception:
                    self.failed_batches += 1
                    log.exception("audit batch of %d records could not be written to %s", len(batch), self.path)
            for w in waiters:
                w.set()
