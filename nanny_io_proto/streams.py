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
