"""``nanny-io tail``: a kernel's log, live from its nanny or from the spill after it exited."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import psutil

from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.logrecords import LogRecord, parse_nanny_event
from nanny_io_proto.priorities import priority_of
from nanny_io_proto.streams import FLAG_NO_EOL, Stream, source_of

from .discovery import (
    KernelNotFound,
    KernelRef,
    NannyState,
    kernel_id_problem,
    resolve_kernel,
    spill_path,
    state_dir,
)
from .spill import incomplete_epochs, read_spill
from .subscriber import (
    BlockingLogClient,
    ClientEvent,
    EpochChanged,
    Gap,
    NannySilent,
    Records,
    ReplayFailed,
    ReplayUnanswered,
    Truncated,
)

#: ``tail -f`` exit status when the nanny vanished without announcing its stop (killed,
#: crashed); a nanny that stops cleanly ends ``tail -f`` with 0.
EXIT_NANNY_GONE = 3

#: The stream column's colour; the text's colour comes from the record's priority.
_STREAM_COLORS = {Stream.STDERR: "\x1b[35m", Stream.NANNY: "\x1b[1m", Stream.LOG: "\x1b[36m"}
#: By priority, as journalctl: emerg..crit bold red, err red, warning yellow, notice bold,
#: info plain, debug grey.
_PRIORITY_COLORS = ("\x1b[1;31m",) * 3 + ("\x1b[31m", "\x1b[33m", "\x1b[1m", "", "\x1b[2m")
_MARK = "\x1b[1m"
_RESET = "\x1b[0m"
#: How an escaped control character is shown in colour (reverse video tells it from text).
_ESCAPED = "\x1b[7m"

# Characters that move the cursor, retitle or clear the screen, reach the clipboard (OSC 52)
# or hide text when written raw: C0 controls except TAB and LF, DEL, C1 controls, and the
# bidirectional overrides that reorder what the eye reads. An SGR sequence (colours) is
# matched whole so that a safe one can be kept.
_CONTROL = re.compile("\x1b\\[[0-9;:]*m|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\r": "\\r", "\x1b": "\\e", "\b": "\\b", "\f": "\\f", "\v": "\\v", "\x07": "\\a"}
#: SGR parameters that only change colour or weight: no conceal (8), no blink (5, 6).
_SAFE_SGR = frozenset(
    {0, 1, 2, 3, 4, 7, 9, 21, 22, 23, 24, 27, 29, 39, 49}
    | set(range(30, 38))
    | set(range(40, 48))
    | set(range(90, 98))
    | set(range(100, 108))
)


@dataclass(frozen=True)
class TailOptions:
    """What ``nanny-io tail`` was asked for (configuration is data)."""

    kernel: str
    lines: int = 10
    follow: bool = False
    streams: tuple[Stream, ...] | None = None
    since_seq: int | None = None
    json: bool = False
    wait: bool = False
    #: Only records of this syslog priority or more severe (a lower number).
    priority: int | None = None
    #: Print kernel text as written, control characters included (``--all``).
    raw: bool = False

    def wanted(self, rec: LogRecord) -> bool:
        """Whether ``rec`` passes the priority filter (streams are chosen by the nanny)."""
        return self.priority is None or priority_of(rec.stream, rec.flags) <= self.priority


def record_text(rec: LogRecord) -> tuple[str, dict[str, Any] | None]:
    """A record's text without its newline (a nanny event's ``text``), and the event if any."""
    text = rec.data.decode("utf-8", "replace")
    event: dict[str, Any] | None = None
    if rec.stream is Stream.NANNY:
        with contextlib.suppress(RemoteProtocolError):
            event = parse_nanny_event(rec.data)
            text = str(event.get("text", text))
    if text.endswith("\n"):
        text = text[:-1]
    return text, event


def iso_time(time_ns: int) -> str:
    """A record's time as ISO 8601 in UTC, to the millisecond."""
    when = datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds")


def record_source(rec: LogRecord) -> str:
    """``fd``, ``iopub`` or ``nanny``: where a record's text came from."""
    return source_of(rec.stream, rec.flags)


