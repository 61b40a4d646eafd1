"""From a kernelspec to the command, environment and files a kernel is started with."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import string
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class KernelSpecError(Exception):
    """A kernelspec that cannot be found or used; the message says what to do."""


@dataclass(frozen=True)
class KernelSpecInfo:
    """The parts of a kernelspec the nanny uses."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    resource_dir: str
    interrupt_mode: str = "signal"
    capture_stdstreams: bool = False
    language: str = ""
    display_name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def _read_capture_flag(resource_dir: str, metadata: dict[str, Any]) -> bool:
    """``metadata.capture_stdstreams``, or the JEP's top-level key read from the raw file.

    The top-level key is read here rather than through KernelSpec, which warns about unknown
    top-level keys.
    """
    if "capture_stdstreams" in metadata:
        return bool(metadata["capture_stdstreams"])
    with contextlib.suppress(OSError, ValueError):
        raw = json.loads(Path(resource_dir, "kernel.json").read_text())
        if isinstance(raw, dict):
            return bool(raw.get("capture_stdstreams", False))
    return False


def find_kernelspec(name: str) -> KernelSpecInfo:
    """Look a kernelspec up with jupyter_client's KernelSpecManager."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel:
        available = ", ".join(sorted(ksm.find_kernel_specs())) or "none"
        raise KernelSpecError(f"no kernel named {name!r}; available kernels: {available}") from None
    metadata = dict(spec.metadata or {})
    return KernelSpecInfo(
        name=name,
        argv=tuple(spec.argv),
        env=dict(spec.env or {}),
        resource_dir=spec.resource_dir,
        interrupt_mode=spec.interrupt_mode or "signal",
        capture_stdstreams=_read_capture_flag(spec.resource_dir, metadata),
        language=spec.language or "",
        display_name=spec.display_name or "",
        metadata=metadata,
    )


def format_argv(spec: KernelSpecInfo, connection_file: str) -> list[str]:
    """The kernel command with ``{connection_file}`` and friends filled in (as jupyter_client)."""
    argv = list(spec.argv)
    if argv and argv[0] in {
        "python",
        f"python{sys.version_info[0]}",
        "python{}.{}".format(*sys.version_info[:2]),
    }:
        argv[0] = sys.executable
    ns = {
        "connection_file": connection_file,
        "prefix": sys.prefix,
        "resource_dir": spec.resource_dir,
    }
    pat = string.Formatter()
    out = []
    for arg in argv:
        try:
            out.append(pat.vformat(arg, (), ns))
        except (KeyError, IndexError, ValueError):
            out.append(arg)
    return out


def kernel_env(spec: KernelSpecInfo, extra: dict[str, str]) -> dict[str, str]:
    """The nanny's environment, the kernelspec's env (``${VAR}`` expanded) and ``extra``."""
    env = dict(os.environ)
    env.pop("JPY_PARENT_PID", None)  # the nanny is the kernel's manager now
    env.pop("JUPYTER_KERNEL_LOG", None)
    for key, value in spec.env.items():
        env[key] = string.Template(value).safe_substitute(env)
    # Buffered output is lost when a process is killed; ask Python kernels not to buffer.
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


def free_tcp_ports(ip: str, count: int) -> list[int]:
    """``count`` distinct ports that are free on ``ip`` right now (jupyter_client's method).

    All sockets are held open until every port is picked so the same port is not returned twice.
    """
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip if ip not in ("*", "0.0.0.0") else "", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_ipc_ports(ip: str, count: int, taken: set[int]) -> list[int]:
    """``count`` ipc "ports" (path suffixes) not yet used as ``{ip}-{port}`` files."""
    ports: list[int] = []
    port = 1
    while len(ports) < count:
        if port not in taken and not os.path.exists(f"{ip}-{port}"):
            ports.append(port)
        port += 1
    return ports


def make_private_dir(parent: Path, kernel_id: str) -> Path:
    """A fresh 0700 directory for the kernel-facing connection file and the log FIFO."""
    path = Path(tempfile.mkdtemp(prefix=f"nanny-io-{kernel_id[:8]}-", dir=parent))
    os.chmod(path, 0o700)
    return path
