"""A jupyter_client kernel provisioner that runs every kernel under a nanny.

Registered as ``nanny-io`` in the ``jupyter_client.kernel_provisioners`` entry-point group;
a kernel.json with ``metadata.kernel_provisioner.provisioner_name: "nanny-io"`` uses it
(``nanny-io install`` writes such kernelspecs). JupyterLab, jupyter_server, nbclient and
jupyter console then get the nanny without any change.

The KernelManager allocates the connection info and writes the connection file as usual;
the nanny adopts it as its frontend-facing file (adding the log channel's ports) and starts
the kernel behind it. The process the manager sees is the nanny: ``poll`` reports the
kernel's death (with its exit details, read from the nanny's state file) while the nanny
keeps running; ``kill`` takes the whole process tree down at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

import psutil
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from .discovery import NannyState, load_connection_info
from .nanny import SIGNAL_NAMES

#: How long ``kill`` waits for the tree to disappear before giving up on it.
KILL_TIMEOUT = 10.0


class NannyProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Launch the kernel under ``nanny-io start --managed`` and manage it through the nanny."""

    exit_details: dict[str, Any] | None = None  # how the kernel died, once it has

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Let LocalProvisioner allocate ports and write the connection file, then run the
        nanny instead of the kernel command (the nanny formats the kernel command itself)."""
        kwargs = await super().pre_launch(**kwargs)
        km = self.parent
        name = getattr(self.kernel_spec, "name", "") or os.path.basename(
            self.kernel_spec.resource_dir
        )
        kwargs["cmd"] = [
            sys.executable,
            "-m",
            "nanny_io",
            "start",
            name,
            "--connection-file",
            km.connection_file,
            "--kernel-id",
            self.kernel_id,
            "--managed",
        ]
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        self.exit_details = None
        return await super().launch_kernel(cmd, **kwargs)

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any] | None:
        try:
            path = NannyState(self.kernel_id, "", "", 0, 0.0).path
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        except (OSError, ValueError):
            return None

    async def poll(self) -> int | None:
        """None while the kernel runs; its exit status once it died (the nanny may live on)."""
        if self.process is None:
            return 0
        code = self.process.poll()
        if code is not None:
            return int(code)
        state = self._state()
        if state and state.get("status") == "dead":
            if self.exit_details is None:
                self.exit_details = {
                    "exit_code": state.get("exit_code"),
                    "signal": state.get("exit_signal"),
                    "signal_name": SIGNAL_NAMES.get(state.get("exit_signal") or 0),
                    "reason": state.get("exit_reason"),
                }
                self.log.warning("kernel %s %s", self.kernel_id, state.get("exit_reason"))
                # jupyter_server's kernel model reports its manager's `reason`: the browser
                # then says how the kernel died instead of "the kernel appears to have died".
                with contextlib.suppress(Exception):
                    self.parent.reason = f"kernel died: {state.get('exit_reason')}"
            signum = state.get("exit_signal")
            return -int(signum) if signum else int(state.get("exit_code") or 1)
        return None

    async def wait(self) -> int | None:
        """Wait for the nanny process itself to end."""
        if self.process is None:
            return None
        while (code := self.process.poll()) is None:
            await asyncio.sleep(0.05)
        self.process = None
        return int(code)

    # ------------------------------------------------------------------ signals

    async def _control(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        from .control_client import request

        info = load_connection_info(self.parent.connection_file)
        try:
            reply = await asyncio.to_thread(request, info, msg_type, content, 10.0)
        except RuntimeError:  # no new threads at interpreter exit (an atexit interrupt)
            reply = request(info, msg_type, content, 2.0)
        return dict(reply.content)

    async def send_signal(self, signum: int) -> None:
        """Deliver ``signum`` to the kernel's process group through the nanny.

        SIGINT becomes an ``interrupt_request`` (the nanny interrupts as the kernelspec
        says); anything else a ``signal_request``. SIGKILL/SIGTERM go to the whole tree.
        """
        if self.process is None:
            return
        if signum == signal.SIGKILL:
            await self.kill()
            return
        if signum == signal.SIGTERM:
            await self.terminate()
            return
        if signum == 0:  # an existence check
            if self.process.poll() is not None:
                raise ProcessLookupError(self.process.pid)
            return
        msg_type, content = (
            ("interrupt_request", {})
            if signum == signal.SIGINT
            else ("signal_request", {"signum": int(signum)})
        )
        try:
            reply = await self._control(msg_type, content)
        except Exception as exc:  # the nanny is not answering: say so, do not crash the manager
            self.log.error(
                "cannot deliver %s to kernel %s: %s",
                SIGNAL_NAMES.get(signum, signum),
                self.kernel_id,
                exc,
            )
            return
        if reply.get("status") != "ok":
            self.log.error("kernel %s: %s", self.kernel_id, reply.get("evalue"))

    async def terminate(self, restart: bool = False) -> None:
        """SIGTERM to the nanny: it shuts the kernel down cleanly, then its whole tree."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    async def kill(self, restart: bool = False) -> None:
        """SIGKILL to the nanny and its whole tree at once; return when all of it is gone.

        Waiting matters for a restart: the old kernel holds the ports the new one binds.
        """
        if self.process is None:
            return
        try:
            nanny = psutil.Process(self.process.pid)
            guardians = nanny.children()
            kernels = [p for g in guardians for p in g.children(recursive=True)]
        except psutil.Error:
            nanny, guardians, kernels = None, [], []
        # The guardian is spared: it sees the nanny die, removes the nanny's private files
        # and exits by itself (killing anything the kernel forks meanwhile).
        for proc in ([nanny] if nanny else []) + kernels:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        procs = ([nanny] if nanny else []) + kernels + guardians
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: psutil.wait_procs(procs, timeout=KILL_TIMEOUT))
        self.process.poll()