def record_json(rec: LogRecord) -> dict[str, Any]:
    """A record as ``tail --json`` prints it (and the server extension serves it).

    ``seq``, ``time``, ``stream``, ``source``, ``text``, ``incarnation`` and ``priority``
    (syslog, 0-7) always; ``partial: true`` when the record does not end a line; ``event``
    (the parsed JSON) for a nanny event. ``source`` says where the text came from: ``"fd"``
    (the kernel's pipes or its log FIFO), ``"iopub"`` (a ``stream`` or ``error`` message of
    the kernel's, FLAG_IOPUB) or ``"nanny"`` (the nanny's own events).
    """
    text, event = record_text(rec)
    obj: dict[str, Any] = {
        "seq": rec.seq,
        "time": iso_time(rec.time_ns),
        "stream": rec.stream.value,
        "source": record_source(rec),
        "text": text,
        "incarnation": rec.incarnation,
        "priority": priority_of(rec.stream, rec.flags),
    }
    if rec.flags & FLAG_NO_EOL:
        obj["partial"] = True
    if event is not None:
        obj["event"] = event
    return obj


def _safe_sgr(seq: str) -> bool:
    """Whether an SGR sequence (``ESC [ ... m``) only sets colours or weight."""
    params = seq[2:-1].replace(":", ";").split(";")
    i = 0
    while i < len(params):
        p = params[i]
        if p in ("38", "48", "58"):  # extended colour: 5;n or 2;r;g;b
            rest = params[i + 1 : i + 5]
            if rest[:1] == ["5"] and len(rest) >= 2 and rest[1].isdigit():
                i += 3
                continue
            if rest[:1] == ["2"] and len(rest) == 4 and all(x.isdigit() for x in rest[1:]):
                i += 5
                continue
            return False
        if p and (not p.isdigit() or int(p) not in _SAFE_SGR):
            return False
        i += 1
    return True


def _visible(chars: str, color: bool, resume: str) -> str:
    """Control characters as escapes; the printable rest of an SGR sequence stays text."""
    shown = "".join(
        c
        if " " <= c < "\x7f"
        else _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in chars
    )
    return f"{_ESCAPED}{shown}{_RESET}{resume}" if color else shown


def escape_controls(
    text: str, *, keep_sgr: bool = False, color: bool = False, resume: str = ""
) -> str:
    """``text`` with every control character shown as an escape (``\\e``, ``\\r``, ``\\x07``),
    so kernel output cannot move the cursor, retitle or clear the terminal, write to the
    clipboard or hide what follows. With ``keep_sgr``, colour sequences that only set colours
    or weight stay as they are (an SGR 8, conceal, is escaped). With ``color``, escapes show
    in reverse video, followed by ``resume`` (the line's own colour)."""
    if not _CONTROL.search(text):
        return text

    def sub(m: re.Match[str]) -> str:
        seq = m.group()
        if len(seq) > 1 and keep_sgr and _safe_sgr(seq):
            return seq
        return _visible(seq, color, resume)

    return _CONTROL.sub(sub, text)


