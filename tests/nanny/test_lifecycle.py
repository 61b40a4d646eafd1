"""The kernel's lifecycle table and the journal that records it (no kernel needed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from nanny_io.discovery import NannyState
from nanny_io.journal import Journal
from nanny_io.lifecycle import (
    TRANSITIONS,
    InvalidTransition,
    KernelState,
    Lifecycle,
    kernel_process_runs,
)
from nanny_io.store import LogStore
from nanny_io_proto.logrecords import parse_nanny_event
from nanny_io_proto.streams import Stream

S = KernelState


def test_every_state_has_a_row_and_every_row_leads_somewhere() -> None:
    assert set(TRANSITIONS) == set(KernelState)
    assert all(TRANSITIONS[state] for state in KernelState)


@pytest.mark.parametrize(
    "path",
    [
        # a life: start, run, die, restart by a manager, stop for a restart, shut down
        [S.STARTING, S.RUNNING, S.DEAD, S.RESTARTING, S.STARTING, S.RUNNING],
        [S.RUNNING, S.SHUTTING_DOWN, S.STOPPED, S.RESTARTING, S.STARTING],
        [S.RUNNING, S.SHUTTING_DOWN, S.RESTARTING, S.STARTING, S.DEAD, S.STOPPED],
        [S.STARTING, S.DEAD],  # a restarted kernel that died at once, or did not start
    ],
)
def test_the_lives_the_nanny_leads_are_allowed(path: list[KernelState]) -> None:
    lifecycle = Lifecycle(S.STARTING)
    for state in path:
        lifecycle.to(state)
    assert lifecycle.state is path[-1]


@pytest.mark.parametrize(
    ("start", "bad"),
    [
        (S.DEAD, S.RUNNING),
        (S.STOPPED, S.STARTING),
        (S.RUNNING, S.STARTING),
        (S.DEAD, S.SHUTTING_DOWN),
    ],
)
def test_a_move_the_table_does_not_allow_raises(start: KernelState, bad: KernelState) -> None:
    lifecycle = Lifecycle(start)
    with pytest.raises(InvalidTransition, match=f"{start.value!r} -> {bad.value!r}"):
        lifecycle.to(bad)
    assert lifecycle.state is start


def test_ticks_know_four_states_and_list_knows_when_a_kernel_runs() -> None:
    ticks = {Lifecycle(state).tick_state for state in KernelState}
    assert ticks == {"starting", "running", "restarting", "dead"}
    assert Lifecycle(S.STOPPED).tick_state == "restarting"
    assert [s.value for s in KernelState if kernel_process_runs(s.value)] == [
        "starting",
        "running",
        "shutting-down",
        "restarting",
    ]
    assert not kernel_process_runs("stale") and not kernel_process_runs(None)


@pytest.fixture
def journal(tmp_path, monkeypatch) -> Journal:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    state = NannyState("k1", "python3", str(tmp_path / "kernel-k1.json"), 1, 0.0)
    return Journal(state, LogStore(epoch="e1", max_bytes=1 << 20))


def test_the_journal_saves_each_state_with_its_incarnation(journal: Journal) -> None:
    seen: list[str] = []
    journal.on_change(lambda j: seen.append(j.lifecycle.tick_state))
    journal.enter(S.STARTING, incarnation=1, pid=4242, started_at=12.5)
    journal.enter(S.RUNNING)
    saved = json.loads(journal.state.path.read_text())
    assert (saved["status"], saved["incarnation"], saved["kernel_pid"]) == ("running", 1, 4242)
    assert saved["started_at"] == 12.5
    assert seen == ["starting", "running"]
    with pytest.raises(InvalidTransition):
        journal.enter(S.STARTING)
    assert json.loads(journal.state.path.read_text())["status"] == "running"


def test_journal_events_are_nanny_records_of_the_current_incarnation(journal: Journal) -> None:
    stored: list[tuple[Stream, int, int]] = []
    journal.store.add_listener(lambda *a: stored.append(a))
    journal.incarnations = 3
    journal.event("kernel_stopped", "kernel stopped", incarnation=3, restart=True)
    (record,) = journal.store.records(streams=(Stream.NANNY,))
    event = parse_nanny_event(record.data)
    assert (event["event"], event["restart"], event["kernel_id"]) == ("kernel_stopped", True, "k1")
    assert record.incarnation == 3
    assert stored == [(Stream.NANNY, record.seq, record.seq)]


def test_a_failing_task_stops_the_nanny_and_cancel_waits_for_all(journal: Journal) -> None:
    async def main() -> tuple[bool, bool]:
        async def fail() -> None:
            raise RuntimeError("boom")

        forever = journal.spawn(asyncio.sleep(3600), "forever")
        journal.spawn(fail(), "fail")
        await asyncio.wait_for(journal.stop.wait(), 5)
        await journal.cancel_tasks()
        return journal.stop.is_set(), forever.cancelled()

    assert asyncio.run(main()) == (True, True)


def test_the_provisioner_does_not_import_the_nanny() -> None:
    code = "import sys, nanny_io.provisioner; print('nanny_io.nanny' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
