"""The one line a death report gives, and its parts (nanny_io_proto.deaths)."""

from __future__ import annotations

import pytest

from nanny_io_proto.control import describe_exit
from nanny_io_proto.deaths import (
    OomKill,
    PeakMemory,
    RunningCell,
    cell_code_excerpt,
    describe_cause,
    describe_death,
    format_bytes,
    format_duration,
)
from nanny_io_proto.errors import LocalProtocolError, MalformedMessage

GIB = 1 << 30


def test_the_example_of_the_protocol() -> None:
    oom = OomKill(True, "parent", 2 * GIB, "/kubepods/pod1")
    cell = RunningCell("m1", 12, 'df = pd.read_csv("big.csv")', 1000.0, 41.3)
    cause = describe_cause(
        describe_exit(None, 9, "SIGKILL"),
        "SIGKILL",
        None,
        oom=oom,
        oom_checked=True,
        nanny_killed=False,
    )
    peak = PeakMemory(int(1.97 * GIB), int(2.1 * GIB))
    assert describe_death(cause, oom=oom, peak=peak, cell=cell) == (
        "killed by the out-of-memory killer (enclosing cgroup's limit 2.00 GiB, kernel peak "
        '1.97 GiB) while running cell [12] `df = pd.read_csv("big.csv")` (started 41 s earlier)'
    )


@pytest.mark.parametrize(
    ("oom", "checked", "nanny", "want"),
    [
        (None, False, False, "killed by SIGKILL (possibly out of memory)"),
        (None, True, False, "killed by SIGKILL (not by the out-of-memory killer)"),
        (None, True, True, "killed by SIGKILL (sent by the nanny)"),
        (OomKill(False, "host"), True, False, "probably killed by the out-of-memory killer"),
        (OomKill(True, "kernel", 1 << 20), True, False, "killed by the out-of-memory killer"),
    ],
)
def test_a_sigkill_is_told_apart(oom, checked, nanny, want) -> None:
    base = describe_exit(None, 9, "SIGKILL")
    assert (
        describe_cause(base, "SIGKILL", None, oom=oom, oom_checked=checked, nanny_killed=nanny)
        == want
    )


def test_other_deaths_keep_their_description() -> None:
    base = describe_exit(None, 11, "SIGSEGV")
    assert (
        describe_cause(base, "SIGSEGV", None, oom=None, oom_checked=True, nanny_killed=False)
        == base
    )
    wrapped = describe_exit(137, None, None)
    assert describe_cause(wrapped, None, 137, oom=None, oom_checked=True, nanny_killed=False) == (
        "exited with code 137 (not by the out-of-memory killer)"
    )


def test_a_host_oom_and_a_cell_without_input() -> None:
    oom = OomKill(False, "host")
    text = describe_death(
        "probably killed by the out-of-memory killer",
        oom=oom,
        peak=PeakMemory(None, None),
        cell=RunningCell("m", None, "", None, None),
    )
    assert text == (
        "probably killed by the out-of-memory killer (the machine ran out of memory) "
        "while running a cell"
    )


def test_code_excerpts_are_short() -> None:
    assert cell_code_excerpt("\n\nx = 1\n\ny = 2\nz = 3\nw = 4\n") == "x = 1\ny = 2\nz = 3\n…"
    assert len(cell_code_excerpt("x" * 10_000)) == 400
    long_line = describe_death("exited with code 1", cell=RunningCell("m", 1, "a" * 300))
    assert long_line == "exited with code 1 while running cell [1] `" + "a" * 79 + "…`"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (17, "17 B"),
        (512 << 10, "512 KiB"),
        (int(63.94 * (1 << 20)), "63.9 MiB"),
        (2 * GIB, "2.00 GiB"),
    ],
)
def test_sizes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("s", "text"), [(0.42, "0.4 s"), (41.3, "41 s"), (200, "3 min 20 s"), (7500, "2 h 5 min")]
)
def test_durations(s: float, text: str) -> None:
    assert format_duration(s) == text


def test_invalid_parts() -> None:
    with pytest.raises(LocalProtocolError):
        OomKill(True, "pod")
    with pytest.raises(LocalProtocolError):
        PeakMemory(-1)
    with pytest.raises(LocalProtocolError):
        RunningCell("m", duration=float("nan"))
    with pytest.raises(MalformedMessage):
        OomKill.from_content({"scope": "somewhere"})
    with pytest.raises(MalformedMessage):
        RunningCell.from_content([])
