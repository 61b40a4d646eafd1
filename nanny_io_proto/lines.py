"""Line assembly and incremental UTF-8 decoding of captured streams (specs/output-sync.md).

Pipes carry bytes, not lines or characters: a read may end inside a line or inside a
multi-byte character. :class:`LineAssembler` turns chunks into line records for the log store;
:class:`StreamDecoder` turns them into text for frontends without U+FFFD at chunk edges.
"""

from __future__ import annotations

import codecs
from itertools import repeat

from .errors import LocalProtocolError, MalformedMessage
from .streams import FLAG_NO_EOL, Stream

__all__ = ["FLAG_NO_EOL", "LineAssembler", "Stream", "StreamDecoder"]

_NL = b"\n"
_CR = b"\r"
#: Enough to back off over the continuation bytes of one UTF-8 character (at most 3).
_MIN_MAX_LINE = 4


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


class LineAssembler:
    """Turns one stream's chunks into ``(data, flags)`` line records.

    Complete lines (with their ``b"\\n"``) get flags 0. A line longer than ``max_line`` is cut
    into pieces flagged :data:`FLAG_NO_EOL`; its last piece, ending in ``b"\\n"``, gets 0.
    How the input was chunked does not change the records, and concatenating every record
    (including :meth:`flush`'s) gives back the input bytes exactly.
    """

    __slots__ = ("_max", "_parts", "_pending", "plain")

    def __init__(self, max_line: int = 65536) -> None:
        if not isinstance(max_line, int) or max_line < _MIN_MAX_LINE:
            raise LocalProtocolError(
                f"max_line must be an int >= {_MIN_MAX_LINE}, got {max_line!r}"
            )
        self._max = max_line
        # The partial line, kept as a list so many small writes cost O(n), not O(n**2).
        self._parts: list[bytes] = []
        self._pending = 0
        #: After :meth:`feed`: the concatenation of the records it returned when they are
        #: all whole lines with flags 0 and it had that concatenation at no cost (the usual
        #: case), else None. The store packs them from it without joining them again.
        self.plain: bytes | None = None

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
        self.plain = None
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
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            nl += self._pending
            self._parts = []
            self._pending = 0
        end = nl + 1
        if end == len(data):
            head, tail = data, b""
        else:
            head, tail = data[:end], data[end:]
        if _CR not in head:
            # bytes.splitlines breaks at b"\r" and b"\n" only: without b"\r" it keeps each
            # b"\n" in one C call, instead of a split and a concatenation per line.
            lines = head.splitlines(keepends=True)
            if max(map(len, lines)) <= self._max:  # the fast path: every line fits
                out = self._held(list(zip(lines, repeat(0))), tail)
                if len(out) == len(lines):  # no piece of an overlong tail was added
                    self.plain = head
                return out
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

    def _held(self, out: list[tuple[bytes, int]], tail: bytes) -> list[tuple[bytes, int]]:
        """``out``, after holding ``tail`` (the partial line after the last newline) back."""
        if tail:
            if len(tail) > self._max:
                tail = self._cut(tail, out)
            self._hold(tail)
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        """Return the partial line, flagged :data:`FLAG_NO_EOL` (on a timer or at EOF)."""
        self.plain = None
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


class StreamDecoder:
    """Incremental UTF-8 decoding of one stream: a character split across reads stays whole.

    Truly invalid bytes become U+FFFD with the default ``errors="replace"``.
    """

    __slots__ = ("_decoder", "errors")

    def __init__(self, errors: str = "replace") -> None:
        try:
            codecs.lookup_error(errors)
        except (LookupError, TypeError) as exc:
            raise LocalProtocolError(f"unknown error handler {errors!r}") from exc
        self.errors = errors
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)

    def decode(self, data: bytes, final: bool = False) -> str:
        """Text for ``data``; an incomplete trailing character waits for the next call.

        With ``final`` an incomplete character is decoded per ``errors`` and the decoder resets.
        """
        try:
            text: str = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:  # only with errors="strict"
            self._decoder.reset()
            raise MalformedMessage(f"invalid utf-8 in captured output: {exc.reason}") from exc
        return text

    def reset(self) -> None:
        """Forget any buffered partial character."""
        self._decoder.reset()
