"""Why a kernel died, as data and as one line for humans (specs/protocol.md §9.2).

The nanny gathers the facts (the wait status, the out-of-memory counters of the kernel's
cgroups, the kernel's peak memory, the cell that was running); this module holds them in
frozen values that travel in ``kernel_died`` and turns them into the one line every frontend
shows: ``killed by the out-of-memory killer (cgroup limit 2.00 GiB, kernel peak 1.97 GiB)
while running cell [12] `df = pd.read_csv("big.csv")` (started 41 s earlier)``.
Pure: times and counters are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from .errors import LocalProtocolError, MalformedMessage

__all__ = [
    "CELL_CODE_MAX_CHARS",
    "CELL_CODE_MAX_LINES",
    "OOM_SCOPES",
    "OomKill",
    "PeakMemory",
    "RunningCell",
    "cell_code_excerpt",
    "describe_cause",
    "describe_death",
    "format_bytes",
    "format_duration",
]

#: Which limit an out-of-memory kill hit: the kernel's own cgroup's, an enclosing cgroup's
#: (a container or a pod), or none known (the machine ran out of memory).
OOM_SCOPES = frozenset({"kernel", "parent", "host"})
#: How much of a running cell's code a death report carries.
CELL_CODE_MAX_LINES = 3
CELL_CODE_MAX_CHARS = 400


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _mapping(content: object, what: str) -> Mapping[str, Any]:
    if not isinstance(content, Mapping):
        raise MalformedMessage(f"kernel_died {what!r} must be an object, got {content!r:.80}")
    return content


@dataclass(frozen=True, slots=True)
class OomKill:
    """The out-of-memory killer ended the kernel.

    ``certain`` is False when only a machine-wide counter moved (``/proc/vmstat``), so the
    kill may have been another process's; ``limit`` is the limit that was hit, in bytes, and
    ``cgroup`` the cgroup that has it (None for ``scope == "host"``).
    """

    certain: bool
    scope: str
    limit: int | None = None
    cgroup: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.certain, bool):
            raise LocalProtocolError(f"certain must be a bool, got {self.certain!r}")
        if self.scope not in OOM_SCOPES:
            raise LocalProtocolError(f"scope must be kernel, parent or host, got {self.scope!r}")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 0):
            raise LocalProtocolError(f"limit must be bytes or None, got {self.limit!r}")
        if self.cgroup is not None and not isinstance(self.cgroup, str):
            raise LocalProtocolError(f"cgroup must be a string or None, got {self.cgroup!r}")

    def to_content(self) -> dict[str, Any]:
        return {
            "certain": self.certain,
            "scope": self.scope,
            "limit": self.limit,
            "cgroup": self.cgroup,
        }

    @classmethod
    def from_content(cls, content: object) -> OomKill:
        content = _mapping(content, "oom")
        try:
            return cls(
                content.get("certain", True),
                content.get("scope", "host"),
                content.get("limit"),
                content.get("cgroup"),
            )
        except LocalProtocolError as exc:
            raise MalformedMessage(f"invalid kernel_died 'oom': {exc}") from exc


@dataclass(frozen=True, slots=True)
class PeakMemory:
    """The most memory the kernel used, in bytes: its own process's (from the resource usage
    of its wait status) and its whole process tree's (sampled); None when unknown."""

    kernel: int | None = None
    tree: int | None = None

    def __post_init__(self) -> None:
        for name in ("kernel", "tree"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise LocalProtocolError(f"{name} peak must be bytes or None, got {value!r}")

    def to_content(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "tree": self.tree}

    @classmethod
    def from_content(cls, content: object) -> PeakMemory:
        content = _mapping(content, "peak_memory")
        try:
            return cls(content.get("kernel"), content.get("tree"))
        except LocalProtocolError as exc:
            raise MalformedMessage(f"invalid kernel_died 'peak_memory': {exc}") from exc


@dataclass(frozen=True, slots=True)
class RunningCell:
    """The execute request that was running when the kernel died.

    ``execution_count`` and ``code`` come from its ``execute_input`` (None and "" when the
    kernel died before publishing it); ``started`` is when it started (Unix time) and
    ``duration`` how long it had run, in seconds.
    """

    msg_id: str
    execution_count: int | None = None
    code: str = ""
    started: float | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.msg_id, str):
            raise LocalProtocolError(f"msg_id must be a string, got {self.msg_id!r}")
        if self.execution_count is not None and not _is_int(self.execution_count):
            raise LocalProtocolError(
                f"execution_count must be an int or None, got {self.execution_count!r}"
            )
        if not isinstance(self.code, str) or len(self.code) > CELL_CODE_MAX_CHARS + 1:
            raise LocalProtocolError(f"code must be a short string, got {self.code!r:.80}")
        for name in ("started", "duration"):
            value = getattr(self, name)
            if value is not None and not _is_number(value):
                raise LocalProtocolError(f"{name} must be a finite number or None, got {value!r}")

    def to_content(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "execution_count": self.execution_count,
            "code": self.code,
            "started": self.started,
            "duration": self.duration,
        }

    @classmethod
    def from_content(cls, content: object) -> RunningCell:
        content = _mapping(content, "cell")
        try:
            return cls(
                content.get("msg_id", ""),
                content.get("execution_count"),
                content.get("code", ""),
                content.get("started"),
                content.get("duration"),
            )
        except LocalProtocolError as exc:
            raise MalformedMessage(f"invalid kernel_died 'cell': {exc}") from exc


