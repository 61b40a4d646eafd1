"""Capture: the kernel's stdout/stderr pipes and log FIFO, read without ever blocking.

Nothing waits on a reader here: pipes are drained into the store as fast as the kernel
writes, and everything downstream (frontends, log subscribers, the nanny's own stderr)
either keeps up or drops with a notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import threading
import time
from collections.abc import Callable

from nanny_io_proto.delimiters import Begin, DelimiterScanner, End, Output
from nanny_io_proto.lines import LineAssembler, LineBlock
from nanny_io_proto.priorities import PriorityLines
from nanny_io_proto.streams import Stream

from .launcher import PIPE_SIZE
from .store import LogStore

#: Largest single read; big reads keep the per-byte cost low under heavy output.
READ_SIZE = 1 << 20
#: The most one drain() reads before it lets the event loop run again.
DRAIN_LIMIT = 16 * PIPE_SIZE
#: A read at least this large (but short of READ_SIZE) means a busy writer that the nanny
#: outpaces: the next read waits BUSY_PAUSE, so that its output is taken in fewer, larger
#: reads. Each read costs the same whatever its size (an append, a spill write, a signed
#: batch), so reads of one 64 KiB write each cost more CPU per MB. Smaller reads (a line, a
#: prompt) are handled at once; the pipe (PIPE_SIZE) holds a pause's worth of output at
#: about 1 GB/s, so the writer does not wait.
BUSY_READ = 48 * 1024
BUSY_PAUSE = 0.001
#: A partial line is stored after this long without its newline (prompts, progress bars).
PARTIAL_LINE_DELAY = 0.05
#: Longer lines are stored as several records flagged FLAG_NO_EOL.
MAX_LINE = 64 * 1024


class PipeReader:
    """Reads one pipe whenever it is readable and hands the bytes to ``on_data``.

    ``drain()`` reads synchronously until the pipe is empty: bytes the kernel wrote before
    it sent ``status: idle`` or before it exited are already in the pipe, so a drain at that
    moment catches all of them. EOF only means every writer closed the pipe (grandchildren
    may hold it open after the kernel died), so it is not taken as the kernel's exit.
    """

    def __init__(
        self,
        fd: int,
        stream: Stream,
        on_data: Callable[[Stream, bytes], None],
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        self.fd = fd
        self.stream = stream
        self._on_data = on_data
        self._on_eof = on_eof
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pause: asyncio.TimerHandle | None = None
        self.bytes_read = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        before = self.bytes_read
        if not self._read_once() or self._loop is None:
            return
        if BUSY_READ <= self.bytes_read - before < READ_SIZE:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.fd)
            self._pause = self._loop.call_later(BUSY_PAUSE, self._resume)

    def _resume(self) -> None:
        """The end of a pause after a busy read: watch the pipe again and read it now."""
        self._pause = None
        if self._loop is not None and self.fd >= 0:
            self._loop.add_reader(self.fd, self._readable)
            self._readable()

    def _read_once(self) -> bool:
        """One read; True when something was read."""
        if self.fd < 0:
            return False
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self._stop_watching()
            if self._on_eof is not None:
                self._on_eof()
            return False
        self.bytes_read += len(data)
        self._on_data(self.stream, data)
        return True

    def drain(self, limit: int = DRAIN_LIMIT) -> None:
        """Read until the pipe is empty right now (or at EOF), at most ``limit`` bytes.

        The bound matters: a subprocess that writes without pause would otherwise keep a
        drain going forever.
        """
        start = self.bytes_read
        while self.bytes_read - start < limit and self._read_once():
            pass

    def _stop_watching(self) -> None:
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None
        if self._loop is not None and self.fd >= 0:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.fd)
            self._loop = None

    def close(self) -> None:
        """Stop reading and close the fd (set to -1: its number may be reused once closed)."""
        self._stop_watching()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_NO_LINE = object()  # EchoWriter: every echoed line is complete


class EchoWriter:
    """Echoes captured output on the nanny's stderr from a thread, dropping when it lags.

    A terminal or log collector that reads slowly must never stall capture: the queue is
    bounded and what does not fit is counted and announced instead of waited for. With a
    ``prefix`` (a format with ``{stream}``), every line starts with it, so that output mixed
    into another program's log (a Jupyter server's) says where it comes from.
    """

    def __init__(self, fd: int, max_chunks: int = 1024, prefix: str | None = None) -> None:
        self._fd = fd
        self._queue: queue.Queue[tuple[Stream | None, bytes] | None] = queue.Queue(max_chunks)
        self._prefix = prefix
        self._open_line: object = _NO_LINE  # the stream whose last line lacks its \n
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="nanny-io-echo", daemon=True)
        self._thread.start()

    def write(self, data: bytes, stream: Stream | None = None) -> None:
        try:
            self._queue.put_nowait((stream, data))
        except queue.Full:
            self.dropped += len(data)

    def _prefixed(self, stream: Stream | None, data: bytes) -> bytes:
        """``data`` with the prefix at the start of every line (done here, off the loop).

        Another stream's line left open is ended first: a tagged line holds one stream.
        """
        assert self._prefix is not None
        if not data:
            return data
        tag = self._prefix.format(stream=stream.value if stream else "output").encode()
        continuing = self._open_line is stream
        head = b"\n" if self._open_line is not _NO_LINE and not continuing else b""
        ends = data[-1:] == b"\n"
        # Every line start but the first gets its tag from one replace in C (a line after
        # the last newline only when the data does not end there): no work per line, which
        # matters under a kernel manager, where every captured byte comes through here.
        starts = data.count(b"\n") - ends
        if starts:
            data = data.replace(b"\n", b"\n" + tag, starts)
        self._open_line = _NO_LINE if ends else stream
        return b"".join((head, b"" if continuing else tag, data))

    def _run(self) -> None:
        reported = 0
        while (item := self._queue.get()) is not None:
            stream, data = item
            if self._prefix is not None:
                data = self._prefixed(stream, data)
            if self.dropped > reported:
                note = f"[nanny-io: {self.dropped - reported} bytes of output not echoed]\n"
                data = note.encode() + data
                reported = self.dropped
            with contextlib.suppress(OSError):
                while data:
                    data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._thread.join(timeout=2)


class StreamPipeline:
    """One stream's way into the store: delimiters out, lines assembled, records appended.

    Whoever wants the records registers with the store (``LogStore.add_listener``);
    ``on_output`` gets the bytes meant for humans (delimiters removed), ``on_marker`` each
    delimiter found.
    """

    def __init__(
        self,
        stream: Stream,
        store: LogStore,
        *,
        incarnation: Callable[[], int],
        on_output: Callable[[Stream, bytes], None] | None = None,
        on_marker: Callable[[Stream, Begin | End], None] | None = None,
        partial_delay: float = PARTIAL_LINE_DELAY,
        max_line: int = MAX_LINE,
    ) -> None:
        self.stream = stream
        self.store = store
        self._incarnation = incarnation
        self._on_output = on_output
        self._on_marker = on_marker
        # Only stdout and stderr carry delimiters; the log FIFO is stored as written.
        self._scanner = DelimiterScanner() if stream in (Stream.STDOUT, Stream.STDERR) else None
        # Every kernel stream may start a line with a "<N>" priority (specs/log-channel.md §2.3).
        self._lines = PriorityLines(LineAssembler(max_line))
        self._partial_delay = partial_delay
        self._timer: asyncio.TimerHandle | None = None

    def feed(self, stream: Stream, data: bytes) -> None:
        """The PipeReader callback: everything read from the pipe or FIFO."""
        if self._scanner is None:
            self._store(data)
            return
        for event in self._scanner.feed(data):
            if type(event) is Output:
                self._output(event.data)
            elif self._on_marker is not None:
                self._on_marker(self.stream, event)  # type: ignore[arg-type]
        if self._scanner.pending:
            # A held-back ESC... that may start a delimiter: released after the quiet
            # interval if nothing completes it (specs/output-sync.md §3.3).
            self._arm()

    def _output(self, data: bytes) -> None:
        """Bytes meant for humans: stored, and passed on (to frontends or the terminal)."""
        self._store(data)
        if self._on_output is not None:
            self._on_output(self.stream, data)

    def _store(self, data: bytes) -> None:
        records = self._lines.feed_block(data)
        if isinstance(records, LineBlock):  # the usual case: whole lines, no object per line
            self.store.append_block(
                self.stream, self._incarnation(), time.time_ns(), records.data, records.lengths
            )
        else:
            self._append(records)
        if self._lines.pending:
            self._arm()

    def _append(self, pieces: list[tuple[bytes, int]]) -> None:
        if pieces:
            self.store.append(
                self.stream, self._incarnation(), time.time_ns(), pieces, checked=True
            )

    def _arm(self) -> None:
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: flushed at EOF instead
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._partial_delay, self._quiet)

    def _quiet(self) -> None:
        """The partial-line timer: release a held delimiter prefix, then the partial line."""
        self._timer = None
        self.release_held()
        self.flush_partial()

    def release_held(self) -> None:
        """Release a held-back delimiter prefix as output (quiet stream, or before idle)."""
        if self._scanner is not None:
            for event in self._scanner.flush():
                self._output(event.data)

    def flush_partial(self) -> None:
        """Store a trailing partial line now (a prompt without newline must show up)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._append(self._lines.flush())

    def flush(self) -> None:
        """Release everything held back: a partial delimiter becomes output, then lines."""
        self.release_held()
        self.flush_partial()