class Printer:
    """Renders records and notices for humans (colour on a tty) or as JSON lines.

    For humans, kernel text is escaped (see :func:`escape_controls`) unless ``raw``; with
    colour, the kernel's own colour sequences are kept when they are safe.
    """

    def __init__(
        self, out: IO[str], as_json: bool, color: bool | None = None, raw: bool = False
    ) -> None:
        self.out = out
        self.as_json = as_json
        if color is None:
            color = out.isatty() and "NO_COLOR" not in os.environ
        self.color = color and not as_json
        self.raw = raw

    def record(self, rec: LogRecord) -> None:
        if self.as_json:
            self._write(json.dumps(record_json(rec), ensure_ascii=False))
            return
        text = record_text(rec)[0]
        when = datetime.fromtimestamp(rec.time_ns / 1e9, tz=timezone.utc)
        stamp = when.astimezone().strftime("%H:%M:%S.%f")[:-3]
        head = f"{stamp} {rec.stream.value:<6} "
        color = _PRIORITY_COLORS[priority_of(rec.stream, rec.flags)] if self.color else ""
        if not self.raw:
            text = escape_controls(text, keep_sgr=self.color, color=self.color, resume=color)
        if self.color:
            stream_color = _STREAM_COLORS.get(rec.stream, "")
            if stream_color:
                head = f"{stamp} {stream_color}{rec.stream.value:<6}{_RESET} "
            text = f"{color}{text}{_RESET}" if color or "\x1b[" in text else text
        # A record holding several lines (output the kernel sent as one iopub message) shows
        # its header on each one, so no line of kernel text can pass for a record of its own.
        self._write(head + text.replace("\n", "\n" + head))

    def notice(self, kind: str, text: str, **details: Any) -> None:
        """A line about the log itself: truncation, a gap, a nanny restart or exit."""
        if self.as_json:
            self._write(json.dumps({"notice": kind, "text": text, **details}))
        else:
            line = f"-- {text} --"
            self._write(f"{_MARK}{line}{_RESET}" if self.color else line)

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def _select(
    records: Iterable[tuple[str, LogRecord]], opts: TailOptions
) -> list[tuple[str, LogRecord]]:
    chosen: Iterable[tuple[str, LogRecord]] = (
        (e, r)
        for e, r in records
        if (opts.streams is None or r.stream in opts.streams)
        and (opts.since_seq is None or r.seq >= opts.since_seq)
        and opts.wanted(r)
    )
    if opts.since_seq is None:
        return list(deque(chosen, maxlen=opts.lines))
    return list(chosen)


def find_spill(ref: str) -> Path | None:
    """The on-disk history of a kernel id (or unique id prefix, or connection file)."""
    path = Path(ref).expanduser()
    if path.suffix == ".json" and path.is_file():
        with contextlib.suppress(OSError, ValueError):
            ref = json.loads(path.read_text()).get("kernel_id", "") or ref
    if kernel_id_problem(ref) is not None:  # "a/b", "..": not a name under the state dir
        return None
    exact = spill_path(ref)
    if exact.is_dir():
        return exact
    matches = [p for p in state_dir().glob(f"spill-{ref}*") if p.is_dir()]
    if len(matches) > 1:
        ids = ", ".join(p.name.removeprefix("spill-") for p in matches)
        raise KernelNotFound(f"{ref!r} matches the history of several kernels ({ids})")
    return matches[0] if matches else None


def tail_spill(directory: Path, opts: TailOptions, printer: Printer) -> None:
    """Print what the nanny left on disk."""
    epoch = None
    cut = incomplete_epochs(directory)
    last_saved: dict[str, int] = {}  # per epoch, whatever the options select

    def saved() -> Iterator[tuple[str, LogRecord]]:
        for rec_epoch, rec in read_spill(directory):
            last_saved[rec_epoch] = rec.seq
            yield rec_epoch, rec

    printer.notice("post-mortem", f"the nanny is gone; history from {directory}")
    deaths: list[tuple[LogRecord, dict[str, Any]]] = []

    def noting_deaths() -> Iterator[tuple[str, LogRecord]]:
        for rec_epoch, rec in saved():
            if rec.stream is Stream.NANNY:
                event = record_text(rec)[1]
                if event is not None and event.get("event") == "kernel_died":
                    deaths.append((rec, event))
            yield rec_epoch, rec

    shown = _select(noting_deaths(), opts)
    if deaths:  # the last death, whether or not its record is among the lines shown
        rec, event = deaths[-1]
        fields = {k: v for k, v in event.items() if k not in ("event", "text")}
        printer.notice(
            "last-death",
            f"the kernel died at {iso_time(rec.time_ns)}: {event.get('reason', '')}",
            seq=rec.seq,
            **fields,
        )
    for rec_epoch, rec in shown:
        if epoch is not None and rec_epoch != epoch:
            _notice_cut(printer, cut.get(epoch), last_saved.get(epoch))
            printer.notice("epoch", "the nanny restarted here")
        epoch = rec_epoch
        printer.record(rec)
    if epoch is not None:
        _notice_cut(printer, cut.get(epoch), last_saved.get(epoch))


