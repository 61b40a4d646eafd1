"""``nanny-io status KERNEL``: one kernel in detail, with the history of its deaths.

A running nanny's state file has the kernel's state and its last deaths. Once the nanny is
gone its state file is gone too, but every death is a ``kernel_died`` record in the log the
nanny left on disk, so the history is read from there.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import IO, Any

from nanny_io_proto.deaths import format_bytes, format_duration
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.logrecords import parse_nanny_event
from nanny_io_proto.streams import Stream

from .discovery import KernelNotFound, resolve_kernel, state_summary
from .spill import read_spill
from .tail import find_spill, iso_time

#: Fields of a death, in the order ``--json`` gives them.
DEATH_FIELDS = (
    "incarnation",
    "time",
    "reason",
    "cause",
    "exit_code",
    "signal",
    "signal_name",
    "oom",
    "peak_memory",
    "cell",
    "last_words",
)


def _death(content: dict[str, Any], time_iso: str | None) -> dict[str, Any]:
    death = {k: content.get(k) for k in DEATH_FIELDS}
    death["time"] = time_iso
    death["last_words"] = content.get("last_words") or []
    return death


def kernel_status(ref: str) -> dict[str, Any]:
    """What ``status --json`` prints: ``list --json``'s row, plus ``deaths`` (oldest first)
    and ``nanny`` (``"running"``, or ``"gone"`` when read from the history on disk; then
    ``status`` is the kernel's last known state: ``dead``, ``stopped`` or ``unknown``)."""
    kernel_id = ref
    with contextlib.suppress(KernelNotFound):
        found = resolve_kernel(ref)
        kernel_id = found.info.kernel_id
        if found.state is not None:
            state = found.state
            row = state_summary(state, True, time.time())
            deaths = [
                _death(d, iso_time(int(float(d.get("time") or 0) * 1e9)))
                for d in state.deaths
                if isinstance(d, dict)
            ]
            return {**row, "nanny": "running", "exit_reason": state.exit_reason, "deaths": deaths}
    spill = find_spill(kernel_id)
    if spill is None:
        raise KernelNotFound(f"no kernel and no kernel history matches {ref!r}")
    return _from_history(spill.name.removeprefix("spill-"), spill)


def _from_history(kernel_id: str, spill: Any) -> dict[str, Any]:
    deaths: list[dict[str, Any]] = []
    incarnation = 0
    status = "unknown"
    name = ""
    for _, rec in read_spill(spill):
        if rec.stream is not Stream.NANNY:
            continue
        with contextlib.suppress(RemoteProtocolError):
            event = parse_nanny_event(rec.data)
            kind = event.get("event")
            incarnation = max(incarnation, rec.incarnation)
            if kind == "kernel_died":
                deaths.append(_death(event, iso_time(rec.time_ns)))
                status = "dead"
            elif kind == "kernel_stopped":
                status = "stopped"
            elif kind in ("kernel_started", "kernel_restarted"):
                status = "unknown"  # its nanny ended without saying more
            if isinstance(event.get("kernel_name"), str):
                name = event["kernel_name"]
    return {
        "kernel_id": kernel_id,
        "kernel_name": name,
        "nanny": "gone",
        "status": status,
        "incarnation": incarnation,
        "exit_reason": deaths[-1]["reason"] if deaths and status == "dead" else None,
        "history": str(spill),
        "deaths": deaths,
    }


def print_status(status: dict[str, Any], out: IO[str]) -> None:
    """``status`` for humans."""

    def line(label: str, value: str) -> None:
        out.write(f"  {label + ':':<13} {value}".rstrip() + "\n")

    name = f" ({status['kernel_name']})" if status.get("kernel_name") else ""
    out.write(f"kernel {status['kernel_id']}{name}\n")
    if status["nanny"] == "gone":
        line("status", f"the nanny is gone; history from {status['history']}")
    else:
        line("status", f"{status['status']} (incarnation {status['incarnation']})")
        line("nanny", f"pid {status['nanny_pid']}")
        if status.get("kernel_pid") and status.get("uptime") is not None:
            memory = status.get("memory")
            mem = f", memory {format_bytes(memory)}" if memory else ""
            line(
                "kernel", f"pid {status['kernel_pid']}, up {format_duration(status['uptime'])}{mem}"
            )
        line("connection", str(status.get("connection_file")))
    deaths = status["deaths"]
    line("deaths", str(len(deaths)) if deaths else "none")
    for death in deaths:
        when = death.get("time")
        if when:
            when = datetime.fromisoformat(when).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"\ndeath of incarnation {death.get('incarnation')} at {when}\n")
        line("reason", str(death.get("reason")))
        cell = death.get("cell")
        if isinstance(cell, dict):
            count = cell.get("execution_count")
            label = f"[{count}]" if count is not None else "(no number)"
            ran = cell.get("duration")
            ran_text = f", ran {format_duration(ran)}" if isinstance(ran, int | float) else ""
            line("cell", f"{label} {cell.get('msg_id')}{ran_text}")
            for code_line in str(cell.get("code") or "").splitlines():
                out.write(f"      {code_line}\n")
        peak = death.get("peak_memory")
        if isinstance(peak, dict) and (peak.get("kernel") or peak.get("tree")):
            parts = [
                f"{who} {format_bytes(peak[who])}" for who in ("kernel", "tree") if peak.get(who)
            ]
            line("peak memory", ", ".join(parts))
        words = death.get("last_words") or []
        if words:
            line("last words", "")
            for word in words:
                out.write(f"    {word.get('stream', ''):<6} {word.get('text', '')}\n")
