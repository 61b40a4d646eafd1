"""Support for the gateway tests: installs remote kernelspecs, runs provisioner scenarios."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil


class Gateway:
    """Installs remote kernelspecs, runs scenarios, and remembers every process to check."""

    def __init__(self, root: Path, runtime: Path, logs: Path) -> None:
        self.root = root
        self.runtime = runtime
        self.logs = logs
        self.pids: set[int] = set()

    def install(self, *args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "nanny_io", "install", "python3", "--user", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        path = Path(proc.stdout.rsplit(" in ", 1)[1].strip())
        spec: dict[str, Any] = json.loads((path / "kernel.json").read_text())
        return spec

    def remember(self, *pids: int) -> None:
        """Processes that must be gone at the end: these and their descendants now."""
        for pid in pids:
            self.pids.add(pid)
            with contextlib.suppress(psutil.Error):
                self.pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))

    def run(self, scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 150) -> None:
        """Run ``scenario`` in a fresh loop with a fresh ResponseManager."""
        from gateway_provisioners.response_manager import ResponseManager

        async def main() -> None:
            try:
                await asyncio.wait_for(scenario(), timeout)
            finally:
                if ResponseManager.initialized():
                    ResponseManager.instance().stop_response_manager()
                    ResponseManager.clear_instance()

        asyncio.run(main())

    def leftovers(self) -> list[str]:
        """Files a launcher leaves in the runtime dir (its log history is kept on purpose)."""
        found = [p for p in self.runtime.rglob("*") if "spill-" not in str(p)]
        return sorted(str(p.relative_to(self.runtime)) for p in found if not p.is_dir())


class Launcher:
    """``nanny-io launch`` started by hand, answering to a response socket of the test's own,
    as a provisioner would start it (``prefix`` runs it inside something, e.g. ``unshare``)."""

    def __init__(
        self,
        *args: str,
        prefix: tuple[str, ...] = (),
        kernel: str = "python3",
        from_env: bool = False,
    ) -> None:
        from Cryptodome.PublicKey import RSA

        self.kernel_id = str(uuid.uuid4())
        self.prefix = prefix
        self._key = RSA.generate(1024)
        pem = self._key.publickey().export_key("PEM").decode()
        public = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(60)
        address = f"127.0.0.1:{self._server.getsockname()[1]}"
        argv = [sys.executable, "-m", "nanny_io", "launch"]
        env = dict(os.environ)
        if from_env:  # as a container provisioner gives them to the pod
            env.update(
                NANNY_IO_KERNEL=kernel,
                KERNEL_ID=self.kernel_id,
                RESPONSE_ADDRESS=address,
                PUBLIC_KEY=public,
            )
        else:
            argv += ["--kernel", kernel, "--kernel-id", self.kernel_id]
            argv += ["--response-address", address, "--public-key", public]
        argv += args
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [*prefix, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.stdout = b""
        self._pumps = [
            threading.Thread(target=self._pump_err, daemon=True),
            threading.Thread(target=self._pump_out, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        self.info = self._receive()
        self.clients: list[Any] = []

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            self.stderr.append(raw.decode("utf-8", "replace"))

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self.stdout += raw

    def _receive(self) -> dict[str, Any]:
        from nanny_io_proto.gateway import decrypt_connection_info

        try:
            conn, _ = self._server.accept()
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"no connection info; stderr: {''.join(self.stderr)}") from None
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        self._server.close()
        return decrypt_connection_info(data, self._key.export_key("DER"))

    @property
    def comm_port(self) -> int:
        return int(self.info["comm_port"])

    def comm(self, data: bytes | dict[str, Any]) -> None:
        """One request on the communication port, sent as the provisioners send it."""
        payload = json.dumps(data).encode() if isinstance(data, dict) else data
        with socket.create_connection(("127.0.0.1", self.comm_port), timeout=5) as sock:
            sock.sendall(payload)

    def alive(self) -> bool:
        """The provisioners' poll: does the communication port accept a connection?"""
        try:
            socket.create_connection(("127.0.0.1", self.comm_port), timeout=1).close()
        except OSError:
            return False
        return True

    def client(self) -> Any:
        from jupyter_client import BlockingKernelClient

        kc = BlockingKernelClient()
        kc.load_connection_info({**self.info, "ip": "127.0.0.1"})
        kc.start_channels()
        self.clients.append(kc)
        kc.wait_for_ready(timeout=60)
        return kc

    def tree(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self) -> int:
        for kc in self.clients:
            kc.stop_channels()
        if self.proc.poll() is None:
            # The launcher itself: a wrapper such as `unshare --fork` ignores SIGTERM.
            targets = psutil.Process(self.proc.pid).children() if self.prefix else []
            for target in targets or [psutil.Process(self.proc.pid)]:
                with contextlib.suppress(psutil.Error):
                    target.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for pump in self._pumps:
            pump.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code
