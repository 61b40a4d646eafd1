"""Log records as JSON lines for cluster log collectors (``nanny-io launch --log-stdout json``).

Inside a container the natural place for logs is its stdout: Fluent Bit, Vector, Promtail and
the OpenTelemetry collector pick it up, and it outlives an OOM-killed pod. Each record becomes
one JSON object per line, ``time, seq, stream, source, text, incarnation, kernel_id,
priority`` (the shape of ``nanny-io tail --json`` plus the kernel id; ``priority`` is syslog's
0-7). Container
runtimes split longer lines at 16 KiB (Docker's json-file driver, containerd's CRI logger),
which would break the JSON, so a record whose line would be longer is cut into several, each
flagged ``"partial": true`` except the last: joining a stream's texts, with a newline after each
one not partial, gives its output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import LocalProtocolError, RemoteProtocolError
from .logrecords import LogRecord, parse_nanny_event
from .priorities import priority_of
from .streams import FLAG_NO_EOL, Stream, source_of

__all__ = ["RUNTIME_LINE_LIMIT", "record_json_lines"]

#: The longest line (newline included) a container runtime passes on in one piece.
RUNTIME_LINE_LIMIT = 16 * 1024
_SHORT_ESCAPES = frozenset('\n\r\t\b\f"\\')


def _cost(ch: str) -> int:
    """Bytes ``ch`` takes inside a JSON string written with ``ensure_ascii=False``, as UTF-8."""
    code = ord(ch)
    if ch in _SHORT_ESCAPES:
        return 2
    if code < 0x20:
        return 6  # \u00XX
    if code < 0x80:
        return 1
    if code < 0x800:
        return 2
    return 3 if code < 0x10000 else 4


def _dump(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _slim(event: dict[str, Any]) -> dict[str, Any]:
    """A nanny event without its bulky parts (a death's last words are records of their own)."""
    return {k: v for k, v in event.items() if k not in ("text", "last_words")}


def record_json_lines(
    record: LogRecord, *, time: str, kernel_id: str, limit: int = RUNTIME_LINE_LIMIT
) -> list[bytes]:
    """The JSON lines (each ending in ``\\n``, none longer than ``limit``) for one record.

    ``time`` is the record's time as the caller formats it (ISO 8601). A nanny record's
    ``text`` is its event's text, and its details come along as ``event``.
    """
    if not isinstance(record, LogRecord):
        raise LocalProtocolError(f"expected a LogRecord, got {type(record).__name__}")
    text = record.data.decode("utf-8", "replace")
    event: dict[str, Any] | None = None
    if record.stream is Stream.NANNY:
        try:
            event = parse_nanny_event(record.data)
            text = str(event.get("text", text))
        except RemoteProtocolError:
            event = None
    ends_line = not record.flags & FLAG_NO_EOL
    if ends_line and text.endswith("\n"):
        text = text[:-1]
    head: dict[str, Any] = {
        "time": time,
        "seq": record.seq,
        "stream": record.stream.value,
        "source": source_of(record.stream, record.flags),
        "text": "",
        "incarnation": record.incarnation,
        "kernel_id": kernel_id,
        "priority": priority_of(record.stream, record.flags),
    }
    if event is not None:
        head["event"] = {k: v for k, v in event.items() if k != "text"}
        if len(_dump(head)) > limit // 2:
            head["event"] = _slim(event)
    whole = {**head, "text": text}
    if not ends_line:
        whole["partial"] = True
    line = _dump(whole)
    if len(line) <= limit:
        return [line]
    overhead = len(_dump({**head, "partial": True}))
    budget = limit - overhead
    if budget < 4:  # room for at least one character of any size
        raise LocalProtocolError(f"a {limit}-byte line cannot hold record {record.seq}")
    pieces: list[str] = []
    start = size = 0
    for i, ch in enumerate(text):
        cost = _cost(ch)
        if size + cost > budget:
            pieces.append(text[start:i])
            start, size = i, 0
        size += cost
    pieces.append(text[start:])
    lines = []
    for n, piece in enumerate(pieces):
        obj = {**head, "text": piece}
        if n > 0:
            obj.pop("event", None)  # the first piece carries the details
        if n < len(pieces) - 1 or not ends_line:
            obj["partial"] = True
        lines.append(_dump(obj))
    return lines
