"""Syslog priorities of log records: the ``<N>`` line prefix, names, and per-stream defaults.

A kernel marks a line's severity the way services do for journald (sd-daemon(3)): the line
starts with ``<N>``, N a syslog priority from 0 (emerg) to 7 (debug). The nanny strips the
prefix and keeps the priority in the record's flags (``FLAG_PRIORITY``, bits 4-6); a line
without one has its stream's default priority. See specs/log-channel.md, section 2.2.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import LocalProtocolError
from .lines import LineAssembler, LineBlock
from .streams import FLAG_NO_EOL, FLAG_PRIORITY, PRIORITY_MASK, PRIORITY_SHIFT, Stream

__all__ = [
    "DEFAULT_PRIORITY",
    "PRIORITY_NAMES",
    "PriorityLines",
    "parse_priority",
    "priority_flags",
    "priority_of",
]

#: syslog names, as journalctl -p accepts them (index = priority).
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_ALIASES = {"panic": 0, "error": 3, "warn": 4}

#: The priority of a record without FLAG_PRIORITY. stdout and the log FIFO are info, as for
#: journald. stderr is warning: in a kernel, what user code prints reaches frontends as
#: iopub messages, so what arrives on fd 2 is the interpreter's, a C library's or a
#: subprocess's diagnostics (tracebacks at start-up, "Fatal Python error", library warnings);
#: `tail -p warning` must keep them, and they should stand out without looking like errors.
#: Nanny events are notice (a death is stored as err).
DEFAULT_PRIORITY: Mapping[Stream, int] = {
    Stream.STDOUT: 6,
    Stream.STDERR: 4,
    Stream.LOG: 6,
    Stream.NANNY: 5,
}

_ZERO = 0x30


def priority_flags(priority: int) -> int:
    """The flag bits that mark a record with ``priority`` (0-7)."""
    if type(priority) is not int or not 0 <= priority <= 7:
        raise LocalProtocolError(f"priority must be an int from 0 to 7, got {priority!r}")
    return FLAG_PRIORITY | priority << PRIORITY_SHIFT


def priority_of(stream: Stream, flags: int) -> int:
    """A record's priority: from its flags, or its stream's default."""
    if flags & FLAG_PRIORITY:
        return (flags & PRIORITY_MASK) >> PRIORITY_SHIFT
    return DEFAULT_PRIORITY[stream]


def parse_priority(text: str) -> int:
    """A priority given by a user: a number 0-7 or a name (``err``, ``warning``, ...)."""
    word = text.strip().lower()
    if word in PRIORITY_NAMES:
        return PRIORITY_NAMES.index(word)
    if word in _ALIASES:
        return _ALIASES[word]
    if len(word) == 1 and "0" <= word <= "7":
        return int(word)
    names = ", ".join(PRIORITY_NAMES)
    raise LocalProtocolError(f"unknown priority {text!r}; use 0-7 or one of {names}")


class PriorityLines:
    """A :class:`LineAssembler` that also reads ``<N>`` prefixes at line starts.

    Records are those of the assembler with the prefix removed from the piece that starts a
    line, and its priority flags on every piece of that line (a piece of a long line, a
    partial line flushed by the timer and its continuation). A prefix counts only when its
    three bytes start the line's first record; a line whose first record is just ``<N>``
    gives no record for it (the prefix alone carries no text), only the priority of the rest.
    """

    __slots__ = ("_held_lt", "_lines", "_open")

    def __init__(self, lines: LineAssembler) -> None:
        self._lines = lines
        # The priority flags of the line whose start was emitted but not its end; None
        # when the next record starts a line.
        self._open: int | None = None
        # Whether the partial line the assembler holds starts with "<".
        self._held_lt = False

    @property
    def pending(self) -> int:
        return self._lines.pending

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """Add a chunk; return the records it completes."""
        records = self._feed(data, False)
        assert not isinstance(records, LineBlock)
        return records

    def feed_block(self, data: bytes) -> LineBlock | list[tuple[bytes, int]]:
        """As :meth:`LineAssembler.feed_block`: whole lines without a prefix, none of them
        continuing a prioritised line, come as a :class:`LineBlock`."""
        return self._feed(data, True)

    def _feed(self, data: bytes, block: bool) -> LineBlock | list[tuple[bytes, int]]:
        # The cheap test that keeps ordinary output on the assembler's fast path: a prefix
        # can only start this chunk, follow a newline in it, or start the held partial line.
        # A memchr for "<" first: most output has none, and it is many times faster than
        # searching for "\n<". No per-line Python work either way.
        maybe = (
            self._open or self._held_lt or (b"<" in data and (data[:1] == b"<" or b"\n<" in data))
        )
        held = self._lines.pending
        out = self._lines.feed_block(data) if block and not maybe else self._lines.feed(data)
        nl = data.rfind(b"\n")
        if nl >= 0:
            self._held_lt = data[nl + 1 : nl + 2] == b"<"
        elif not held:
            self._held_lt = data[:1] == b"<"
        if isinstance(out, LineBlock):
            self._open = None  # its last record ends a line
            return out
        if maybe:
            return self._mark(out)
        return self._plain(out)

    def flush(self) -> list[tuple[bytes, int]]:
        """Return the partial line, flagged FLAG_NO_EOL (on a timer or at EOF)."""
        self._held_lt = False
        return self._mark(self._lines.flush())

    def _plain(self, out: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """No prefix and no open prioritised line: records pass unchanged."""
        if out:
            self._open = 0 if out[-1][1] & FLAG_NO_EOL else None
        return out

    def _mark(self, out: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        marked: list[tuple[bytes, int]] = []
        append = marked.append
        line = self._open
        for data, flags in out:
            if line is None:  # a line starts: "<N>" (N 0-7) is its priority, else text
                if data[2:3] == b">" and data[:1] == b"<" and _ZERO <= data[1] <= _ZERO + 7:
                    line = FLAG_PRIORITY | (data[1] - _ZERO) << PRIORITY_SHIFT
                    data = data[3:]
                    if not data:  # "<N>" alone, flushed before the rest of its line
                        continue
                else:
                    line = 0
            append((data, flags | line))
            if not flags & FLAG_NO_EOL:
                line = None
        self._open = line
        return marked
