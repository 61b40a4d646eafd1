"""Line assembly of captured streams (specs/output-sync.md).

Pipes carry bytes, not lines: a read may end inside a line. :class:`LineAssembler` turns
chunks into line records for the log store (``streamtext.Utf8Text`` keeps characters whole
for frontends).
"""

from __future__ import annotations

import os
from array import array
from functools import cache
from itertools import repeat
from types import ModuleType

from .errors import LocalProtocolError
from .streams import FLAG_NO_EOL, Stream

__all__ = ["FLAG_NO_EOL", "LineAssembler", "LineBlock", "Stream"]

_NL = b"\n"
_CR = b"\r"
#: Enough to back off over the continuation bytes of one UTF-8 character (at most 3).
_MIN_MAX_LINE = 4
#: Above this mean line length a block's line lengths come from a loop of ``find`` calls
#: (one per line), below it from ``splitlines`` (one object per line, made and freed in C):
#: they cost the same at about 250 bytes per line on the reference machine. The mean is
#: taken over the first ``_SAMPLE`` bytes: counting the newlines of a whole 1 MiB read
#: would cost a third of what splitting it does.
_FIND_LINES = 256
_SAMPLE = 8192
#: From this size on, a block of short lines has its lengths computed by numpy when it is
#: installed (a pass over the bytes for the newlines, then their differences): about 0.18 ms
#: per MiB against 0.8 to 1.3 for ``splitlines``, but numpy costs some 6 us per call, which
#: a block pays back from about 12 KiB at 200-byte lines (8 KiB at 100) on the reference
#: machine.
_NUMPY_BLOCK = 16384
#: At most this many newline windows are searched to prove that every line fits; with a
#: smaller ``max_line`` (many windows) the longest length is computed instead.
_MAX_WINDOWS = 256


#: Whether line lengths may come from numpy (tests switch it off for the pure path).
_use_numpy = True
#: Set to "1" while numpy is imported: OpenBLAS (which numpy loads) reads them once, at
#: load, and would otherwise start a thread per core that the nanny never uses.
_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _numpy() -> ModuleType | None:
    """numpy, or None when it is switched off or cannot be imported."""
    return _import_numpy() if _use_numpy else None


@cache  # a failed import is remembered, never retried
def _import_numpy() -> ModuleType | None:
    """Import numpy, the first time a block of short lines asks for it, not at start-up: it
    takes 50 to 90 ms and some 20 MiB, which most nannies never need to spend.

    Its thread variables are set only meanwhile and then put back as they were (or
    removed): the nanny starts the kernel later with a copy of its own environment, and a
    kernel must not inherit a one-thread limit it never asked for.
    """
    saved = {name: os.environ.get(name) for name in _ONE_THREAD}
    try:
        os.environ.update(dict.fromkeys(_ONE_THREAD, "1"))
        import numpy
    except ImportError:
        return None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return numpy


def _cut_point(buf: bytes, start: int, max_line: int) -> int:
    """End of the piece of at most ``max_line`` bytes from ``start``, at a character boundary.

    Backs off at most 3 bytes so a UTF-8 character is not split; invalid UTF-8 (more
    continuation bytes than that) is cut at ``max_line`` exactly.
    """
    cut = start + max_line
    for back in range(4):
        if buf[cut - back] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return cut - back
    return cut


class LineBlock:
    """Whole lines of one read as they were read: their bytes and an array of their lengths.

    Every line ends in ``b"\\n"``, none holds a ``b"\\r"`` (so ``data.splitlines(True)``
    gives them back) and every one fits ``max_line``; their records have flags 0. It stands
    for those records without one object per line (see :meth:`LineAssembler.feed_block`).
    """

    __slots__ = ("data", "lengths")

    def __init__(self, data: bytes, lengths: array[int]) -> None:
        self.data = data
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def records(self) -> list[tuple[bytes, int]]:
        """The ``(data, flags)`` records the block stands for."""
        return list(zip(self.data.splitlines(keepends=True), repeat(0)))


def _find_lengths(data: bytes) -> array[int]:
    """The lengths of the lines of ``data`` (which ends in a newline), one ``find`` each."""
    lengths = array("I")
    append = lengths.append
    find = data.find
    start = 0
    end = len(data)
    while start < end:
        stop = find(_NL, start) + 1
        append(stop - start)
        start = stop
    return lengths


