"""The follow's outbox on its own: bounded, in order, drops reported once and in place."""

from __future__ import annotations

import asyncio
import json

from nanny_io.serverext.follow import FollowLimits, Outbox


def record(seq: int) -> str:
    return json.dumps({"seq": seq, "text": "x" * 10})


async def frames(box: Outbox) -> list[dict]:
    """Everything queued, as the client would receive it."""
    box.close()
    out = []
    while (frame := await box.next_frame()) is not None:
        out.append(json.loads(frame))
    return out


def flatten(got: list[dict]) -> list[object]:
    """Seqs of records, and ('gap', first, last) / event names, in order."""
    out: list[object] = []
    for frame in got:
        if "records" in frame:
            out += [r["seq"] for r in frame["records"]]
        elif frame["event"] == "gap":
            out.append(("gap", frame["from_seq"], frame["to_seq"], frame["dropped"]))
        else:
            out.append(frame["event"])
    return out


async def test_what_does_not_fit_is_dropped_and_reported_in_place() -> None:
    box = Outbox(FollowLimits(max_records=10, max_bytes=1 << 20, frame_records=4))
    for seq in range(1, 31):
        box.put_record(seq, record(seq))
    stats = box.statistics()
    assert (stats.queued_records, stats.peak_records, stats.dropped) == (10, 10, 20)
    got = await frames(box)
    assert flatten(got) == [*range(1, 11), ("gap", 11, 30, 20)]
    assert all(len(f.get("records", ())) <= 4 for f in got)


async def test_dropping_goes_on_until_half_is_drained() -> None:
    box = Outbox(FollowLimits(max_records=10, max_bytes=1 << 20, frame_records=3))
    for seq in range(1, 13):  # 11 and 12 dropped
        box.put_record(seq, record(seq))
    await box.next_frame()  # 3 taken: 7 wait, more than half
    box.put_record(13, record(13))  # still dropped
    await box.next_frame()  # 3 more: 4 wait
    box.put_record(14, record(14))  # resumes, after the gap
    box.put_event({"event": "kernel_died"})
    assert flatten(await frames(box)) == [7, 8, 9, 10, ("gap", 11, 13, 3), 14, "kernel_died"]


async def test_an_event_while_dropping_closes_the_gap_first() -> None:
    box = Outbox(FollowLimits(max_records=2, max_bytes=1 << 20))
    for seq in range(1, 6):
        box.put_record(seq, record(seq))
    box.put_event({"event": "kernel_died"})  # events are never dropped
    box.put_record(6, record(6))  # still full: a new run of drops
    assert flatten(await frames(box)) == [1, 2, ("gap", 3, 5, 3), "kernel_died", ("gap", 6, 6, 1)]


async def test_bytes_bound_the_outbox_too() -> None:
    size = len(record(1))
    box = Outbox(FollowLimits(max_records=1000, max_bytes=5 * size))
    for seq in range(1, 21):
        box.put_record(seq, record(seq))
    stats = box.statistics()
    assert stats.peak_bytes <= 5 * size and stats.queued_records == 5 and stats.dropped == 15


async def test_waiting_for_space_instead_of_dropping() -> None:
    """How history is sent: the producer waits until the client has taken a frame."""
    box = Outbox(FollowLimits(max_records=4, max_bytes=1 << 20, frame_records=2))
    for seq in range(1, 5):
        box.put_record(seq, record(seq))
    assert box.full(len(record(5)))
    waiting = asyncio.ensure_future(box.wait_for_space(len(record(5))))
    await asyncio.sleep(0)
    assert not waiting.done()
    await box.next_frame()  # the client takes 1 and 2
    await asyncio.wait_for(waiting, 1)
    box.put_record(5, record(5))
    assert box.statistics().dropped == 0
    assert flatten(await frames(box)) == [3, 4, 5]
