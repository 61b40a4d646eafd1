"""A fake Kubernetes cluster for gateway_provisioners' KubernetesProvisioner, in the way its
own tests fake one (the kubernetes client's CoreV1Api replaced, the launch script run in the
server's process), except that a pod here is real: its container's command runs as a process
with the pod's environment, in a PID namespace of its own when the machine allows, with its
stdout kept as the container log. A deleted pod gets SIGTERM, then SIGKILL after the
kubelet's minimum grace period."""

from __future__ import annotations

import contextlib
import os
import runpy
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client

#: The kubelet's shortest grace between SIGTERM and SIGKILL (a delete with grace 0 gets it).
MIN_GRACE = 2.0
#: What the pod's IP is: everything runs on this machine.
POD_IP = "127.0.0.1"


@dataclass
class FakePod:
    name: str
    namespace: str
    labels: dict[str, str]
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    pid_namespace: bool
    deleted: bool = False
    timers: list[threading.Timer] = field(default_factory=list)

    @property
    def init(self) -> psutil.Process:
        """The container's PID 1: under `unshare --fork` its only child, else the process."""
        proc = psutil.Process(self.proc.pid)
        if self.pid_namespace:
            children = proc.children()
            if children:
                return children[0]
        return proc

    @property
    def phase(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "Running"
        return "Succeeded" if code == 0 else "Failed"

    def model(self) -> client.V1Pod:
        code = self.proc.poll()
        state = (
            client.V1ContainerState(terminated=client.V1ContainerStateTerminated(exit_code=code))
            if code is not None
            else client.V1ContainerState(running=client.V1ContainerStateRunning())
        )
        return client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, labels=dict(self.labels)
            ),
            status=client.V1PodStatus(
                phase=self.phase,
                pod_ip=POD_IP,
                host_ip=POD_IP,
                container_statuses=[
                    client.V1ContainerStatus(
                        name=self.name,
                        image="fake",
                        image_id="fake",
                        ready=code is None,
                        restart_count=0,
                        state=state,
                    )
                ],
            ),
        )


class FakeCluster:
    """Pods as processes; the API calls the provisioner and launch_kubernetes.py make."""

    def __init__(self, logs: Path, unshare: tuple[str, ...] = ()) -> None:
        self.logs = logs
        self.unshare = unshare
        self.pods: dict[str, FakePod] = {}
        self.created: list[FakePod] = []

    # ------------------------------------------------------------------ CoreV1Api

    def api(self, api_client: object = None) -> FakeCoreV1Api:
        return FakeCoreV1Api(self)

    def create_pod(self, body: dict[str, Any], namespace: str) -> client.V1Pod:
        meta, spec = body["metadata"], body["spec"]
        container = spec["containers"][0]
        command = [*container.get("command", []), *container.get("args", [])]
        env = {item["name"]: str(item.get("value", "")) for item in container.get("env") or []}
        name = meta["name"]
        stdout, stderr = self.logs / f"{name}.stdout.log", self.logs / f"{name}.stderr.log"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [*self.unshare, *command],
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=container.get("workingDir"),
            )
        pod = FakePod(
            name, namespace, meta.get("labels", {}), proc, stdout, stderr, bool(self.unshare)
        )
        self.pods[name] = pod
        self.created.append(pod)
        return pod.model()

    def list_pods(self, namespace: str, label_selector: str = "") -> client.V1PodList:
        wanted = dict(item.split("=", 1) for item in label_selector.split(",") if "=" in item)
        items = []
        for pod in list(self.pods.values()):
            if pod.deleted and pod.proc.poll() is not None:
                del self.pods[pod.name]  # a deleted pod is gone once its container ended
                continue
            if pod.namespace == namespace and all(
                pod.labels.get(k) == v for k, v in wanted.items()
            ):
                items.append(pod.model())
        return client.V1PodList(items=items)

    def delete_pod(self, name: str, namespace: str) -> client.V1Pod:
        pod = self.pods.get(name)
        if pod is None or pod.namespace != namespace:
            raise client.rest.ApiException(status=404, reason=f"pod {name!r} not found")
        model = pod.model()
        if not pod.deleted:
            pod.deleted = True
            self.terminate(pod)
        return model

    def terminate(self, pod: FakePod) -> None:
        """What the kubelet does: SIGTERM to the container's PID 1, SIGKILL after the grace."""
        if pod.proc.poll() is not None:
            return
        with contextlib.suppress(psutil.Error):
            pod.init.send_signal(15)

        def kill() -> None:
            with contextlib.suppress(psutil.Error):
                for proc in [pod.init, *pod.init.children(recursive=True)]:
                    proc.kill()

        timer = threading.Timer(MIN_GRACE, kill)
        timer.daemon = True
        timer.start()
        pod.timers.append(timer)

    # ------------------------------------------------------------------ the launch script

    def run_launch_script(self, cmd: list[str], **kwargs: Any) -> FinishedLauncher:
        """Run the kernelspec's launch_kubernetes.py as the server would, in this process
        (its kubernetes client is this fake), with the environment and arguments it gets."""
        env = dict(kwargs.get("env") or os.environ)
        saved_env, saved_argv = dict(os.environ), sys.argv
        os.environ.clear()
        os.environ.update(env)
        sys.argv = cmd[1:]
        try:
            runpy.run_path(cmd[1], run_name="__main__")
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            sys.argv = saved_argv
        return FinishedLauncher()

    def close(self) -> None:
        for pod in self.created:
            for timer in pod.timers:
                timer.cancel()
            if pod.proc.poll() is None:
                self.terminate(pod)
            with contextlib.suppress(subprocess.TimeoutExpired):
                pod.proc.wait(15)
            if pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()


class FakeCoreV1Api:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def create_namespaced_pod(self, body: dict[str, Any], namespace: str) -> client.V1Pod:
        return self.cluster.create_pod(body, namespace)

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> client.V1PodList:
        return self.cluster.list_pods(namespace, kwargs.get("label_selector", ""))

    def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> client.V1Pod:
        return self.cluster.delete_pod(name, namespace)


class FinishedLauncher:
    """The launch script's process, as the provisioner keeps it: it ended once the pod was made."""

    pid = 0
    returncode = 0

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0
