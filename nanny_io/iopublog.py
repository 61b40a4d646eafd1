"""The kernel's own output on iopub, kept in the log.

ipykernel sends ``print()`` and tracebacks as iopub messages (``stream``, ``error``), never
through file descriptors 1 and 2, so the pipes never see them. The nanny proxies iopub: it
stores that output as records of the ``stdout``/``stderr`` streams flagged ``FLAG_IOPUB``
(tracebacks on ``stderr``, ANSI colours removed), and notes each cell's number and code from
``execute_input`` for death reports. Only messages from the kernel pass here; the ``stream``
messages the nanny makes of captured fd output go straight to frontends, so nothing is
stored twice. A kernelspec (``metadata.nanny_io_store_iopub: false``) or ``nanny-io start
--no-store-iopub`` turns the storing off for users who do not want notebook output kept.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from nanny_io_proto.lines import LineAssembler
from nanny_io_proto.priorities import priority_flags
from nanny_io_proto.streams import FLAG_IOPUB, Stream

from .capture import MAX_LINE
from .deathwatch import CellWatch
from .store import LogStore

#: ANSI escape sequences (CSI and OSC) that colour a traceback.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_STREAMS = {"stdout": Stream.STDOUT, "stderr": Stream.STDERR}


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def line_pieces(text: str, flags: int = FLAG_IOPUB) -> list[tuple[bytes, int]]:
    """``text`` as line records, cut as captured output is (``LineAssembler``): complete
    lines, lines longer than MAX_LINE bytes cut between characters, then a partial last
    line flagged FLAG_NO_EOL; every record also gets ``flags``."""
    lines = LineAssembler(MAX_LINE)
    return [
        (data, own | flags)
        for data, own in lines.feed(text.encode("utf-8", "replace")) + lines.flush()
    ]


#: A traceback is stored at priority err (3); a ``stream`` message has its stream's default.
_TRACEBACK_FLAGS = FLAG_IOPUB | priority_flags(3)


class IopubLog:
    """Looks at the kernel's iopub messages the proxy forwards."""

    def __init__(
        self,
        store: LogStore,
        incarnation: Callable[[], int],
        cells: CellWatch,
        *,
        store_output: bool = True,
    ) -> None:
        self.store = store
        self.incarnation = incarnation
        self.cells = cells
        self.store_output = store_output

    def wants(self, header: bytes) -> bool:
        """Whether a message with this (raw) header may matter, without parsing it."""
        if b"execute_input" in header:
            return True
        return self.store_output and (b'"stream"' in header or b'"error"' in header)

    def on_message(self, rest: list[bytes]) -> None:
        """``rest``: a kernel iopub message's frames after the delimiter (signature first)."""
        try:
            kind = json.loads(rest[1]).get("msg_type")
            if kind not in ("execute_input", "stream", "error"):
                return
            parent = json.loads(rest[2])
            content = json.loads(rest[4])
        except (ValueError, AttributeError, IndexError, UnicodeDecodeError):
            return
        if not isinstance(content, dict) or not isinstance(parent, dict):
            return
        if kind == "execute_input":
            msg_id = parent.get("msg_id")
            if isinstance(msg_id, str):
                self.cells.execute_input(msg_id, content)
        elif kind == "stream" and self.store_output:
            stream = _STREAMS.get(str(content.get("name")))
            text = content.get("text")
            if stream is not None and isinstance(text, str):
                self._store(stream, text)
        elif kind == "error" and self.store_output:
            self._store(Stream.STDERR, _traceback_text(content), _TRACEBACK_FLAGS)

    def _store(self, stream: Stream, text: str, flags: int = FLAG_IOPUB) -> None:
        pieces = line_pieces(text, flags)
        if pieces:
            self.store.append(stream, self.incarnation(), time.time_ns(), pieces)


def _traceback_text(content: dict[str, Any]) -> str:
    """An ``error`` message as the text a terminal would show: its traceback, uncoloured."""
    frames = content.get("traceback")
    if isinstance(frames, list) and frames:
        text = "\n".join(str(f) for f in frames)
    else:
        text = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
    text = strip_ansi(text)
    return text if text.endswith("\n") else text + "\n"