def _history_by_priority(ref: KernelRef, opts: TailOptions, printer: Printer) -> int:
    """Print the last ``opts.lines`` records of ``opts.priority`` or more severe; return the
    newest seq seen. The nanny selects by stream only, so the whole store is read here."""
    kept: deque[LogRecord] = deque(maxlen=opts.lines)
    last = 0
    with BlockingLogClient(ref.info, streams=opts.streams, since_seq=1) as client:
        for event in client.events(follow=False):
            if isinstance(event, Records):
                for rec in event.records:
                    last = rec.seq
                    if opts.wanted(rec):
                        kept.append(rec)
            elif not isinstance(event, Truncated):  # evicted history is expected here
                _unanswered(ref, event, follow=opts.follow)
                _notice(event, printer)
    for rec in kept:
        printer.record(rec)
    return last


def _notice_cut(printer: Printer, cut: tuple[int, str] | None, last_saved: int | None) -> None:
    """Say where the history on disk stops because the nanny could not write it."""
    if cut is None or last_saved is None:
        return
    reason = cut[1]
    why = os.strerror(getattr(errno, reason, errno.EIO))
    printer.notice(
        "truncated",
        f"history truncated after seq {last_saved}: the nanny could not save more ({why}); "
        "later records were kept in memory only",
        last_saved=last_saved,
        reason=reason,
    )


def _follow(ref: KernelRef, opts: TailOptions, printer: Printer) -> tuple[bool, bool]:
    """Print from a running nanny. Whether the nanny went away (while following: its process
    is gone; a stopped nanny is waited for), and whether it announced its stop first."""
    kwargs: dict[str, Any] = {"streams": opts.streams}
    if opts.since_seq is not None:
        kwargs["since_seq"] = opts.since_seq
    elif opts.priority is not None:
        last = _history_by_priority(ref, opts, printer)
        if not opts.follow:
            return False, False
        kwargs["since_seq"] = last + 1
    else:
        kwargs["last"] = opts.lines
    silence = _Silence()
    for event in _events_reconnecting(ref, kwargs, silence, follow=opts.follow):
        if isinstance(event, NannySilent):
            why = _nanny_gone(ref, silence)
            if why is not None:
                printer.notice("gone", why)
                return True, silence.stopped
            if not opts.follow:
                _notice(event, printer)
                return True, silence.stopped
            if silence.started is None:  # once per silence; the client keeps listening
                silence.started = time.monotonic() - event.seconds
                printer.notice(
                    "silent",
                    f"the nanny has not answered for {event.seconds:.0f} s "
                    f"({_nanny_condition(ref, silence)}); waiting for it",
                    seconds=round(event.seconds, 1),
                )
            continue
        if silence.started is not None:
            quiet = time.monotonic() - silence.started
            silence.started = None
            printer.notice(
                "resumed",
                f"the nanny answers again after {quiet:.0f} s of silence",
                seconds=round(quiet, 1),
            )
        if isinstance(event, Records):
            for rec in event.records:
                silence.stopped |= _is_stop(rec)
                if opts.wanted(rec):
                    printer.record(rec)
        else:
            _unanswered(ref, event, follow=opts.follow)
            _notice(event, printer)
    return False, silence.stopped


def _unanswered(ref: KernelRef, event: Any, *, follow: bool) -> None:
    """Without ``-f``, history the nanny never sent is an error (``tail -f`` says so in a
    notice and goes on live)."""
    if not follow and isinstance(event, ReplayFailed) and event.code == "unanswered":
        kernel = ref.info.kernel_id
        raise ReplayUnanswered(
            f"kernel {kernel}: history unavailable: {event.message}; "
            f"see 'nanny-io status {kernel[:8]}'"
        )


def _events_reconnecting(
    ref: KernelRef, kwargs: dict[str, Any], silence: _Silence, *, follow: bool
) -> Iterator[ClientEvent]:
    """A log client's events; it connects again to a nanny that was silent from the start
    (stopped before we connected, so no first tick came), as long as the nanny's process runs."""
    while True:
        heard = False
        with BlockingLogClient(ref.info, **kwargs) as client:
            for event in client.events(follow=follow):
                heard |= not isinstance(event, NannySilent)
                yield event
        if heard or not follow or _nanny_gone(ref, silence) is not None:
            return


