"""Names shared by capture, the log store and the log channel."""

from __future__ import annotations

from enum import Enum


class Stream(str, Enum):
    """Where a log record came from."""

    STDOUT = "stdout"  # the kernel's stdout pipe
    STDERR = "stderr"  # the kernel's stderr pipe
    LOG = "log"  # the $JUPYTER_KERNEL_LOG FIFO
    NANNY = "nanny"  # the nanny's own events (kernel started, died, restarted)


#: The record does not end a line: a partial line flushed by a timer or at EOF, or one
#: piece of a line longer than the maximum line length. Concatenating a stream's records
#: in seq order gives back the exact bytes the kernel wrote.
FLAG_NO_EOL = 1

#: The record is output the kernel sent as iopub messages (a ``stream`` message's text, or an
#: ``error`` message's traceback), which the nanny stored as it proxied iopub; without this bit
#: the record's bytes came from the kernel's file descriptors (pipes or the log FIFO).
FLAG_IOPUB = 1 << 1

#: Bits 4-6 carry the record's syslog priority (0 emerg ... 7 debug) when FLAG_PRIORITY is set;
#: without it the record has its stream's default priority (specs/log-channel.md, section 2).
FLAG_PRIORITY = 1 << 3
PRIORITY_SHIFT = 4
PRIORITY_MASK = 0b111 << PRIORITY_SHIFT


def source_of(stream: Stream, flags: int) -> str:
    """``"fd"``, ``"iopub"`` or ``"nanny"``: where a record's text came from (the ``source``
    field of ``tail --json``, the server extension and ``--log-stdout json``)."""
    if stream is Stream.NANNY:
        return "nanny"
    return "iopub" if flags & FLAG_IOPUB else "fd"
