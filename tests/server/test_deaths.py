"""Deaths and restarts: the follow, the REST view, jupyter_events and the kernel model.

One history across restarts (same log channel, seqs going on, incarnation + 1): the provisioner
restarts kernels inside the same nanny, for restarts through jupyter_server (automatic, or
POST .../restart) and for a restart asked of the nanny itself (a shutdown_request with restart,
then the manager's launch_request).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from server_helpers import (
    Follower,
    body,
    execute,
    fetch_json,
    follow,
    in_order_without_gaps,
    logged,
)

from nanny_io.control_client import request
from nanny_io.discovery import load_connection_info
from nanny_io.serverext import KERNEL_DIED_SCHEMA_ID

pytestmark = pytest.mark.timeout(120)

DIE = "import os\nos.write(2, b'last words here\\n')\nos._exit(3)"


@pytest.fixture
def died(jp_serverapp: Any) -> asyncio.Queue[dict[str, Any]]:
    """Every kernel-died event a jupyter_events listener receives."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def listener(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        queue.put_nowait(data)

    jp_serverapp.event_logger.add_listener(schema_id=KERNEL_DIED_SCHEMA_ID, listener=listener)
    return queue


async def test_a_death_is_reported_everywhere(jp_fetch, jp_ws_fetch, kernels, died) -> None:
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    km = kernels.serverapp.kernel_manager.get_kernel(kernel_id)
    km.stop_restarter()  # the kernel stays dead: what is reported is this death
    follower = await follow(jp_ws_fetch, kernel_id, last=0)
    await follower.until(lambda f: f.get("event") == "caught_up", "caught_up")
    events = Follower(await jp_ws_fetch("api", "events", "subscribe"))  # what lab extensions see
    kc.execute(DIE)

    frame = await follower.until(lambda f: f.get("event") == "kernel_died", "kernel_died")
    assert frame["exit_code"] == 3 and frame["signal"] is None and frame["signal_name"] is None
    assert frame["incarnation"] == 1
    assert frame["cause"] == "exited with code 3" and frame["reason"].startswith(frame["cause"])
    assert {"stream": "stderr", "text": "last words here", "priority": 4} in frame["last_words"]
    words = next(r for r in follower.records if r["text"] == "last words here")
    death = next(r for r in follower.records if r["stream"] == "nanny")
    assert words["seq"] < death["seq"] == frame["seq"], "the last words come before the death"
    assert death["event"]["event"] == "kernel_died"
    await follower.until(lambda f: f.get("kernel_state") == "dead", "state dead")

    event = await asyncio.wait_for(died.get(), 10)
    assert event["kernel_id"] == kernel_id and event["kernel_name"] == "python3-nanny"
    expected = {k: frame[k] for k in ("incarnation", "time", "exit_code", "signal", "seq")}
    assert {k: event[k] for k in expected} == expected
    assert event["reason"] == frame["reason"] and event["last_words"] == frame["last_words"]

    model = body(await jp_fetch("api", "kernels", kernel_id))
    assert model["reason"] == f"kernel died: {frame['reason']}"
    view = await fetch_json(jp_fetch, kernel_id)
    assert view["status"] == "dead"
    assert view["deaths"] == [{k: frame[k] for k in view["deaths"][0]}]
    assert set(view["deaths"][0]) >= {
        "incarnation", "time", "exit_code", "signal", "signal_name", "reason", "last_words"
    }  # fmt: skip
    assert died.empty(), "one death, one event"
    forwarded = await events.until(
        lambda f: f.get("schema_id") == KERNEL_DIED_SCHEMA_ID, "the event on api/events/subscribe"
    )
    assert forwarded["kernel_id"] == kernel_id and forwarded["reason"] == frame["reason"]
    events.close()
    follower.close()


async def wait_restarted(follower: Follower) -> dict[str, Any]:
    """The frame that says a new kernel runs: kernel_restarted (same nanny) or the
    kernel_started of a new nanny."""
    return await follower.until(
        lambda f: f.get("event") in ("kernel_restarted", "kernel_started"), "a new kernel", 60
    )