class KernelOutput:
    """Everything the kernel writes, on its way into the store: one pipeline per stream, the
    log FIFO (open for the nanny's life) and the current incarnation's stdout/stderr pipes."""

    def __init__(self, pipelines: dict[Stream, StreamPipeline]) -> None:
        self.pipelines = pipelines
        self.pipes: list[PipeReader] = []
        self.fifo: PipeReader | None = None
        self._fifo_keep = -1

    def open_fifo(
        self,
        loop: asyncio.AbstractEventLoop,
        read_fd: int,
        keep_fd: int,
        on_data: Callable[[Stream, bytes], None],
    ) -> None:
        """Read the log FIFO; ``keep_fd`` is our own write end, held so that the FIFO never
        reports EOF between two writers (a kernel that opens and closes it per line)."""
        self.fifo = PipeReader(read_fd, Stream.LOG, on_data)
        self._fifo_keep = keep_fd
        self.fifo.start(loop)

    def attach_pipes(self, loop: asyncio.AbstractEventLoop, stdout_fd: int, stderr_fd: int) -> None:
        """Read a new incarnation's stdout and stderr (the previous pipes are closed)."""
        self.close_pipes()
        self.pipes = [
            PipeReader(fd, stream, self.pipelines[stream].feed, on_eof=self.pipelines[stream].flush)
            for fd, stream in ((stdout_fd, Stream.STDOUT), (stderr_fd, Stream.STDERR))
        ]
        for reader in self.pipes:
            reader.start(loop)

    def drain(self) -> None:
        """Read everything already in the pipes and the FIFO and push it all the way out.

        One ``poll`` says which have anything (or EOF): a drain before each ``idle``
        usually finds all three empty, and a read that fails with EAGAIN costs more.
        """
        readers = [r for r in (*self.pipes, self.fifo) if r is not None and r.fd >= 0]
        poller = select.poll()
        for reader in readers:
            poller.register(reader.fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(0)}
        for reader in readers:
            if reader.fd in ready:
                reader.drain()

    def settle(self) -> None:
        """Everything the kernel wrote so far, stored: pipes drained, partial lines and
        held-back delimiter prefixes released (before a death report, a shutdown, an exit)."""
        self.drain()
        for pipeline in self.pipelines.values():
            pipeline.flush()

    def release_held(self, stream: Stream) -> None:
        self.pipelines[stream].release_held()

    def close_pipes(self) -> None:
        for reader in self.pipes:
            reader.close()
        self.pipes = []

    def close(self) -> None:
        self.close_pipes()
        if self.fifo is not None:
            self.fifo.close()
        if self._fifo_keep >= 0:
            os.close(self._fifo_keep)
            self._fifo_keep = -1
