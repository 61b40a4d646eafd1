"""Content schemas of the messages the nanny answers itself and of the broadcasts it publishes.

On control the nanny handles ``interrupt_request``, ``signal_request``, ``shutdown_request``
and ``launch_request``; on iopub it publishes ``kernel_started``, ``kernel_restarted``,
``kernel_died``, ``status: starting`` and (without a kernel manager) ``status: dead``.
Signal tables are passed in, so this module stays pure and platform independent.
specs/protocol.md is the authority.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from .deaths import OomKill, PeakMemory, RunningCell
from .errors import LocalProtocolError, MalformedMessage

__all__ = [
    "LAST_WORDS_MAX_CHARS",
    "LAST_WORDS_MAX_LINES",
    "LAST_WORDS_STREAMS",
    "NANNY_BROADCAST_TYPES",
    "NANNY_CONTROL_TYPES",
    "KernelDied",
    "KernelRestarted",
    "KernelStarted",
    "LastWords",
    "ShutdownRequest",
    "dead_status_content",
    "describe_exit",
    "error_reply_content",
    "exit_details",
    "interrupt_reply_content",
    "launch_reply_content",
    "parse_shutdown_request",
    "parse_signal_request",
    "shutdown_reply_content",
    "signal_name",
    "signal_reply_content",
    "starting_status_content",
]

#: Control requests the nanny answers itself (everything else on control is forwarded).
NANNY_CONTROL_TYPES = frozenset(
    {"interrupt_request", "signal_request", "shutdown_request", "launch_request"}
)
#: Message types the nanny publishes on iopub on its own account.
NANNY_BROADCAST_TYPES = frozenset({"kernel_started", "kernel_restarted", "kernel_died"})

#: Streams a kernel_died ``last_words`` entry may come from.
LAST_WORDS_STREAMS = frozenset({"stdout", "stderr", "log"})
#: Bounds on ``last_words`` so a death notice stays a small message.
LAST_WORDS_MAX_LINES = 100
LAST_WORDS_MAX_CHARS = 65536

_SIGNAL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_SIGNAL_DIGITS = re.compile(r"[0-9]{1,6}")

# Why a signal probably killed the kernel, for people who do not know signal names by heart.
_SIGNAL_HINTS = {
    "SIGKILL": "possibly out of memory",
    "SIGSEGV": "segmentation fault",
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
    "SIGFPE": "floating-point exception",
    "SIGILL": "illegal instruction",
    "SIGPIPE": "broken pipe",
    "SIGXCPU": "CPU time limit exceeded",
    "SIGXFSZ": "file size limit exceeded",
}
# Exit codes that usually mean a signal killed a process under a wrapper (a shell reports
# 128 + signum; SIGKILL is 9 and SIGSEGV 11 on every POSIX platform), or a Windows crash.
_EXIT_HINTS = {
    137: "128 + SIGKILL: a wrapped process was killed, possibly out of memory",
    139: "128 + SIGSEGV: a wrapped process had a segmentation fault",
    0xC0000005: "Windows access violation",
    0xC00000FD: "Windows stack overflow",
}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_mapping(content: object, what: str) -> Mapping[str, Any]:
    if not isinstance(content, Mapping):
        raise MalformedMessage(f"{what} content must be an object, got {type(content).__name__}")
    return content


# --- signals -------------------------------------------------------------------------------


def parse_signal_request(content: Mapping[str, Any], signals: Mapping[str, int]) -> int:
    """The signal number a ``signal_request`` asks for.

    ``signum`` is a number from ``signals`` (name -> number, as on this platform), a name
    ("SIGUSR1" or "USR1", any case) or decimal digits. MalformedMessage otherwise.
    """
    content = _require_mapping(content, "signal_request")
    if "signum" not in content:
        raise MalformedMessage("signal_request lacks 'signum'; send a signal name like 'SIGINT'")
    signum = content["signum"]
    if isinstance(signum, str):
        if _SIGNAL_DIGITS.fullmatch(signum):
            signum = int(signum)
        elif _SIGNAL_NAME.fullmatch(signum):
            wanted = signum.upper().removeprefix("SIG")
            for name, number in signals.items():
                if name.upper().removeprefix("SIG") == wanted:
                    return number
            raise MalformedMessage(f"unknown signal name {content['signum']!r} on this platform")
        else:
            raise MalformedMessage(f"invalid signal {signum!r:.80}; use a name like 'SIGINT'")
    if not _is_int(signum):
        raise MalformedMessage(f"signum must be a signal name or number, got {signum!r:.80}")
    if signum not in signals.values():
        raise MalformedMessage(f"unknown signal number {signum!r} on this platform")
    return int(signum)


def signal_name(signum: int, signals: Mapping[str, int]) -> str:
    """The name of ``signum`` in ``signals`` (the first one listed), or "signal <n>"."""
    for name, number in signals.items():
        if number == signum:
            return name
    return f"signal {signum}"


def signal_reply_content(signum: int, signal_name: str) -> dict[str, Any]:
    """``signal_reply`` content once ``signum`` was delivered to the kernel's process group."""
    if not _is_int(signum) or signum <= 0:
        raise LocalProtocolError(f"signum must be a positive int, got {signum!r}")
    if not isinstance(signal_name, str) or not signal_name:
        raise LocalProtocolError(f"signal_name must be a non-empty string, got {signal_name!r}")
    return {"status": "ok", "signum": signum, "signal_name": signal_name}


