"""gateway_provisioners' real KubernetesProvisioner against a fake cluster API (fake_k8s.py):
the kernelspec ``nanny-io install --remote kubernetes`` writes, its launch script and pod
template, and ``nanny-io launch`` as the pod's command. A kernel killed in its pod is reported,
the pod fails with the kernel's status, its stdout holds the records as JSON lines, the
restarted kernel runs in a new pod, and deleting the pod shuts the kernel down cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import psutil
import pytest
from gateway.fake_k8s import FakeCluster, FakePod
from gateway.support import Gateway
from gateway.test_pid1 import UNSHARE, _namespaces

pytestmark = pytest.mark.timeout(180)


def _records(pod: FakePod) -> list[dict[str, Any]]:
    """The container log, as a collector reads it: every line one JSON record under 16 KiB."""
    lines = pod.stdout.read_bytes().splitlines(keepends=True)
    assert all(len(line) <= 16 * 1024 for line in lines)
    return [json.loads(line) for line in lines]


def _events(pod: FakePod) -> list[str]:
    return [r["event"]["event"] for r in _records(pod) if r["stream"] == "nanny"]


async def _ready_client(km: Any) -> Any:
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    return kc


async def _iopub_until(kc: Any, msg_type: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # queue.Empty
            continue
        if msg["msg_type"] == msg_type:
            return msg
    raise AssertionError(f"no {msg_type} on iopub")


def test_kubernetes_provisioner_runs_nanny_launch_in_the_pod(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kubernetes

    spec = gateway.install(
        "--remote",
        "kubernetes",
        "--image-name",
        "example/nanny-io-kernel:1",
        "--port-range",
        "43000..44999",
        "--launch-command",
        f"{sys.executable} -m nanny_io",
    )
    assert spec["argv"][1].endswith("/scripts/launch_kubernetes.py")
    cluster = FakeCluster(gateway.logs, UNSHARE if _namespaces() else ())
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", cluster.api)
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda *a, **k: None)
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda *a, **k: None)
    import gateway_provisioners.remote_provisioner as remote_provisioner

    monkeypatch.setattr(remote_provisioner, "gp_launch_kernel", cluster.run_launch_script)
    measured: dict[str, float] = {}

    async def scenario() -> None:
        from gateway_provisioners.k8s import KubernetesProvisioner
        from jupyter_client.manager import AsyncKernelManager

        km = AsyncKernelManager(kernel_name="python3-kubernetes")
        await km.start_kernel()
        assert isinstance(km.provisioner, KubernetesProvisioner)
        pod = cluster.created[-1]
        gateway.remember(pod.proc.pid)
        assert pod.init.cmdline()[3:6] == ["launch", "--kernel", "python3"]
        kc = await _ready_client(km)
        try:
            info = km.provisioner.connection_info
            assert all(43000 <= info[f"{n}_port"] <= 44999 for n in ("shell", "log", "hb"))
            reply = await kc.execute_interactive("x = 1", timeout=30)
            assert reply["content"]["status"] == "ok"

            # The kernel is killed inside its pod (as by the OOM killer).
            kernel = next(
                p for p in pod.init.children(recursive=True) if "ipykernel" in " ".join(p.cmdline())
            )
            killed = time.monotonic()
            kernel.send_signal(signal.SIGKILL)
            died = (await _iopub_until(kc, "kernel_died"))["content"]
            assert died["signal"] == signal.SIGKILL
            while await km.provisioner.poll() is None:
                assert time.monotonic() - killed < 10, "poll() never saw the death"
                await asyncio.sleep(0.02)
            measured["kill_to_poll"] = time.monotonic() - killed
            # The pod failed with the kernel's status; its log says how the kernel died.
            assert pod.proc.wait(10) == 128 + signal.SIGKILL
            terminated = pod.model().status.container_statuses[0].state.terminated
            assert terminated.exit_code == 137
            records = _records(pod)
            assert {r["kernel_id"] for r in records} == {km.kernel_id}
            death = next(r for r in records if r.get("event", {}).get("event") == "kernel_died")
            assert death["event"]["signal"] == 9 and "SIGKILL" in death["text"]
            assert any(r["stream"] == "stderr" for r in records)

            # The restarter's restart: a new pod.
            kc.stop_channels()
            await km.restart_kernel(now=True)
            pod2 = cluster.created[-1]
            assert pod2 is not pod
            gateway.remember(pod2.proc.pid)
            kc = await _ready_client(km)
            reply = await kc.execute_interactive("y = 2", timeout=30)
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
            # now=True: the provisioner deletes the pod, and only that: its SIGTERM to the
            # container's PID 1 must shut the kernel down cleanly.
            await km.shutdown_kernel(now=True)
        assert pod2.proc.wait(15) == 0
        events = _events(pod2)
        assert "kernel_stopped" in events and "kernel_died" not in events

    try:
        gateway.run(scenario)
    finally:
        cluster.close()
    assert gateway.leftovers() == []
    if cluster.unshare:
        assert all(psutil.pid_exists(p.proc.pid) is False for p in cluster.created)
    print(f"\nmeasured: {measured}")
