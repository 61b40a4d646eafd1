"""``nanny-io launch``'s arguments: the environment the container provisioners set, the port
range, and clear errors (with nothing left running) when it cannot start."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)
BASE = ("--kernel", "python3", "--response-address", "x:9", "--public-key", "AAAA")


def _launch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", "launch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_the_environment_stands_in_for_the_arguments(launcher_factory: Any) -> None:
    launcher = launcher_factory(from_env=True)
    assert launcher.info["kernel_id"] == launcher.kernel_id
    assert launcher.info["kernel_name"] == "python3"
    kc = launcher.client()
    assert kc.execute_interactive("1", timeout=20)["content"]["status"] == "ok"


def test_every_port_is_inside_the_range(launcher_factory: Any) -> None:
    launcher = launcher_factory("--port-range", "45000..45099")
    names = ("shell", "iopub", "stdin", "control", "hb", "log", "log_replay")
    ports = [launcher.info[f"{n}_port"] for n in names] + [launcher.comm_port]
    assert all(45000 <= p <= 45099 for p in ports)
    assert len(set(ports)) == len(ports)
    # The kernel's private ports too (its own connection file, in the nanny's private dir).
    assert launcher.client().kernel_info()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "no kernel to run"),
        (("--kernel", "python3"), "no response address"),
        (("--kernel", "python3", "--response-address", "127.0.0.1:9"), "no public key"),
        ((*BASE, "--port-range", "9..8"), "port range"),
        ((*BASE, "--transport-encryption", "sometimes"), "transport encryption"),
    ],
)
def test_missing_or_bad_arguments_say_what_is_wrong(args: tuple[str, ...], error: str) -> None:
    env = {k: "" for k in ("NANNY_IO_KERNEL", "KERNEL_ID", "PUBLIC_KEY", "RESPONSE_ADDRESS")}
    proc = _launch(*args, **env)
    assert proc.returncode == 1
    assert error in proc.stderr and "Traceback" not in proc.stderr


def _key() -> str:
    from Cryptodome.PublicKey import RSA

    pem = RSA.generate(1024).publickey().export_key("PEM").decode()
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def test_a_port_range_too_small_is_refused(jupyter_env: Any) -> None:
    proc = _launch(
        "--kernel", "python3", "--response-address", "127.0.0.1:9", "--public-key", _key(),
        "--port-range", "45100..45104",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "free ports in the port range 45100..45104" in proc.stderr
    assert "a launcher needs 11" in proc.stderr


def test_required_encryption_for_a_kernel_without_curve_is_refused(jupyter_env: Any) -> None:
    jupyter_env.add_kernelspec(
        "plain", [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    )
    proc = _launch(
        "--kernel", "plain", "--response-address", "127.0.0.1:9", "--public-key", _key(),
        "--transport-encryption", "required",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "does not declare 'curve'" in proc.stderr


def test_an_unreachable_server_ends_the_launcher_and_its_kernel(jupyter_env: Any) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = _launch(
        "--kernel", "python3", "--response-address", f"127.0.0.1:{port}", "--public-key", _key()
    )
    assert proc.returncode == 1
    assert "is unreachable" in proc.stderr
    assert list(jupyter_env.runtime.glob("nanny-io-*")) == []  # the private dir went too