def _numpy_lengths(np: ModuleType, data: bytes, max_line: int) -> array[int] | None:
    """The lengths of the lines of ``data`` (which ends in a newline) when every one fits
    ``max_line``, else None: numpy's differences between the positions of the newlines."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord(_NL))
    out = np.empty(len(ends), np.uintc)  # C's unsigned int, as array("I")
    out[0] = ends[0] + 1
    np.subtract(ends[1:], ends[:-1], out=out[1:], casting="unsafe")
    if out.max() > max_line:
        return None
    lengths = array("I")
    lengths.frombytes(out.data.cast("B"))
    return lengths


class LineAssembler:
    """Turns one stream's chunks into ``(data, flags)`` line records.

    Complete lines (with their ``b"\\n"``) get flags 0. A line longer than ``max_line`` is cut
    into pieces flagged :data:`FLAG_NO_EOL`; its last piece, ending in ``b"\\n"``, gets 0.
    How the input was chunked does not change the records, and concatenating every record
    (including :meth:`flush`'s) gives back the input bytes exactly.
    """

    __slots__ = ("_max", "_parts", "_pending")

    def __init__(self, max_line: int = 65536) -> None:
        if not isinstance(max_line, int) or max_line < _MIN_MAX_LINE:
            raise LocalProtocolError(
                f"max_line must be an int >= {_MIN_MAX_LINE}, got {max_line!r}"
            )
        self._max = max_line
        # The partial line, kept as a list so many small writes cost O(n), not O(n**2).
        self._parts: list[bytes] = []
        self._pending = 0

    @property
    def max_line(self) -> int:
        """The longest record this assembler emits, in bytes."""
        return self._max

    @property
    def pending(self) -> int:
        """Bytes of the partial line held back."""
        return self._pending

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """Add a chunk; return the records it completes."""
        records = self._feed(data, False)
        assert not isinstance(records, LineBlock)
        return records

    def feed_block(self, data: bytes) -> LineBlock | list[tuple[bytes, int]]:
        """Like :meth:`feed`, but the usual case (the records are whole lines without
        ``b"\\r"`` that fit, flags 0) comes as a :class:`LineBlock`: the capture path stores
        it without making an object per line."""
        return self._feed(data, True)

    def _feed(self, data: bytes, block: bool) -> LineBlock | list[tuple[bytes, int]]:
        if not data:
            return []
        nl = data.rfind(_NL)
        if nl < 0:
            self._parts.append(data)
            self._pending += len(data)
            if self._pending <= self._max:
                return []
            out: list[tuple[bytes, int]] = []
            self._hold(self._cut(b"".join(self._parts), out))
            return out
        end = nl + 1
        whole: bytes | memoryview = data  # the read up to its last newline
        tail = b""
        if end < len(data):
            whole = memoryview(data)[:end]  # no copy: the one below is the only one
            tail = data[end:]
        if self._parts:
            head = b"".join([*self._parts, whole])
            self._parts = []
            self._pending = 0
        else:
            head = bytes(whole)  # the read itself when it ends with a line (bytes(b) is b)
        if _CR not in head:
            if block and len(tail) <= self._max:
                lengths = self._fitting(head)
                if lengths is not None:  # the usual case: no object per line
                    self._hold(tail)
                    return LineBlock(head, lengths)
            # bytes.splitlines breaks at b"\r" and b"\n" only: without b"\r" it keeps each
            # b"\n" in one C call, instead of a split and a concatenation per line.
            lines = head.splitlines(keepends=True)
            if max(map(len, lines)) <= self._max:  # the fast path: every line fits
                return self._held(list(zip(lines, repeat(0))), tail)
            lines = [line[:-1] for line in lines]
        else:
            lines = head.split(_NL)
            lines.pop()  # the empty piece after the final b"\n"
        if max(map(len, lines)) < self._max:  # every line fits with its b"\n"
            out = [(line + _NL, 0) for line in lines]
        else:
            out = []
            for line in lines:
                if len(line) < self._max:
                    out.append((line + _NL, 0))
                else:
                    out.append((self._cut(line + _NL, out), 0))
        return self._held(out, tail)

    def _fitting(self, head: bytes) -> array[int] | None:
        """The lengths of the lines of ``head`` (whole lines without ``b"\\r"``) when every
        one fits ``max_line``, else None."""
        size = len(head)
        if min(size, _SAMPLE) > head.count(_NL, 0, _SAMPLE) * _FIND_LINES:
            lengths = _find_lengths(head)
        elif size >= _NUMPY_BLOCK and (np := _numpy()) is not None:
            return _numpy_lengths(np, head, self._max)  # with its longest line, no windows
        else:
            # (through a list: filling the array from the iterator is slower at short lines)
            lengths = array("I", list(map(len, head.splitlines(keepends=True))))
        # A line longer than max_line holds max_line bytes without a newline, so it holds
        # a whole aligned window of max_line // 2 bytes: a newline in every window proves
        # that every line fits, with one memchr per window instead of a look at each line.
        width = self._max // 2
        if size // width <= _MAX_WINDOWS:
            find = head.find
            if all(find(_NL, i, i + width) >= 0 for i in range(0, size - width + 1, width)):
                return lengths
        return lengths if max(lengths) <= self._max else None

    def _held(self, out: list[tuple[bytes, int]], tail: bytes) -> list[tuple[bytes, int]]:
        """``out``, after holding ``tail`` (the partial line after the last newline) back."""
        if tail:
            if len(tail) > self._max:
                tail = self._cut(tail, out)
            self._hold(tail)
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        """Return the partial line, flagged :data:`FLAG_NO_EOL` (on a timer or at EOF)."""
        if not self._parts:
            return []
        data = b"".join(self._parts)
        self._parts = []
        self._pending = 0
        return [(data, FLAG_NO_EOL)]

    def _cut(self, buf: bytes, out: list[tuple[bytes, int]]) -> bytes:
        """Append ``max_line`` pieces of ``buf`` to ``out`` while more than that is left."""
        start = 0
        limit = len(buf) - self._max
        while start < limit:
            cut = _cut_point(buf, start, self._max)
            out.append((buf[start:cut], FLAG_NO_EOL))
            start = cut
        return buf[start:]

    def _hold(self, rest: bytes) -> None:
        self._parts = [rest] if rest else []
        self._pending = len(rest)