@dataclass
class _Silence:
    """What ``tail -f`` knows about the nanny's silences and its end."""

    started: float | None = None  # monotonic time the current silence began
    stopped: bool = False  # the nanny announced its own stop (``nanny_stopped``)
    state: NannyState | None = None  # the followed nanny's state, once known


def _is_stop(rec: LogRecord) -> bool:
    if rec.stream is not Stream.NANNY:
        return False
    event = record_text(rec)[1]
    return event is not None and event.get("event") == "nanny_stopped"


def _nanny_process(ref: KernelRef, silence: _Silence) -> psutil.Process | None:
    """The nanny's process if it still runs (checked against its start time), else None."""
    if silence.state is None:
        silence.state = ref.state
    if silence.state is None:  # a connection file without a state file yet: look once more
        with contextlib.suppress(KernelNotFound):
            silence.state = resolve_kernel(ref.info.kernel_id).state
    state = silence.state  # kept: a later nanny for the same kernel id is another one
    if state is None or not state.nanny_alive():
        return None
    with contextlib.suppress(psutil.Error):
        return psutil.Process(state.nanny_pid)
    return None


def _nanny_gone(ref: KernelRef, silence: _Silence) -> str | None:
    """Why the nanny will not answer again, or None while its process lives."""
    if silence.stopped:
        return "the nanny stopped"
    if _nanny_process(ref, silence) is None:
        return "the nanny is gone"
    return None


def _nanny_condition(ref: KernelRef, silence: _Silence) -> str:
    proc = _nanny_process(ref, silence)
    with contextlib.suppress(psutil.Error, AttributeError):
        if proc is not None and proc.status() == psutil.STATUS_STOPPED:
            return f"its process {proc.pid} is stopped"
        if proc is not None:
            return f"its process {proc.pid} runs"
    return "its process is gone"


def _notice(event: Any, printer: Printer) -> bool:
    """Print a notice about the log itself; True when the nanny is silent (gone)."""
    if isinstance(event, Truncated):
        printer.notice(
            "truncated",
            f"history truncated: oldest kept is seq {event.oldest_seq}, {event.lost} records lost",
            oldest_seq=event.oldest_seq,
            lost=event.lost,
        )
    elif isinstance(event, Gap):
        printer.notice(
            "gap",
            f"records {event.first_missing}..{event.last_missing} could not be recovered",
            first=event.first_missing,
            last=event.last_missing,
        )
    elif isinstance(event, EpochChanged):
        printer.notice("epoch", "the nanny restarted; sequence numbers start again")
    elif isinstance(event, ReplayFailed):
        printer.notice("replay-failed", f"history unavailable: {event.message}")
    elif isinstance(event, NannySilent):
        printer.notice("silent", "the nanny is not answering (stopped?)")
        return True
    return False


def _wait_for_kernel(ref: str) -> Iterator[KernelRef]:
    """Yield the kernel each time a nanny for ``ref`` (re)appears (watching the state dir)."""
    import watchfiles

    directory = state_dir()
    while True:
        with contextlib.suppress(KernelNotFound):
            yield resolve_kernel(ref)
            continue
        for _ in watchfiles.watch(
            directory, debounce=50, step=20, rust_timeout=1000, yield_on_timeout=True
        ):
            with contextlib.suppress(KernelNotFound):
                resolve_kernel(ref)
                break


def run_tail(opts: TailOptions, out: IO[str] | None = None) -> int:
    """The ``tail`` verb; raises KernelNotFound for an unknown kernel."""
    printer = Printer(out or sys.stdout, opts.json, raw=opts.raw)
    if opts.wait:  # follow this kernel id across nanny restarts, until interrupted
        for ref in _wait_for_kernel(opts.kernel):
            gone, _ = _follow(ref, opts, printer)
            if not gone or not opts.follow:
                return 0
        return 0
    try:
        ref = resolve_kernel(opts.kernel)
    except KernelNotFound:
        spill = find_spill(opts.kernel)
        if spill is None:
            raise
        tail_spill(spill, opts, printer)
        return 0
    gone, stopped = _follow(ref, opts, printer)
    if gone and opts.follow and not stopped:
        return EXIT_NANNY_GONE
    return 0
