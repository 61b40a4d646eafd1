"""The bridge against a nanny that restarts its kernel in place (a nanny of its own, not one
under jupyter_server): one channel, one history, the incarnation going up, a death reported
once. This is what the server's kernels get once the provisioner restarts kernels inside the
same nanny."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_events import EventLogger
from server_helpers import execute, in_order_without_gaps, settle

from nanny_io.control_client import request
from nanny_io.discovery import load_connection_info
from nanny_io.serverext.bridge import KERNEL_DIED_SCHEMA_ID, Bridge, CaughtUp, NannyKernel
from nanny_io.subscriber import EpochChanged, Records
from nanny_io.tail import record_json

pytestmark = pytest.mark.timeout(120)


class KernelManagers(dict):
    """What the bridge uses of a MultiKernelManager."""

    def get_kernel(self, kernel_id: str) -> Any:
        return self[kernel_id]


async def connect(nanny: Any) -> Any:
    kc = AsyncKernelClient()
    kc.load_connection_file(str(nanny.connection_file))
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    return kc


async def test_an_in_place_restart_keeps_one_history(nanny) -> None:
    km = SimpleNamespace(connection_file=str(nanny.connection_file), kernel_name="python3")
    logger = EventLogger()
    died: list[dict[str, Any]] = []

    async def listener(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        died.append(data)

    bridge = Bridge(KernelManagers({nanny.kernel_id: km}), logger)
    bridge.register_events()
    logger.add_listener(schema_id=KERNEL_DIED_SCHEMA_ID, listener=listener)
    kernel = bridge.kernels[nanny.kernel_id] = NannyKernel(bridge, nanny.kernel_id, km)
    kernel.start_watching()
    info = load_connection_info(nanny.connection_file)
    kc = await connect(nanny)
    seen: list[Any] = []

    async def until(predicate: Any) -> None:
        async for event in channel:
            seen.append(event)
            if isinstance(event, Records) and any(predicate(r) for r in event.records):
                return

    channel = kernel.channel(streams=None, since_seq=1)
    await execute(kc, "import os; os.write(1, b'before\\n')")
    await until(lambda r: r.data == b"before\n")
    kc.execute("import os; os._exit(3)")
    await until(lambda r: b'"kernel_died"' in r.data)
    reply = await asyncio.to_thread(request, info, "shutdown_request", {"restart": True}, 30.0)
    assert reply.content["status"] == "ok"
    await until(lambda r: b'"kernel_restarted"' in r.data)
    kc.stop_channels()
    kc = await connect(nanny)
    await execute(kc, "import os; os.write(1, b'after\\n')")
    kc.stop_channels()
    await until(lambda r: r.data == b"after\n")
    await channel.aclose()

    records = [record_json(r) for e in seen if isinstance(e, Records) for r in e.records]
    assert not any(isinstance(e, EpochChanged) for e in seen)
    assert sum(isinstance(e, CaughtUp) for e in seen) == 1
    assert records[0]["seq"] == 1 and in_order_without_gaps(records)
    before = next(r for r in records if r["text"] == "before")
    after = next(r for r in records if r["text"] == "after")
    assert (before["incarnation"], after["incarnation"]) == (1, 2)

    page = await kernel.read_log(
        streams=None, since=1, last=None, max_records=10_000, max_bytes=1 << 24
    )
    assert page.records[: len(records)] == records
    view = await kernel.describe()
    assert (view["incarnation"], view["status"]) == (2, "running")
    assert [(d["incarnation"], d["exit_code"]) for d in view["deaths"]] == [(1, 3)]
    await settle(lambda: died, "the kernel-died event")
    assert [(d["kernel_id"], d["incarnation"], d["exit_code"]) for d in died] == [
        (nanny.kernel_id, 1, 3)
    ]
    assert km.reason.startswith("kernel died: exited with code 3")
    await bridge.stop()
    assert bridge.open_sockets() == 0
