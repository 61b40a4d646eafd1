"""10 000 log lines a second through a WebSocket whose reader is slow: the server's memory for
it stays bounded, the follow says what it dropped (a gap event, in its place), and nothing is
lost from the nanny's store."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Any

import psutil
import pytest
from server_helpers import execute, fetch_json, follow, last_record

pytestmark = pytest.mark.timeout(180)

RATE = 10_000  # lines per second
SECONDS = 4
LINES = RATE * SECONDS
PAD = 280  # bytes per line beyond the counter: about 3 MB/s, more than loopback buffers hold
MAX_RECORDS, MAX_BYTES = 2_000, 1 << 20  # the outbox limits for this test
WRITER = f"""
import os, time
pad = b"x" * {PAD}
t0 = time.monotonic()
for k in range({LINES // 100}):
    os.write(1, b"".join(b"load %06d %s\\n" % (k * 100 + j, pad) for j in range(100)))
    delay = t0 + (k + 1) / {RATE // 100} - time.monotonic()
    if delay > 0:
        time.sleep(delay)
os.write(1, b"load done\\n")
"""


def covered(frame: dict[str, Any]) -> int:
    """The highest seq a frame delivers or reports dropped."""
    if "records" in frame:
        return int(frame["records"][-1]["seq"])
    return int(frame.get("to_seq", 0))


def index(text: str) -> int | None:
    return int(text[5:11]) if text.startswith("load ") and text != "load done" else None


async def test_slow_reader(jp_fetch, jp_ws_fetch, jp_serverapp, kernels, bridge) -> None:
    limits = jp_serverapp.web_app.settings["nanny_io_limits"]
    limits["follow_max_records"], limits["follow_max_bytes"] = MAX_RECORDS, MAX_BYTES
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    follower = await follow(jp_ws_fetch, kernel_id, last=0)
    await follower.until(lambda f: f.get("event") == "caught_up", "caught_up")
    (outbox,) = [f.outbox for f in bridge.kernels[kernel_id].followers]
    rss0 = psutil.Process(os.getpid()).memory_info().rss

    writing = asyncio.ensure_future(execute(kc, WRITER, timeout=120))
    # Slow: one frame (at most 256 KiB) every quarter of a second while the kernel writes.
    while not writing.done():
        await follower.next()
        await asyncio.sleep(0.25)
    await writing
    final = await last_record(jp_fetch, kernel_id, "load done")
    # Then as fast as it can, until records and gaps reach the last line.
    loop = asyncio.get_running_loop()
    t0, n0 = loop.time(), len(follower.records)
    await follower.until(lambda f: covered(f) >= final, "the last line", timeout=120)
    drain_s, drained = loop.time() - t0, len(follower.records) - n0
    rss1 = psutil.Process(os.getpid()).memory_info().rss
    stats = outbox.statistics()
    follower.close()

    # Bounded: what waited for the client never went over the limits.
    assert stats.peak_records <= MAX_RECORDS and stats.peak_bytes <= MAX_BYTES
    assert stats.dropped > 0, "the reader was slow enough to lose records"
    # Said in place: records and gaps join up, each seq once, in order.
    gaps = [e for e in follower.events if e["event"] == "gap"]
    assert gaps and all(g["reason"] == "slow_client" for g in gaps)
    assert sum(g["dropped"] for g in gaps) == stats.dropped
    expect = follower.records[0]["seq"]
    for frame in follower.frames:
        if "records" in frame:
            for record in frame["records"]:
                assert record["seq"] == expect
                expect += 1
        elif frame.get("event") == "gap" and frame["from_seq"] >= follower.records[0]["seq"]:
            assert frame["from_seq"] == expect
            expect = frame["to_seq"] + 1
    # Nothing lost in the store: the dropped ranges are there, through GET .../log?since=.
    seen = [index(r["text"]) for r in follower.records]
    for gap in gaps:
        since = gap["from_seq"]
        while since <= gap["to_seq"]:
            page = await fetch_json(jp_fetch, kernel_id, "log", since=str(since))
            seen += [index(r["text"]) for r in page["records"] if r["seq"] <= gap["to_seq"]]
            since = page["last_seq"] + 1
    lines = sorted(i for i in seen if i is not None)
    assert lines == list(range(LINES))

    load = [r for r in follower.records if index(r["text"]) is not None]
    span = datetime.fromisoformat(load[-1]["time"]) - datetime.fromisoformat(load[0]["time"])
    rate = (index(load[-1]["text"]) - index(load[0]["text"])) / max(span.total_seconds(), 1e-3)
    figures = {
        "lines": LINES,
        "kernel lines/s": round(rate),
        "dropped": stats.dropped,
        "gap events": len(gaps),
        "outbox peak records": stats.peak_records,
        "outbox peak KiB": stats.peak_bytes // 1024,
        "drain records/s": round(drained / max(drain_s, 1e-3)),
        "test process RSS growth MiB": (rss1 - rss0) // (1 << 20),
    }
    print("slow reader:", figures)
    assert rate > RATE / 2, f"the kernel did not write fast enough to test anything: {figures}"


async def test_a_reader_that_keeps_up_loses_nothing(jp_fetch, jp_ws_fetch, kernels, bridge) -> None:
    """The same flood with the default limits and a client that reads as fast as it can."""
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    follower = await follow(jp_ws_fetch, kernel_id, last=0, stream="stdout")
    await follower.until(lambda f: f.get("event") == "caught_up", "caught_up")
    (outbox,) = [f.outbox for f in bridge.kernels[kernel_id].followers]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    writing = asyncio.ensure_future(execute(kc, WRITER, timeout=120))
    await follower.until_text("load done", timeout=120)
    seconds = loop.time() - t0
    await writing
    follower.close()
    stats = outbox.statistics()
    assert not follower.event("gap") and stats.dropped == 0
    assert [index(r["text"]) for r in follower.records[:-1]] == list(range(LINES))
    print(
        "fast reader:",
        {"records/s": round(LINES / seconds), "outbox peak records": stats.peak_records},
    )
