"""The one thread that owns the audit database's write connection in the serving process.

The proxy's event loop hands records to `submit`, which only appends to a
queue. The thread commits whatever has queued, at least every `flush_ms`
milliseconds, in one transaction. Loss window on a crash (kill -9, power): the
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
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        self._db.conn.close()

    def _run(self) -> None:
        pending: list[AuditRecord] = []
        waiters: list[threading.Event] = []
        stopping = False
        while not stopping:
            try:
                item = self._queue.get(timeout=self.flush_s)
            except queue.Empty:
                item = None
            # Take whatever else is queued right now, so one commit covers it.
            while item is not None:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    pending.append(item)
                if len(pending) >= _MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if pending:
                try:
                    store.write_batch(self._db, pending)
                    self.written += len(pending)
                except Exception:
                    self.failed_batches += 1
                    log.exception("audit batch of %d records could not be written to %s", len(pending), self.path)
                pending = []
            for w in waiters:
                w.set()
            waiters = []
