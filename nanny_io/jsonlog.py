"""Records as JSON lines on a file descriptor: ``nanny-io launch --log-stdout json``.

Inside a pod the container's stdout is where Fluent Bit, Vector, Promtail or the
OpenTelemetry collector look, and it survives an OOM-killed pod. The line format is
nanny_io_proto.jsonlines'; this module only gets records there without stalling capture.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from nanny_io_proto.errors import LocalProtocolError
from nanny_io_proto.streams import Stream

if TYPE_CHECKING:
    from .store import LogStore

log = logging.getLogger("nanny_io")


def _iso(time_ns: int) -> str:
    when = datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds")


class JsonRecordWriter:
    """Writes every stored record as JSON lines on a file descriptor (the container's stdout),
    from a thread, so that a slow reader never stalls capture.

    What does not fit in the bounded queue is counted, and said in a ``nanny`` line when
    writing catches up.
    """

    def __init__(self, store: LogStore, fd: int, kernel_id: str, max_batches: int = 4096) -> None:
        self.store = store
        self.fd = fd
        self.kernel_id = kernel_id
        self.dropped = 0
        self._queue: queue.Queue[list[object] | None] = queue.Queue(max_batches)
        self._thread = threading.Thread(target=self._run, name="nanny-io-records", daemon=True)
        self._thread.start()

    def stored(self, stream: Stream, first_seq: int, last_seq: int) -> None:
        """A record listener of the nanny: queue the records just stored."""
        records: list[object] = list(self.store.records(first_seq, last_seq))
        try:
            self._queue.put_nowait(records)
        except queue.Full:
            self.dropped += len(records)

    def _run(self) -> None:
        from nanny_io_proto.jsonlines import record_json_lines
        from nanny_io_proto.logrecords import LogRecord, nanny_event_data

        reported = 0
        while (batch := self._queue.get()) is not None:
            out: list[bytes] = []
            if self.dropped > reported:
                missed = self.dropped - reported
                reported = self.dropped
                note = nanny_event_data(
                    "records_dropped",
                    f"{missed} records were not written here (stdout too slow); "
                    "they are in the log channel and the on-disk history",
                    count=missed,
                )
                now = time.time_ns()
                notice = LogRecord(
                    seq=1, time_ns=now, incarnation=0, stream=Stream.NANNY, data=note
                )
                out += record_json_lines(notice, time=_iso(now), kernel_id=self.kernel_id)
            for record in batch:
                assert isinstance(record, LogRecord)
                try:
                    out += record_json_lines(
                        record, time=_iso(record.time_ns), kernel_id=self.kernel_id
                    )
                except LocalProtocolError as exc:  # a kernel id too long for a line
                    log.warning("cannot write record %d as JSON: %s", record.seq, exc)
            data = b"".join(out)
            with contextlib.suppress(OSError):
                while data:
                    data = data[os.write(self.fd, data) :]

    def close(self) -> None:
        """Write what is queued (at most a few seconds), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=2)
        self._thread.join(timeout=5)
