"""``nanny-io install --remote``: kernelspecs for gateway_provisioners' provisioners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.timeout(120)

PLACEHOLDERS = ["{kernel_id}", "{port_range}", "{response_address}", "{public_key}"]


def _nanny_io(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", *args], capture_output=True, text=True, timeout=60
    )


def test_distributed_spec_runs_nanny_launch_with_the_provisioners_settings(
    gateway: Any,
) -> None:
    spec = gateway.install(
        "--remote", "distributed", "--remote-hosts", "h1, h2", "--port-range", "40000..41999",
        "--launch-timeout", "60", "--authorized-users", "ada,bob", "--launch-command", "nanny-io",
    )  # fmt: skip
    assert spec["argv"][:4] == ["nanny-io", "launch", "--kernel", "python3"]
    assert all(p in spec["argv"] for p in [*PLACEHOLDERS, "{transport_encryption}"])
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner == {
        "provisioner_name": "distributed-provisioner",
        "config": {
            "remote_hosts": ["h1", "h2"],
            "port_range": "40000..41999",
            "launch_timeout": 60,
            "authorized_users": ["ada", "bob"],
        },
    }
    assert spec["interrupt_mode"] == "signal"
    assert spec["metadata"]["supported_encryption"] == ["curve"]  # from the source kernelspec
    assert spec["display_name"].endswith("(nanny-io, distributed)")


def test_kubernetes_spec_puts_nanny_launch_in_the_pod_template(gateway: Any) -> None:
    spec = gateway.install("--remote", "kubernetes", "--image-name", "example/k:1")
    script = Path(spec["argv"][1])
    assert script.name == "launch_kubernetes.py" and script.is_file()
    assert spec["metadata"]["kernel_provisioner"]["config"] == {"image_name": "example/k:1"}
    assert spec["env"] == {"NANNY_IO_KERNEL": "python3"}
    template = (script.parent / "kernel-pod.yaml.j2").read_text()
    from jinja2 import Template

    pod = yaml.safe_load(
        Template(template).render(kernel_pod_name="p", kernel_namespace="n", kernel_image="i")
    )
    (container,) = pod["spec"]["containers"]
    assert container["command"] == [
        "nanny-io", "launch", "--kernel", "python3", "--log-stdout", "json"
    ]  # fmt: skip


def test_docker_spec_keeps_the_images_command(gateway: Any) -> None:
    spec = gateway.install("--remote", "docker-swarm", "--image-name", "example/k:1")
    assert Path(spec["argv"][1]).name == "launch_docker.py"
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "docker-swarm-provisioner"
    assert spec["env"] == {"NANNY_IO_KERNEL": "python3"}


def test_remote_specs_uninstall(gateway: Any) -> None:
    gateway.install("--remote", "distributed")
    proc = _nanny_io("uninstall", "python3-distributed")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--remote", "kubernetes"], "needs --image-name"),
        (["--remote", "docker", "--image-name", "x", "--remote-hosts", "h"], "distributed only"),
        (["--remote", "distributed", "--image-name", "x"], "container provisioners only"),
        (["--remote", "distributed", "--capture"], "--capture is read on the kernel's host"),
        (["--image-name", "x"], "only apply with --remote"),
    ],
)
def test_settings_that_do_not_apply_are_refused(gateway: Any, args: list[str], error: str) -> None:
    proc = _nanny_io("install", "python3", "--user", *args)
    assert proc.returncode == 1
    assert error in proc.stderr and "Traceback" not in proc.stderr
