"""gateway_provisioners' real DistributedProvisioner runs ``nanny-io launch`` on localhost
(it launches locally, without SSH): start, execute, interrupt, the log channel from the
gateway's side, restart, a SIGKILLed kernel seen by ``poll`` at once, shutdown, and nothing
left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from gateway.support import Gateway
from helpers import wait_gone

pytestmark = pytest.mark.timeout(180)

PORT_RANGE = (41000, 42999)


async def _iopub_until(kc: Any, msg_type: str, timeout: float = 30) -> list[dict[str, Any]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # queue.Empty: nothing yet
            continue
        seen.append(msg)
        if msg["msg_type"] == msg_type:
            return seen
    raise AssertionError(f"no {msg_type} on iopub; saw {[m['msg_type'] for m in seen]}")


async def _ready_client(km: Any) -> Any:
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    return kc


def _ports_of(info: dict[str, Any]) -> list[int]:
    names = ("shell", "iopub", "stdin", "control", "hb", "log", "log_replay")
    return [int(info[f"{n}_port"]) for n in names]


def test_distributed_provisioner_runs_nanny_launch(gateway: Gateway) -> None:
    spec = gateway.install("--remote", "distributed", "--port-range", "41000..42999")
    assert spec["argv"][3:6] == ["launch", "--kernel", "python3"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "distributed-provisioner"
    measured: dict[str, float] = {}

    async def scenario() -> None:
        from gateway_provisioners.config_mixin import poll_interval
        from gateway_provisioners.distributed import DistributedProvisioner
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_client.restarter import KernelRestarter

        from nanny_io.subscriber import LogClient
        from nanny_io_proto.connection_files import NannyConnectionInfo

        km = AsyncKernelManager(kernel_name="python3-distributed")
        started = time.monotonic()
        await km.start_kernel()
        provisioner = km.provisioner
        assert isinstance(provisioner, DistributedProvisioner)
        info = dict(provisioner.connection_info)
        launcher = provisioner.local_proc
        gateway.remember(launcher.pid)
        kc = await _ready_client(km)
        measured["launch_to_ready"] = time.monotonic() - started
        try:
            # Every port the launcher offers is inside the range, the comm port too.
            low, high = PORT_RANGE
            assert all(low <= p <= high for p in [*_ports_of(info), provisioner.comm_port])
            assert info["kernel_id"] == km.kernel_id
            assert provisioner.pid != launcher.pid  # the kernel's pid, under the launcher
            assert psutil_parent_chain(provisioner.pid, launcher.pid)

            reply = await kc.execute_interactive("x = 6 * 7; print(x)", timeout=30)
            assert reply["content"]["status"] == "ok"

            # Interrupt: the provisioner's SIGINT on the communication port.
            running = gateway.logs / "running"
            msg_id = kc.execute(
                f"import pathlib, time; pathlib.Path({str(running)!r}).touch(); time.sleep(60)"
            )
            while not running.exists():  # execute_input comes before the code runs
                await asyncio.sleep(0.02)
            await km.interrupt_kernel()
            reply = await kc.get_shell_msg(timeout=20)
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["ename"] == "KeyboardInterrupt"

            # The log channel is reachable from the gateway's side, with the kernel's records.
            log_info = NannyConnectionInfo.from_dict({**info, "key": info["key"].decode()})
            async with LogClient(log_info) as client:
                events = [r.data async for r in client.records() if r.stream.value == "nanny"]
            assert any(b'"kernel_started"' in e for e in events)

            # Restart: the provisioner ends this launcher and starts a new one.
            old = [launcher.pid, provisioner.pid]
            await km.restart_kernel()
            assert wait_gone(old) == []
            assert launcher.returncode == 0  # a requested shutdown, not a death
            launcher = provisioner.local_proc
            gateway.remember(launcher.pid)
            kc.stop_channels()
            kc = await _ready_client(km)
            reply = await kc.execute_interactive("y = 1", timeout=30)
            assert reply["content"]["status"] == "ok"

            # A SIGKILLed kernel: reported on iopub, then poll() sees it at once.
            kernel_pid = provisioner.pid
            kc.execute("import time; time.sleep(60)")
            await _iopub_until(kc, "execute_input")
            assert await provisioner.poll() is None
            killed = time.monotonic()
            os.kill(kernel_pid, signal.SIGKILL)
            while await provisioner.poll() is None:
                assert time.monotonic() - killed < 10, "poll() never saw the death"
                await asyncio.sleep(0.01)
            measured["kill_to_poll"] = time.monotonic() - killed
            assert measured["kill_to_poll"] < KernelRestarter.time_to_dead.default_value
            died = (await _iopub_until(kc, "kernel_died", timeout=5))[-1]["content"]
            assert died["signal"] == signal.SIGKILL
            assert died["cause"] == "killed by SIGKILL (not by the out-of-memory killer)"
            assert launcher.wait(5) == 128 + signal.SIGKILL  # what a container runtime sees
            measured["poll_interval"] = poll_interval
        finally:
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
        assert not await km.is_alive()

    gateway.run(scenario)
    assert gateway.leftovers() == []
    print(f"\nmeasured: {measured}")


def psutil_parent_chain(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is an ancestor of ``pid``."""
    import psutil

    return any(p.pid == ancestor for p in psutil.Process(pid).parents())


def test_transport_encryption_required_gives_a_curve_kernel(gateway: Gateway) -> None:
    """The server asks for CurveZMQ: the launcher's connection info carries a key pair, and
    everything (the kernel's shell, the nanny's iopub and log channel) speaks CURVE."""
    gateway.install("--remote", "distributed")

    async def scenario() -> None:
        from jupyter_client.manager import AsyncKernelManager

        from nanny_io.subscriber import LogClient
        from nanny_io_proto.connection_files import NannyConnectionInfo

        km = AsyncKernelManager(kernel_name="python3-distributed", transport_encryption="required")
        await km.start_kernel()
        gateway.remember(km.provisioner.local_proc.pid)
        info = dict(km.provisioner.connection_info)
        assert len(info["curve_publickey"]) == 40 and len(info["curve_secretkey"]) == 40
        kc = await _ready_client(km)
        try:
            reply = await kc.execute_interactive("z = 3", timeout=30)
            assert reply["content"]["status"] == "ok"
            log_info = NannyConnectionInfo.from_dict({**info, "key": info["key"].decode()})
            async with LogClient(log_info) as client:
                events = [r.data async for r in client.records() if r.stream.value == "nanny"]
            assert any(b'"kernel_started"' in e for e in events)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    gateway.run(scenario)