def cell_code_excerpt(code: str) -> str:
    """The first lines of a cell's code that a death report carries (blank lines skipped)."""
    lines = [line.rstrip() for line in code.splitlines() if line.strip()]
    text = "\n".join(lines[:CELL_CODE_MAX_LINES])
    if len(text) > CELL_CODE_MAX_CHARS:
        text = text[: CELL_CODE_MAX_CHARS - 1] + "…"
    elif len(lines) > CELL_CODE_MAX_LINES:
        text += "\n…"
    return text


def format_bytes(n: int) -> str:
    """``2.00 GiB``, ``63.9 MiB``, ``512 KiB``, ``17 B``: three significant digits."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            if value >= 100:
                return f"{value:.0f} {unit}"
            return f"{value:.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``41 s``, ``3 min 20 s``, ``2 h 5 min``."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def describe_cause(
    base: str,
    signal_name: str | None,
    exit_code: int | None,
    *,
    oom: OomKill | None,
    oom_checked: bool,
    nanny_killed: bool,
) -> str:
    """How the process ended: ``base`` (``describe_exit()``'s text) unless the
    out-of-memory counters or the nanny's own kill say more."""
    if oom is not None:
        return (
            "killed by the out-of-memory killer"
            if oom.certain
            else "probably killed by the out-of-memory killer"
        )
    killed = signal_name == "SIGKILL" or exit_code == 137
    if killed and nanny_killed:
        return f"{base.split(' (')[0]} (sent by the nanny)"
    if killed and oom_checked:
        return f"{base.split(' (')[0]} (not by the out-of-memory killer)"
    return base


def describe_death(
    cause: str,
    *,
    oom: OomKill | None = None,
    peak: PeakMemory | None = None,
    cell: RunningCell | None = None,
) -> str:
    """The one line every frontend shows: the cause, the memory when memory ran out, and
    the cell that was running."""
    text = cause
    if oom is not None:
        parts = []
        if oom.limit is not None:
            where = {"kernel": "cgroup limit", "parent": "enclosing cgroup's limit"}.get(
                oom.scope, "limit"
            )
            parts.append(f"{where} {format_bytes(oom.limit)}")
        else:
            parts.append("the machine ran out of memory")
        if peak is not None and peak.kernel is not None:
            parts.append(f"kernel peak {format_bytes(peak.kernel)}")
        text += f" ({', '.join(parts)})"
    if cell is not None:
        text += " while running "
        text += f"cell [{cell.execution_count}]" if cell.execution_count is not None else "a cell"
        first = cell.code.split("\n", 1)[0]
        if first:
            more = "…" if "\n" in cell.code and not first.endswith("…") else ""
            if len(first) > 80:
                first, more = first[:79], "…"
            text += f" `{first}{more}`"
        if cell.duration is not None:
            text += f" (started {format_duration(cell.duration)} earlier)"
    return text
