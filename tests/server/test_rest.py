"""GET .../kernels/{id} and .../kernels/{id}/log, against a real server and nanny kernels."""

from __future__ import annotations

import asyncio
import json
import sys

import psutil
import pytest
from server_helpers import body, execute, fetch_error, fetch_json, logged

from nanny_io.discovery import load_connection_info
from nanny_io_proto.version import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(120)

WRITE = (
    "import os\n"
    "for i in range(6):\n"
    "    os.write(1, b'out %d\\n' % i)\n"
    "os.write(2, b'err line\\n')\n"
    "os.write(1, b'prompt> ')\n"
)


async def test_kernel_view(jp_fetch, jp_serverapp, kernels) -> None:
    kernel_id = await kernels.start()
    await kernels.client(kernel_id)
    model = await fetch_json(jp_fetch, kernel_id)
    info = load_connection_info(jp_serverapp.kernel_manager.get_kernel(kernel_id).connection_file)
    assert model["kernel_id"] == kernel_id
    assert model["kernel_name"] == "python3-nanny"
    assert model["status"] == "running"
    assert model["incarnation"] == 1
    assert model["nanny_pid"] == kernels.nanny_pid(kernel_id)
    kernel = psutil.Process(model["pid"])
    assert kernel.pid in {p.pid for p in psutil.Process(model["nanny_pid"]).children(True)}
    channel = model["log_channel"]
    assert (channel["transport"], channel["ip"]) == (info.transport, info.ip)
    assert channel["log_port"] == info.log_port
    assert channel["log_replay_port"] == info.log_replay_port
    assert channel["nanny_protocol_version"] == PROTOCOL_VERSION
    assert channel["last_seq"] >= 1 and channel["epoch"]
    assert model["deaths"] == []
    raw = (await jp_fetch("api", "nanny-io", "kernels", kernel_id)).body.decode()
    assert info.key not in raw, "the connection key must never leave the server"


async def test_log_records_are_those_of_tail_json(jp_fetch, kernels) -> None:
    kernel_id = await kernels.start()
    await execute(await kernels.client(kernel_id), WRITE)
    records = await logged(jp_fetch, kernel_id, "prompt> ")  # partial: stored after a pause
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nanny_io", "tail", kernel_id, "--since", "1", "--json",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    tail = [json.loads(line) for line in out.decode().splitlines()]
    page = await fetch_json(jp_fetch, kernel_id, "log", since="1")
    assert page["records"] == tail[: len(page["records"])]
    assert len(page["records"]) >= len(records)
    texts = [(r["stream"], r["text"]) for r in page["records"]]
    assert [t for s, t in texts if s == "stdout" and t.startswith("out ")] == [
        f"out {i}" for i in range(6)
    ]
    prompt = next(r for r in page["records"] if r["text"] == "prompt> ")
    assert prompt["partial"] is True
    assert set(prompt) == {
        "seq",
        "time",
        "stream",
        "source",
        "text",
        "incarnation",
        "priority",
        "partial",
    }
    assert prompt["source"] == "fd" and prompt["priority"] == 6
    started = next(r for r in page["records"] if r["stream"] == "nanny")
    assert started["event"]["event"] == "kernel_started"
    assert all(r["incarnation"] == 1 for r in page["records"] if r["stream"] != "nanny")


async def test_log_selects_pages_and_streams(jp_fetch, kernels, jp_serverapp) -> None:
    kernel_id = await kernels.start()
    await execute(await kernels.client(kernel_id), WRITE)
    everything = await logged(jp_fetch, kernel_id, "prompt> ")  # the cell's last output
    last = everything[-1]["seq"]

    page = await fetch_json(jp_fetch, kernel_id, "log")  # default: the last 100
    assert page["kernel_id"] == kernel_id and page["truncated"] is False
    assert page["records"] == everything[-100:]

    page = await fetch_json(jp_fetch, kernel_id, "log", last="2")
    assert page["records"] == everything[-2:]
    assert (page["first_seq"], page["last_seq"]) == (everything[-2]["seq"], last)

    page = await fetch_json(jp_fetch, kernel_id, "log", stream="stderr")
    assert page["records"] == [r for r in everything if r["stream"] == "stderr"]
    assert page["records"][-1]["text"] == "err line"

    repeated = [("stream", "nanny"), ("stream", "stderr"), ("since", "1")]  # stream=a&stream=b
    streams = await jp_fetch("api", "nanny-io", "kernels", kernel_id, "log", params=repeated)
    assert {rec["stream"] for rec in body(streams)["records"]} == {"nanny", "stderr"}
    comma = await fetch_json(jp_fetch, kernel_id, "log", stream="nanny,stderr", since="1")
    assert comma == body(streams)

    page = await fetch_json(jp_fetch, kernel_id, "log", last="0")
    assert page["records"] == [] and page["last_seq"] >= last

    page = await fetch_json(jp_fetch, kernel_id, "log", since=str(last + 1000))
    assert page["records"] == [] and page["first_seq"] == last + 1000
    assert page["last_seq"] == last + 999 and page["truncated"] is False

    # Paging with `since` under a small cap: the pages join up exactly.
    jp_serverapp.web_app.settings["nanny_io_limits"]["log_max_records"] = 4
    pages, since = [], 1
    while since <= last:
        page = await fetch_json(jp_fetch, kernel_id, "log", since=str(since))
        assert page["first_seq"] == since
        assert len(page["records"]) <= 4
        pages += page["records"]
        since = page["last_seq"] + 1
        assert page["truncated"] is (since <= everything[-1]["seq"] and len(page["records"]) == 4)
    assert pages[: len(everything)] == everything

    page = await fetch_json(jp_fetch, kernel_id, "log", last="50")  # more than the cap
    assert page["records"] == everything[-4:] and page["truncated"] is True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"last": "-1"}, "last must be at least 0, got -1"),
        ({"since": "0"}, "since must be at least 1, got 0"),
        ({"since": "x"}, "since must be an integer, got 'x'"),
        ({"since": "1", "last": "1"}, "give since or last, not both"),
        ({"stream": "stdin"}, "unknown stream 'stdin'; use stdout, stderr, log, nanny"),
    ],
)
async def test_bad_queries_are_400(jp_fetch, kernels, params, message) -> None:
    kernel_id = await kernels.start()
    assert await fetch_error(jp_fetch, kernel_id, "log", **params) == (400, message)


async def test_kernels_not_under_the_nanny_are_404(jp_fetch, kernels) -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    code, message = await fetch_error(jp_fetch, unknown)
    assert (code, message) == (404, f"no such kernel: {unknown!r}")
    assert await fetch_error(jp_fetch, unknown, "log") == (404, message)
    stock = await kernels.start("echo")  # pytest-jupyter's echo kernel, no provisioner
    for parts in [(stock,), (stock, "log")]:
        code, message = await fetch_error(jp_fetch, *parts)
        assert code == 404
        assert "does not run under nanny-io" in message
        assert "'nanny-io install echo --sys-prefix'" in message
