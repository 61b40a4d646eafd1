"""WS .../kernels/{id}/log/follow: history, then live, in order, each record once."""

from __future__ import annotations

import asyncio

import pytest
from server_helpers import (
    execute,
    fetch_json,
    follow,
    in_order_without_gaps,
    last_record,
    logged,
    settle,
)
from tornado.httpclient import HTTPClientError

pytestmark = pytest.mark.timeout(120)


def lines(prefix: str, count: int, pause_every: int = 0) -> str:
    """A cell writing ``prefix i`` lines to fd 1 (pausing 1 ms every ``pause_every`` lines)."""
    pause = f"    if i % {pause_every} == 0: time.sleep(0.001)\n" if pause_every else ""
    return (
        f"import os, time\nfor i in range({count}):\n"
        f"    os.write(1, b'{prefix} %d\\n' % i)\n{pause}"
    )


async def test_history_then_live_at_the_seam(jp_fetch, jp_ws_fetch, kernels, bridge) -> None:
    """Followers join while the kernel writes; each sees every seq once, in order."""
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    await execute(kc, lines("before", 50))
    await logged(jp_fetch, kernel_id, "before 49")
    # 3000 lines over about 3 s; followers join in the middle of it.
    writing = asyncio.ensure_future(execute(kc, lines("during", 3000, pause_every=1)))
    await logged(jp_fetch, kernel_id, "during 100")
    everything = await follow(jp_ws_fetch, kernel_id, since=1)
    recent = await follow(jp_ws_fetch, kernel_id, last=10)
    only_stdout = await follow(jp_ws_fetch, kernel_id, since=1, stream="stdout")
    await settle(lambda: len(bridge.kernels[kernel_id].followers) == 3, "three followers")
    await writing
    for follower in (everything, recent, only_stdout):
        await follower.until_text("during 2999")
        assert follower.event("caught_up"), "caught_up comes once the history was sent"

    assert everything.records[0]["seq"] == 1
    assert in_order_without_gaps(everything.records)
    assert in_order_without_gaps(recent.records)
    assert len(recent.records) >= 10
    stdout = [r for r in everything.records if r["stream"] == "stdout"]
    assert only_stdout.records == stdout
    texts = [r["text"] for r in stdout]
    assert texts[-3050:] == [f"before {i}" for i in range(50)] + [
        f"during {i}" for i in range(3000)
    ]
    # What came live is what the store has.
    page = await fetch_json(jp_fetch, kernel_id, "log", since="1")
    assert everything.records == page["records"][: len(everything.records)]
    caught = everything.frames.index(everything.event("caught_up")[0])
    history = [r for f in everything.frames[:caught] for r in f.get("records", ())]
    assert [r["text"] for r in history if r["stream"] == "stdout"][:50] == texts[:50]
    assert not everything.event("gap")
    for follower in (everything, recent, only_stdout):
        follower.close()
    await settle(lambda: not bridge.kernels[kernel_id].followers, "followers to end")
    await settle(lambda: bridge.open_sockets() == 2, "only the watcher's sockets")


async def test_streams_and_kernel_state(jp_fetch, jp_ws_fetch, kernels) -> None:
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    follower = await follow(jp_ws_fetch, kernel_id, since=1, stream=["stderr", "log"])
    await follower.until(lambda f: f.get("event") == "caught_up", "the history")
    assert follower.event("state")[0]["kernel_state"] == "running"
    assert follower.event("kernel_started")[0]["incarnation"] == 1, "lifecycle events always"
    await execute(
        kc,
        "import os\nos.write(1, b'to stdout\\n')\nos.write(2, b'to stderr\\n')\n"
        "with open(os.environ['JUPYTER_KERNEL_LOG'], 'w') as f:\n"
        "    f.write('<3>an error\\n<7>a detail\\nto the log\\n')\n",
    )
    await follower.until_text("to the log")
    texts = {(r["stream"], r["text"]) for r in follower.records}
    assert ("stderr", "to stderr") in texts
    # each record has its priority: the kernel's prefix, or its stream's default
    priorities = {r["text"]: r["priority"] for r in follower.records}
    assert priorities["an error"] == 3 and priorities["a detail"] == 7
    assert priorities["to the log"] == 6 and priorities["to stderr"] == 4
    page = await fetch_json(jp_fetch, kernel_id, "log", since="1", stream="log")
    assert {r["text"]: r["priority"] for r in page["records"]} == {
        "an error": 3,
        "a detail": 7,
        "to the log": 6,
    }
    assert {r["stream"] for r in follower.records} <= {"stderr", "log"}
    assert "to stdout" not in {r["text"] for r in follower.records}
    follower.close()


async def test_follow_ends_when_the_kernel_is_shut_down(jp_fetch, jp_ws_fetch, kernels, bridge):
    kernel_id = await kernels.start()
    follower = await follow(jp_ws_fetch, kernel_id, last=0)
    await follower.until(lambda f: f.get("event") == "caught_up", "caught_up")
    await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    while await follower.next() is not None:
        pass
    follower.close()
    assert follower.events[-1]["event"] == "kernel_shutdown"
    await settle(lambda: not bridge.kernels and bridge.open_sockets() == 0, "bridge cleanup")


async def test_follow_errors_before_the_upgrade(jp_ws_fetch, kernels) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    stock = await kernels.start("echo")
    nanny = await kernels.start()
    for kernel_id, params, code in [
        (unknown, {}, 404),
        (stock, {}, 404),
        (nanny, {"stream": "stdin"}, 400),
        (nanny, {"since": 1, "last": 1}, 400),
    ]:
        with pytest.raises(HTTPClientError) as info:
            await follow(jp_ws_fetch, kernel_id, **params)
        assert info.value.code == code, (kernel_id, params)


async def test_many_followers_at_once_all_get_the_history(jp_fetch, jp_ws_fetch, kernels) -> None:
    """More followers than the nanny serves replays at a time: each still gets everything."""
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    await execute(kc, "import os\nos.write(1, b''.join(b'many %05d\\n' % i for i in range(20000)))")
    await last_record(jp_fetch, kernel_id, "many 19999")
    followers = await asyncio.gather(*(follow(jp_ws_fetch, kernel_id, since=1) for _ in range(12)))
    for follower in followers:
        await follower.until_text("many 19999")
        assert follower.records[0]["seq"] == 1 and in_order_without_gaps(follower.records)
        assert not follower.event("replay_failed") and not follower.event("gap")
        await follower.until(lambda f: f.get("event") == "caught_up", "caught_up")
        last = max(i for i, f in enumerate(follower.frames) if "records" in f)
        assert follower.frames.index(follower.event("caught_up")[0]) > last, "after the history"
        follower.close()