def interrupt_reply_content() -> dict[str, Any]:
    """``interrupt_reply`` content after the nanny interrupted the kernel."""
    return {"status": "ok"}


def error_reply_content(ename: str, evalue: str) -> dict[str, Any]:
    """An error ``*_reply`` content in the standard Jupyter shape."""
    if not isinstance(ename, str) or not isinstance(evalue, str):
        raise LocalProtocolError(f"ename and evalue must be strings: {ename!r}, {evalue!r}")
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": []}


# --- shutdown ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShutdownRequest:
    """A ``shutdown_request``: stop the kernel, and launch it again when ``restart``."""

    restart: bool

    def __post_init__(self) -> None:
        if not isinstance(self.restart, bool):
            raise LocalProtocolError(f"restart must be a bool, got {self.restart!r}")


def parse_shutdown_request(content: Mapping[str, Any]) -> ShutdownRequest:
    """Validate ``shutdown_request`` content; a missing ``restart`` means False."""
    content = _require_mapping(content, "shutdown_request")
    restart = content.get("restart", False)
    if not isinstance(restart, bool):
        raise MalformedMessage(f"shutdown_request 'restart' must be true or false, got {restart!r}")
    return ShutdownRequest(restart)


def shutdown_reply_content(restart: bool) -> dict[str, Any]:
    """``shutdown_reply`` content, sent by the nanny only when the kernel did not reply."""
    if not isinstance(restart, bool):
        raise LocalProtocolError(f"restart must be a bool, got {restart!r}")
    return {"status": "ok", "restart": restart}


# --- death ---------------------------------------------------------------------------------


#: One line of last words: (stream, text), or (stream, text, syslog priority).
Words = tuple[str, str] | tuple[str, str, int]


def _check_last_words(lines: object, exc: type[Exception]) -> tuple[Words, ...]:
    if not isinstance(lines, tuple):
        raise exc(f"last words must be a tuple, got {type(lines).__name__}")
    if len(lines) > LAST_WORDS_MAX_LINES:
        raise exc(f"too many last words: {len(lines)} lines > {LAST_WORDS_MAX_LINES}")
    total = 0
    for line in lines:
        if (
            not isinstance(line, tuple)
            or len(line) not in (2, 3)
            or not isinstance(line[0], str)
            or not isinstance(line[1], str)
        ):
            raise exc(f"a last words line must be (stream, text[, priority]), got {line!r:.80}")
        if line[0] not in LAST_WORDS_STREAMS:
            raise exc(f"unknown last words stream {line[0]!r}; use stdout, stderr or log")
        if len(line) == 3 and not (_is_int(line[2]) and 0 <= line[2] <= 7):
            raise exc(f"a last words priority must be an int from 0 to 7, got {line[2]!r:.80}")
        total += len(line[1])
    if total > LAST_WORDS_MAX_CHARS:
        raise exc(f"last words too long: {total} characters > {LAST_WORDS_MAX_CHARS}")
    return lines


@dataclass(frozen=True, slots=True)
class LastWords:
    """The kernel's final output, bounded to fit in a kernel_died message."""

    lines: tuple[Words, ...]  # (stream, text[, priority]), oldest first

    def __post_init__(self) -> None:
        _check_last_words(self.lines, LocalProtocolError)

    @classmethod
    def from_tail(
        cls,
        lines: Iterable[Words],
        *,
        max_lines: int = LAST_WORDS_MAX_LINES,
        max_chars: int = LAST_WORDS_MAX_CHARS,
    ) -> LastWords:
        """Keep the newest lines that fit the bounds (a too-long line keeps its end)."""
        max_lines = min(max_lines, LAST_WORDS_MAX_LINES)
        budget = min(max_chars, LAST_WORDS_MAX_CHARS)
        kept: list[Words] = []
        for line in reversed(list(lines)[-max_lines:] if max_lines > 0 else []):
            text = line[1]
            if budget <= 0:
                break
            if len(text) > budget:
                text = text[-budget:]
            kept.append((line[0], text, *line[2:]))
            budget -= len(text)
        return cls(tuple(reversed(kept)))


