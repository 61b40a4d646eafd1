"""Output-synchronisation delimiters that kernels write around user code (specs/output-sync.md).

A delimiter is an OSC escape sequence, ``ESC ] 5379 ; nanny-io ; begin|end ; <msg_id> BEL``:
terminals ignore unknown OSC sequences, so one that leaks to a terminal is invisible.
:class:`DelimiterScanner` finds them in captured stdout/stderr, however the bytes were chunked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from .errors import LocalProtocolError

__all__ = [
    "ENV_VAR",
    "MAX_DELIMITER_LEN",
    "MAX_MSG_ID_LEN",
    "Begin",
    "DelimiterScanner",
    "End",
    "Event",
    "Output",
    "begin_marker",
    "end_marker",
    "is_valid_msg_id",
]

#: Set to ``"1"`` in a kernel's environment by a nanny that wants delimiters.
ENV_VAR = "JUPYTER_NANNY_DELIMITERS"
#: Longest msg_id a delimiter can carry.
MAX_MSG_ID_LEN = 128

_ESC = b"\x1b"
_BEL = b"\x07"
_PREFIX = b"\x1b]5379;nanny-io;"
_BEGIN = b"begin;"
_END = b"end;"
_KINDS = (_BEGIN, _END)
#: Length of the longest delimiter: prefix, "begin;", a 128-byte msg_id and BEL (151 bytes).
MAX_DELIMITER_LEN = len(_PREFIX) + len(_BEGIN) + MAX_MSG_ID_LEN + len(_BEL)

_ID_CHARS = "A-Za-z0-9._:@-"
_MSG_ID_RE = re.compile(f"[{_ID_CHARS}]{{1,{MAX_MSG_ID_LEN}}}")
_ID_BYTES_RE = re.compile(f"[{_ID_CHARS}]*".encode("ascii"))
_DELIM_RE = re.compile(
    re.escape(_PREFIX) + f"(begin|end);([{_ID_CHARS}]{{1,{MAX_MSG_ID_LEN}}})\x07".encode("ascii")
)


def is_valid_msg_id(msg_id: str) -> bool:
    """Whether ``msg_id`` can travel in a delimiter: ``[A-Za-z0-9._:@-]{1,128}``."""
    return isinstance(msg_id, str) and _MSG_ID_RE.fullmatch(msg_id) is not None


def _check_msg_id(msg_id: str) -> None:
    if not is_valid_msg_id(msg_id):
        raise LocalProtocolError(
            f"msg_id {msg_id!r} cannot be used in a delimiter; "
            f"it must match [{_ID_CHARS}]{{1,{MAX_MSG_ID_LEN}}}"
        )


def begin_marker(msg_id: str) -> bytes:
    """The BEGIN delimiter a kernel writes (in one write) before user code for ``msg_id``."""
    _check_msg_id(msg_id)
    return _PREFIX + _BEGIN + msg_id.encode("ascii") + _BEL


def end_marker(msg_id: str) -> bytes:
    """The END delimiter a kernel writes (in one write) after user code for ``msg_id``."""
    _check_msg_id(msg_id)
    return _PREFIX + _END + msg_id.encode("ascii") + _BEL


@dataclass(frozen=True, slots=True)
class Output:
    """Captured bytes that are not a delimiter (lookalikes included)."""

    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise LocalProtocolError(f"output data must be bytes, got {type(self.data).__name__}")


@dataclass(frozen=True, slots=True)
class Begin:
    """A BEGIN delimiter: output that follows belongs to execute_request ``msg_id``."""

    msg_id: str

    def __post_init__(self) -> None:
        _check_msg_id(self.msg_id)


@dataclass(frozen=True, slots=True)
class End:
    """An END delimiter: the output of execute_request ``msg_id`` on this stream is complete."""

    msg_id: str

    def __post_init__(self) -> None:
        _check_msg_id(self.msg_id)


Event: TypeAlias = Output | Begin | End


def _could_start(tail: bytes) -> bool:
    """Whether ``tail`` (the end of the buffer, from an ESC) is a proper prefix of a delimiter."""
    if len(tail) <= len(_PREFIX):
        return _PREFIX.startswith(tail)
    if not tail.startswith(_PREFIX):
        return False
    rest = tail[len(_PREFIX) :]
    for kind in _KINDS:
        if len(rest) <= len(kind):
            if kind.startswith(rest):
                return True
        elif rest.startswith(kind):
            ident = rest[len(kind) :]
            # Without BEL yet (a complete delimiter would have matched already).
            return len(ident) <= MAX_MSG_ID_LEN and _ID_BYTES_RE.fullmatch(ident) is not None
    return False


class DelimiterScanner:
    """Splits one captured stream into :class:`Output`, :class:`Begin` and :class:`End` events.

    Sans-io and incremental: a delimiter split across reads at any byte is still found. Only a
    suffix that could still become a delimiter is held back (fewer than MAX_DELIMITER_LEN
    bytes), and it is released as soon as it cannot. Malformed lookalikes are output; any
    input is accepted.
    """

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = b""

    @property
    def pending(self) -> int:
        """Bytes held back because they may be the start of a delimiter."""
        return len(self._held)

    def feed(self, data: bytes) -> list[Event]:
        """Scan the next chunk; return the events it completes, adjacent output merged."""
        if not data:
            return []
        if self._held:
            buf = self._held + data
            self._held = b""
        elif data.find(_ESC) < 0:
            # The common case: no ESC at all, so no delimiter and nothing to hold back.
            return [Output(data)]
        else:
            buf = data
        events: list[Event] = []
        pos = 0
        for m in _DELIM_RE.finditer(buf):
            start = m.start()
            if start > pos:
                events.append(Output(buf[pos:start]))
            msg_id = m.group(2).decode("ascii")
            events.append(Begin(msg_id) if m.group(1) == b"begin" else End(msg_id))
            pos = m.end()
        end = self._hold_from(buf, pos)
        if end > pos:
            events.append(Output(buf[pos:end]))
        if end < len(buf):
            self._held = buf[end:]
        return events

    def flush(self) -> list[Output]:
        """Release the held-back suffix as output (at EOF, or before the request goes idle)."""
        held, self._held = self._held, b""
        return [Output(held)] if held else []

    @staticmethod
    def _hold_from(buf: bytes, pos: int) -> int:
        """Index from which ``buf`` must be held back (``len(buf)`` when nothing is)."""
        n = len(buf)
        # A proper prefix of a delimiter is shorter than the longest delimiter.
        i = buf.find(_ESC, max(pos, n - MAX_DELIMITER_LEN + 1))
        while i >= 0:
            if _could_start(buf[i:]):
                return i
            i = buf.find(_ESC, i + 1)
        return n
