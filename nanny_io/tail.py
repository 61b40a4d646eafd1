"""``nanny-io tail``: a kernel's log, live from its nanny or from the spill after it exited."""

from __future__ import annotations

import contextlib
import errno
import json
import os
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
from nanny_io_proto.streams import FLAG_NO_EOL, Stream

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
    Truncated,
)

#: ``tail -f`` exit status when the nanny vanished without announcing its stop (killed,
#: crashed); a nanny that stops cleanly ends ``tail -f`` with 0.
EXIT_NANNY_GONE = 3

_COLORS = {Stream.STDERR: "\x1b[31m", Stream.NANNY: "\x1b[1;33m", Stream.LOG: "\x1b[36m"}
_MARK = "\x1b[1m"
_RESET = "\x1b[0m"


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


def record_json(rec: LogRecord) -> dict[str, Any]:
    """A record as ``tail --json`` prints it (and the server extension serves it).

    ``seq``, ``time``, ``stream``, ``text`` and ``incarnation`` always; ``partial: true`` when
    the record does not end a line; ``event`` (the parsed JSON) for a nanny event.
    """
    text, event = record_text(rec)
    obj: dict[str, Any] = {
        "seq": rec.seq,
        "time": iso_time(rec.time_ns),
        "stream": rec.stream.value,
        "text": text,
        "incarnation": rec.incarnation,
    }
    if rec.flags & FLAG_NO_EOL:
        obj["partial"] = True
    if event is not None:
        obj["event"] = event
    return obj


class Printer:
    """Renders records and notices for humans (colour on a tty) or as JSON lines."""

    def __init__(self, out: IO[str], as_json: bool, color: bool | None = None) -> None:
        self.out = out
        self.as_json = as_json
        if color is None:
            color = out.isatty() and "NO_COLOR" not in os.environ
        self.color = color and not as_json

    def record(self, rec: LogRecord) -> None:
        if self.as_json:
            self._write(json.dumps(record_json(rec), ensure_ascii=False))
            return
        text = record_text(rec)[0]
        when = datetime.fromtimestamp(rec.time_ns / 1e9, tz=timezone.utc)
        stamp = when.astimezone().strftime("%H:%M:%S.%f")[:-3]
        line = f"{stamp} {rec.stream.value:<6} {text}"
        color = _COLORS.get(rec.stream) if self.color else None
        self._write(f"{color}{line}{_RESET}" if color else line)

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
    for rec_epoch, rec in _select(saved(), opts):
        if epoch is not None and rec_epoch != epoch:
            _notice_cut(printer, cut.get(epoch), last_saved.get(epoch))
            printer.notice("epoch", "the nanny restarted here")
        epoch = rec_epoch
        printer.record(rec)
    if epoch is not None:
        _notice_cut(printer, cut.get(epoch), last_saved.get(epoch))


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
    else:
        kwargs["last"] = opts.lines
    silence = _Silence()
    with _Reconnecting(ref, kwargs, silence) as client:
        for event in client.events(follow=opts.follow):
            if isinstance(event, Records):
                for rec in event.records:
                    printer.record(rec)
            elif isinstance(event, Truncated):
                printer.notice(
                    "truncated",
                    f"history truncated: oldest kept is seq "
                    f"{event.oldest_seq}, {event.lost} records lost",
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
                why = _nanny_gone(ref, silence)
                if why is not None:
                    printer.notice("gone", why)
                    return True, silence.stopped
                if not opts.follow:
                    printer.notice("silent", "the nanny is not answering (stopped?)")
                    return True, silence.stopped
                if silence.started is None:  # once per silence; the client keeps listening
                    silence.started = time.monotonic() - event.seconds
                    printer.notice(
                        "silent",
                        f"the nanny has not answered for {event.seconds:.0f} s "
                        f"({_nanny_condition(ref, silence)}); waiting for it",
                        seconds=round(event.seconds, 1),
                    )
            if not isinstance(event, NannySilent) and silence.started is not None:
                quiet = time.monotonic() - silence.started
                silence.started = None
                printer.notice(
                    "resumed",
                    f"the nanny answers again after {quiet:.0f} s of silence",
                    seconds=round(quiet, 1),
                )
            if isinstance(event, Records):
                silence.stopped |= any(_is_stop(rec) for rec in event.records)
    return False, silence.stopped


class _Reconnecting:
    """A log client that connects again to a nanny that was silent from the start (stopped
    before we connected, so no first tick came), as long as the nanny's process runs."""

    def __init__(self, ref: KernelRef, kwargs: dict[str, Any], silence: _Silence) -> None:
        self.ref = ref
        self.kwargs = kwargs
        self.silence = silence

    def __enter__(self) -> _Reconnecting:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def events(self, *, follow: bool) -> Iterator[ClientEvent]:
        while True:
            heard = False
            with BlockingLogClient(self.ref.info, **self.kwargs) as client:
                for event in client.events(follow=follow):
                    heard |= not isinstance(event, NannySilent)
                    yield event
            if heard or not follow or _nanny_gone(self.ref, self.silence) is not None:
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
    printer = Printer(out or sys.stdout, opts.json)
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