def _optional_int(content: Mapping[str, Any], key: str) -> int | None:
    value = content.get(key)
    if value is not None and not _is_int(value):
        raise MalformedMessage(f"kernel_died {key!r} must be an integer or null, got {value!r:.80}")
    return value


def _incarnation(content: Mapping[str, Any], what: str) -> int:
    value = content.get("incarnation")
    if not _is_int(value):
        raise MalformedMessage(f"{what} 'incarnation' must be an integer, got {value!r:.80}")
    return value


def _words_json(line: Words) -> dict[str, Any]:
    obj: dict[str, Any] = {"stream": line[0], "text": line[1]}
    if len(line) == 3:
        obj["priority"] = line[2]
    return obj


@dataclass(frozen=True, slots=True)
class KernelDied:
    """The kernel process exited without being asked to: how, and what it said last."""

    exit_code: int | None  # from exit() / os._exit; None when killed by a signal
    signal: int | None  # the signal number when killed by a signal
    signal_name: str | None  # "SIGKILL"; None when unknown on this platform
    incarnation: int  # which launch of the kernel died, >= 1
    reason: str  # one line for humans: describe_death(), or describe_exit()
    last_words: tuple[Words, ...] = ()  # (stream, text[, priority]), oldest first
    # What the nanny found out beyond the wait status (deaths.py); None: not known.
    cause: str | None = None  # how it ended, without memory or cell: "killed by SIGSEGV (...)"
    oom: OomKill | None = None  # set when the out-of-memory killer ended it
    peak_memory: PeakMemory | None = None
    cell: RunningCell | None = None  # the request that was running

    def __post_init__(self) -> None:
        for name in ("exit_code", "signal"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise LocalProtocolError(f"{name} must be an int or None, got {value!r}")
        if self.exit_code is not None and self.signal is not None:
            raise LocalProtocolError("a kernel exits with a code or by a signal, not both")
        if self.signal is not None and self.signal <= 0:
            raise LocalProtocolError(f"signal must be positive, got {self.signal!r}")
        if self.signal_name is not None and (
            not isinstance(self.signal_name, str) or self.signal is None
        ):
            raise LocalProtocolError(f"signal_name {self.signal_name!r} needs a signal number")
        if not _is_int(self.incarnation) or self.incarnation < 1:
            raise LocalProtocolError(f"incarnation must be an int >= 1, got {self.incarnation!r}")
        if not isinstance(self.reason, str):
            raise LocalProtocolError(f"reason must be a string, got {self.reason!r}")
        _check_last_words(self.last_words, LocalProtocolError)
        if self.cause is not None and not isinstance(self.cause, str):
            raise LocalProtocolError(f"cause must be a string or None, got {self.cause!r}")
        for name, kind in (("oom", OomKill), ("peak_memory", PeakMemory), ("cell", RunningCell)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise LocalProtocolError(f"{name} must be a {kind.__name__} or None")

    def to_content(self) -> dict[str, Any]:
        """``kernel_died`` message content."""
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "signal_name": self.signal_name,
            "incarnation": self.incarnation,
            "reason": self.reason,
            "last_words": [_words_json(w) for w in self.last_words],
            "cause": self.cause,
            "oom": None if self.oom is None else self.oom.to_content(),
            "peak_memory": None if self.peak_memory is None else self.peak_memory.to_content(),
            "cell": None if self.cell is None else self.cell.to_content(),
        }

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> KernelDied:
        """Parse ``kernel_died`` content; unknown keys are ignored, anything invalid is
        MalformedMessage."""
        content = _require_mapping(content, "kernel_died")
        signal_name = content.get("signal_name")
        if signal_name is not None and not isinstance(signal_name, str):
            raise MalformedMessage(
                f"kernel_died 'signal_name' must be a string, got {signal_name!r:.80}"
            )
        reason = content.get("reason")
        if not isinstance(reason, str):
            raise MalformedMessage(f"kernel_died 'reason' must be a string, got {reason!r:.80}")
        raw_words = content.get("last_words", [])
        if not isinstance(raw_words, list):
            raise MalformedMessage(
                f"kernel_died 'last_words' must be a list, got {raw_words!r:.80}"
            )
        words: list[Words] = []
        for item in raw_words:
            if not isinstance(item, dict):
                raise MalformedMessage(f"a last_words entry must be an object, got {item!r:.80}")
            line: tuple[Any, ...] = (item.get("stream"), item.get("text"))
            if "priority" in item:
                line += (item["priority"],)
            words.append(line)  # checked by __post_init__
        cause = content.get("cause")
        if cause is not None and not isinstance(cause, str):
            raise MalformedMessage(f"kernel_died 'cause' must be a string, got {cause!r:.80}")
        oom, peak, cell = (content.get(k) for k in ("oom", "peak_memory", "cell"))
        try:
            return cls(
                exit_code=_optional_int(content, "exit_code"),
                signal=_optional_int(content, "signal"),
                signal_name=signal_name,
                incarnation=_incarnation(content, "kernel_died"),
                reason=reason,
                last_words=tuple(words),
                cause=cause,
                oom=None if oom is None else OomKill.from_content(oom),
                peak_memory=None if peak is None else PeakMemory.from_content(peak),
                cell=None if cell is None else RunningCell.from_content(cell),
            )
        except LocalProtocolError as exc:
            raise MalformedMessage(f"invalid kernel_died content: {exc}") from exc


def describe_exit(exit_code: int | None, signal: int | None, signal_name: str | None) -> str:
    """A short human explanation of how a process ended, with a hint for common crashes."""
    if signal is not None:
        if signal_name is None:
            return f"killed by signal {signal}"
        hint = _SIGNAL_HINTS.get(signal_name)
        return f"killed by {signal_name} ({hint})" if hint else f"killed by {signal_name}"
    if exit_code is None:
        return "exited with unknown status"
    if exit_code == 0:
        return "exited normally (code 0)"
    hint = _EXIT_HINTS.get(exit_code)
    return f"exited with code {exit_code} ({hint})" if hint else f"exited with code {exit_code}"


def exit_details(
    returncode: int, signals: Mapping[int, str]
) -> tuple[int | None, int | None, str | None]:
    """Split a Popen-style ``returncode`` (negative: killed by that signal) into
    ``(exit_code, signal, signal_name)``; ``signals`` maps numbers to names."""
    if not _is_int(returncode):
        raise LocalProtocolError(f"returncode must be an int, got {returncode!r}")
    if returncode < 0:
        return None, -returncode, signals.get(-returncode)
    return returncode, None, None


# --- start and restart ---------------------------------------------------------------------


def _check_launch(incarnation: object, pid: object, minimum: int) -> None:
    if not _is_int(incarnation) or incarnation < minimum:
        raise LocalProtocolError(f"incarnation must be an int >= {minimum}, got {incarnation!r}")
    if not _is_int(pid) or pid < 1:
        raise LocalProtocolError(f"pid must be a positive int, got {pid!r}")


def _parse_launch(content: object, what: str) -> tuple[int, int]:
    content = _require_mapping(content, what)
    pid = content.get("pid")
    if not _is_int(pid):
        raise MalformedMessage(f"{what} 'pid' must be an integer, got {pid!r:.80}")
    return _incarnation(content, what), pid


@dataclass(frozen=True, slots=True)
class KernelStarted:
    """The first launch of the kernel (incarnation 1) is running as process ``pid``."""

    incarnation: int
    pid: int

    def __post_init__(self) -> None:
        _check_launch(self.incarnation, self.pid, 1)

    def to_content(self) -> dict[str, Any]:
        """``kernel_started`` message content."""
        return {"incarnation": self.incarnation, "pid": self.pid}

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> KernelStarted:
        """Parse ``kernel_started`` content (MalformedMessage when invalid)."""
        incarnation, pid = _parse_launch(content, "kernel_started")
        try:
            return cls(incarnation, pid)
        except LocalProtocolError as exc:
            raise MalformedMessage(f"invalid kernel_started content: {exc}") from exc


@dataclass(frozen=True, slots=True)
class KernelRestarted:
    """The kernel was launched again (incarnation >= 2) on the same ports and key."""

    incarnation: int
    pid: int

    def __post_init__(self) -> None:
        _check_launch(self.incarnation, self.pid, 2)

    def to_content(self) -> dict[str, Any]:
        """``kernel_restarted`` message content."""
        return {"incarnation": self.incarnation, "pid": self.pid}

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> KernelRestarted:
        """Parse ``kernel_restarted`` content (MalformedMessage when invalid)."""
        incarnation, pid = _parse_launch(content, "kernel_restarted")
        try:
            return cls(incarnation, pid)
        except LocalProtocolError as exc:
            raise MalformedMessage(f"invalid kernel_restarted content: {exc}") from exc


def launch_reply_content(launched: KernelStarted | KernelRestarted) -> dict[str, Any]:
    """``launch_reply`` content: the incarnation a ``launch_request`` started, now ready."""
    return {"status": "ok", **launched.to_content()}


def dead_status_content() -> dict[str, Any]:
    """iopub ``status`` content the nanny publishes after ``kernel_died`` (unmanaged only)."""
    return {"execution_state": "dead"}


def starting_status_content() -> dict[str, Any]:
    """iopub ``status`` content the nanny publishes when it launches an incarnation.

    The kernel publishes its own ``starting`` before any subscription reaches it, so nobody
    sees that one; the nanny's stands in for it (jupyter_server's kernel model then returns
    to ``idle`` with the kernel's first status).
    """
    return {"execution_state": "starting"}