async def test_a_follow_goes_on_through_an_automatic_restart(jp_fetch, jp_ws_fetch, kernels):
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    nanny = kernels.nanny_pid(kernel_id)
    await execute(kc, "import os; os.write(1, b'before the death\\n')")
    follower = await follow(jp_ws_fetch, kernel_id, since=1)
    await follower.until_text("before the death")
    kc.execute(DIE)
    await follower.until(lambda f: f.get("event") == "kernel_died", "kernel_died")
    restarted = await wait_restarted(follower)
    assert kernels.nanny_pid(kernel_id) == nanny, "the restart must keep the nanny"
    kc.stop_channels()  # as a frontend reconnects: the same session must not connect twice
    kc = await kernels.client(kernel_id)
    await execute(kc, "import os; os.write(1, b'after the restart\\n')")
    after = await follower.until_text("after the restart")

    # One history: the lines before the death are still there, seqs go on increasing.
    assert restarted["event"] == "kernel_restarted" and restarted["incarnation"] == 2
    assert after["incarnation"] == 2
    assert in_order_without_gaps(follower.records)
    page = await fetch_json(jp_fetch, kernel_id, "log", since="1")
    texts = [(r["text"], r["incarnation"]) for r in page["records"]]
    assert texts.index(("before the death", 1)) < texts.index(("after the restart", 2))
    assert page["records"] == follower.records[: len(page["records"])]
    view = await fetch_json(jp_fetch, kernel_id)
    assert view["incarnation"] == 2 and view["status"] == "running"
    assert [d["incarnation"] for d in view["deaths"]] == [1]
    follower.close()


async def test_a_follow_goes_on_through_a_requested_restart(jp_fetch, jp_ws_fetch, kernels):
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    nanny = kernels.nanny_pid(kernel_id)
    await execute(kc, "import os; os.write(1, b'before the restart\\n')")
    follower = await follow(jp_ws_fetch, kernel_id, since=1)
    await follower.until_text("before the restart")
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="")
    restarted = await wait_restarted(follower)
    assert kernels.nanny_pid(kernel_id) == nanny, "the restart must keep the nanny"
    kc.stop_channels()  # as a frontend reconnects: the same session must not connect twice
    kc = await kernels.client(kernel_id)
    await execute(kc, "import os; os.write(1, b'after the restart\\n')")
    await follower.until_text("after the restart")

    assert restarted["event"] == "kernel_restarted" and restarted["incarnation"] == 2
    assert not follower.event("kernel_died"), "a restart that was asked for is no death"
    assert in_order_without_gaps(follower.records)
    page = await logged(jp_fetch, kernel_id, "after the restart")
    assert [r["text"] for r in page].count("before the restart") == 1
    view = await fetch_json(jp_fetch, kernel_id)
    assert (view["incarnation"], view["deaths"]) == (2, [])
    follower.close()


async def test_one_history_across_a_restart_inside_the_nanny(
    jp_fetch, jp_ws_fetch, kernels, died
) -> None:
    kernel_id = await kernels.start()
    kc = await kernels.client(kernel_id)
    kernels.serverapp.kernel_manager.get_kernel(kernel_id).stop_restarter()
    nanny = kernels.nanny_pid(kernel_id)
    await execute(kc, "import os; os.write(1, b'before the death\\n')")
    follower = await follow(jp_ws_fetch, kernel_id, since=1)
    await follower.until_text("before the death")
    kc.execute(DIE)
    await follower.until(lambda f: f.get("event") == "kernel_died", "kernel_died")
    # What `nanny-io shutdown ID --restart` sends.
    info = load_connection_info(
        kernels.serverapp.kernel_manager.get_kernel(kernel_id).connection_file
    )
    reply = await asyncio.to_thread(request, info, "shutdown_request", {"restart": True}, 10.0)
    assert reply.content["status"] == "ok"
    # Under a kernel manager the nanny then waits for the manager's launch_request
    # (specs/protocol.md §8.3); the restarter is stopped here, so the test sends it.
    launched = await asyncio.to_thread(request, info, "launch_request", {}, 60.0)
    assert launched.content["status"] == "ok" and launched.content["incarnation"] == 2
    restarted = await follower.until(lambda f: f.get("event") == "kernel_restarted", "a restart")
    assert restarted["incarnation"] == 2
    kc.stop_channels()  # as a frontend reconnects: the same session must not connect twice
    await execute(await kernels.client(kernel_id), "import os; os.write(1, b'after\\n')")
    after = await follower.until_text("after")
    assert kernels.nanny_pid(kernel_id) == nanny

    assert after["incarnation"] == 2 and not follower.event("nanny_restarted")
    assert in_order_without_gaps(follower.records) and follower.records[0]["seq"] == 1
    page = await fetch_json(jp_fetch, kernel_id, "log", since="1")
    assert page["records"] == follower.records[: len(page["records"])]
    texts = [(r["text"], r["incarnation"]) for r in page["records"]]
    assert texts.index(("before the death", 1)) < texts.index(("last words here", 1))
    assert texts.index(("last words here", 1)) < texts.index(("after", 2))
    view = await fetch_json(jp_fetch, kernel_id)
    assert (view["incarnation"], view["status"]) == (2, "running")
    assert [(d["incarnation"], d["exit_code"]) for d in view["deaths"]] == [(1, 3)]
    assert (await asyncio.wait_for(died.get(), 10))["incarnation"] == 1
    follower.close()
