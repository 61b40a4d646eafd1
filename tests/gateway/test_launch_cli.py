"""``nanny-io launch``'s arguments: the environment the container provisioners set, the port
range, and clear errors (with nothing left running) when it cannot start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psutil
import pytest
from helpers import iopub_until

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
    runtime = str(jupyter_env.runtime)  # the kernel's command line names a file in there
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if runtime in " ".join(p.info["cmdline"] or [])
    ]


def test_a_kernel_exit_code_becomes_the_launchers(launcher_factory: Any) -> None:
    launcher = launcher_factory()
    kc = launcher.client()
    kc.execute("import os; os._exit(3)")
    died = iopub_until(kc, lambda m: m["msg_type"] == "kernel_died")[-1]["content"]
    assert died["exit_code"] == 3 and died["reason"].startswith("exited with code 3")
    assert launcher.proc.wait(10) == 3
    assert not launcher.alive()


def test_records_on_stdout_are_json_lines_under_16_kib(launcher_factory: Any) -> None:
    launcher = launcher_factory("--log-stdout", "json")
    kc = launcher.client()
    kc.execute_interactive(
        "import os; os.write(1, b'x' * 100_000 + b'\\n'); os.write(2, b'warn\\n')", timeout=20
    )
    kc.stop_channels()
    launcher.comm({"shutdown": 1})
    assert launcher.proc.wait(20) == 0
    launcher.stop()  # joins the reader of stdout
    lines = launcher.stdout.splitlines(keepends=True)
    assert lines and all(len(line) <= 16 * 1024 for line in lines)
    records = [json.loads(line) for line in lines]
    assert {r["kernel_id"] for r in records} == {launcher.kernel_id}
    long = [r for r in records if r["stream"] == "stdout" and r["text"].startswith("x")]
    assert "".join(r["text"] for r in long) == "x" * 100_000
    assert [r.get("partial", False) for r in long][-1] is False
    assert any(r["stream"] == "stderr" and r["text"] == "warn" for r in records)
    events = [r["event"]["event"] for r in records if r["stream"] == "nanny"]
    assert events[0] == "kernel_started" and "kernel_stopped" in events
    assert not any(line.startswith(b"[nanny-io") for line in lines)  # its own log: stderr
