"""A jupyter_client kernel provisioner that runs every kernel under a nanny.

Registered as ``nanny-io`` in the ``jupyter_client.kernel_provisioners`` entry-point group;
a kernel.json with ``metadata.kernel_provisioner.provisioner_name: "nanny-io"`` uses it
(``nanny-io install`` writes such kernelspecs). JupyterLab, jupyter_server, nbclient and
jupyter console then get the nanny without any change.

The KernelManager allocates the connection info and writes the connection file as usual;
the nanny adopts it as its frontend-facing file (adding the log channel's ports) and starts
the kernel behind it. The process the manager sees is the nanny, which outlives the kernel:

- ``poll`` reports the kernel's end (a death with its exit details, or a requested stop),
  read from the nanny's state file, while the nanny keeps running;
- ``kill`` and ``terminate`` end the kernel through the nanny, and a restart sends the same
  nanny a ``launch_request``: one log history, the same ports, no new process;
- ``cleanup`` without restart ends the nanny (and with it anything left of the kernel tree).

Restarting stays the manager's decision (its autorestart and restart limit), as with a plain
kernelspec; the nanny only reports (specs/protocol.md §8.3).

The nanny's settings come from the kernelspec, as provisioner config::

    "kernel_provisioner": {"provisioner_name": "nanny-io",
                           "config": {"startup_timeout": 120, "term_grace": 5}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

import psutil
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Bool, Float, Int

from .discovery import load_connection_info, state_path
from .lifecycle import KernelState, kernel_process_runs
from .limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_SPILL_BYTES,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TERM_GRACE,
)
from .signals import SIGNAL_NAMES

#: How long ``kill`` waits for the tree to disappear before giving up on it.
KILL_TIMEOUT = 10.0
#: How long ending the nanny may take: its own shutdown of the kernel, then its exit.
NANNY_EXIT_TIMEOUT = 15.0
#: How much longer than the kernel's start-up timeout a restart waits for the nanny's answer.
LAUNCH_MARGIN = 30.0


class NannyProvisioner(LocalProvisioner):
    """Launch the kernel under ``nanny-io start --managed`` and manage it through the nanny."""

    startup_timeout = Float(
        DEFAULT_STARTUP_TIMEOUT,
        config=True,
        help="seconds the kernel may take to answer kernel_info after it was launched",
    )
    shutdown_grace = Float(
        DEFAULT_SHUTDOWN_GRACE,
        config=True,
        help="seconds the kernel may take to exit after shutdown_request before its process "
        "tree is terminated",
    )
    term_grace = Float(
        DEFAULT_TERM_GRACE,
        config=True,
        help="seconds the process tree may take to exit after SIGTERM before it is killed",
    )
    ring_size = Int(DEFAULT_MAX_BYTES, config=True, help="bytes of log kept in memory")
    spill_size = Int(DEFAULT_SPILL_BYTES, config=True, help="bytes of log kept on disk")
    store_iopub = Bool(
        None,
        allow_none=True,
        config=True,
        help="keep the kernel's own iopub output (print(), tracebacks) in the log; "
        "None: as the kernelspec's metadata.nanny_io_store_iopub says, else yes",
    )

    exit_details: dict[str, Any] | None = None  # how the kernel died, once it has
    _nanny_ports: tuple[int, ...] = ()  # the frontend-facing ports the nanny serves

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Let LocalProvisioner allocate ports and write the connection file, then run the
        nanny instead of the kernel command (the nanny formats the kernel command itself)."""
        kwargs = await super().pre_launch(**kwargs)
        km = self._km
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
            f"--startup-timeout={self.startup_timeout}",
            f"--shutdown-grace={self.shutdown_grace}",
            f"--term-grace={self.term_grace}",
            f"--ring-size={self.ring_size}",
            f"--spill-size={self.spill_size}",
        ]
        if self.store_iopub is not None:
            kwargs["cmd"].append("--store-iopub" if self.store_iopub else "--no-store-iopub")
        return kwargs

    @property
    def _km(self) -> Any:
        """The KernelManager that owns this provisioner (traitlets types ``parent`` as
        optional, but jupyter_client always creates a provisioner with its manager)."""
        km = self.parent
        assert km is not None, "a provisioner belongs to a kernel manager"
        return km

    def _manager_ports(self) -> tuple[int, ...]:
        km = self._km
        return (km.shell_port, km.iopub_port, km.stdin_port, km.control_port, km.hb_port)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the nanny, or, for a restart, the next incarnation in the running nanny."""
        self.exit_details = None
        if self._nanny_running():
            if self._manager_ports() == self._nanny_ports:
                await self._relaunch()
                return self.connection_info
            # The manager chose new ports (a restart during start-up): a new nanny serves them.
            await self._end_nanny()
        info = await super().launch_kernel(cmd, **kwargs)
        self._nanny_ports = self._manager_ports()
        return info

    async def _relaunch(self) -> None:
        try:
            timeout = self.startup_timeout + LAUNCH_MARGIN
            reply = await self._control("launch_request", {}, timeout)
        except Exception as exc:  # the nanny is not answering: the next poll says how it is
            self.log.error("cannot restart kernel %s: %s", self.kernel_id, exc)
            return
        if reply.get("status") != "ok":
            self.log.error("kernel %s did not restart: %s", self.kernel_id, reply.get("evalue"))
            return
        self.log.info(
            "kernel %s restarted (incarnation %s, pid %s)",
            self.kernel_id,
            reply.get("incarnation"),
            reply.get("pid"),
        )

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(state_path(self.kernel_id).read_text())
            return state
        except (OSError, ValueError):
            return None

    def _nanny_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _kernel_running(self) -> bool:
        """Whether the nanny's kernel runs (or starts); True while the nanny has not said."""
        if not self._nanny_running():
            return False
        state = self._state()
        return state is None or kernel_process_runs(state.get("status"))

    async def poll(self) -> int | None:
        """None while the kernel runs; its exit status once it ended (the nanny lives on)."""
        if self.process is None:
            return 0
        code = self.process.poll()
        if code is not None:
            return int(code)
        state = self._state()
        status = state.get("status") if state else None
        if state and status == KernelState.DEAD:
            if self.exit_details is None:
                deaths = state.get("deaths") or [{}]
                death = deaths[-1] if isinstance(deaths[-1], dict) else {}
                self.exit_details = {
                    "exit_code": state.get("exit_code"),
                    "signal": state.get("exit_signal"),
                    "signal_name": SIGNAL_NAMES.get(state.get("exit_signal") or 0),
                    "reason": state.get("exit_reason"),
                    # what the nanny found out: kernel_died's fields (specs/protocol.md §9.2)
                    **{k: death.get(k) for k in ("cause", "oom", "peak_memory", "cell")},
                }
                self.log.warning("kernel %s died: %s", self.kernel_id, state.get("exit_reason"))
                # jupyter_server's kernel model reports its manager's `reason`: the browser
                # then says how the kernel died instead of "the kernel appears to have died".
                with contextlib.suppress(Exception):
                    self._km.reason = f"kernel died: {state.get('exit_reason')}"
            signum = state.get("exit_signal")
            return -int(signum) if signum else int(state.get("exit_code") or 1)
        if status == KernelState.STOPPED:  # shut down on request, waits for restart or cleanup
            return 0
        return None

    async def wait(self) -> int | None:
        """Wait for the kernel to end; forget the nanny process once it has ended too."""
        if self.process is None:
            return None
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.05)
        if self.process.poll() is not None:
            self.process = None
        return code

    # ------------------------------------------------------------------ signals

    async def _control(
        self, msg_type: str, content: dict[str, Any], timeout: float = 10.0
    ) -> dict[str, Any]:
        from .control_client import request

        info = load_connection_info(self._km.connection_file)
        try:
            reply = await asyncio.to_thread(request, info, msg_type, content, timeout)
        except RuntimeError:  # no new threads at interpreter exit (an atexit interrupt)
            reply = request(info, msg_type, content, min(timeout, 2.0))
        return dict(reply.content)

    async def send_signal(self, signum: int) -> None:
        """Deliver ``signum`` to the kernel's process group through the nanny.

        SIGINT becomes an ``interrupt_request`` (the nanny interrupts as the kernelspec
        says); anything else a ``signal_request``. SIGKILL/SIGTERM go to the whole tree.
        A kernel that is not running has nothing to signal, as with a plain kernelspec:
        the manager interrupts before every shutdown and restart, also of a dead kernel.
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
        if not self._kernel_running():
            self.log.debug("kernel %s is not running; %s not sent", self.kernel_id, signum)
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
        if reply.get("status") != "ok" and reply.get("ename") != "KernelDead":
            self.log.error("kernel %s: %s", self.kernel_id, reply.get("evalue"))

    async def _signal_kernel_tree(self, signum: int) -> bool:
        """Have the nanny signal the kernel; False when the nanny could not be asked."""
        try:
            reply = await self._control("signal_request", {"signum": int(signum)})
        except Exception as exc:
            self.log.warning("kernel %s: the nanny is not answering: %s", self.kernel_id, exc)
            return False
        gone = ("KernelDead", "ProcessLookupError")
        return reply.get("status") == "ok" or reply.get("ename") in gone

    async def terminate(self, restart: bool = False) -> None:
        """SIGTERM to the kernel through the nanny (the nanny itself stays for a restart)."""
        if not self._nanny_running():
            return
        if self._kernel_running() and await self._signal_kernel_tree(signal.SIGTERM):
            return
        if not self._kernel_running() or self.process is None:  # the awaits above may end it
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    async def kill(self, restart: bool = False) -> None:
        """SIGKILL the kernel through the nanny and return once it is gone.

        The nanny ends the kernel's whole tree and stays, so that a restart continues its
        history; ``cleanup`` ends the nanny. Waiting matters: the old kernel holds ports the
        new one binds. A nanny that does not answer is killed with its whole tree.
        """
        if not self._nanny_running():
            return
        if not self._kernel_running():
            return
        if await self._signal_kernel_tree(signal.SIGKILL):
            deadline = time.monotonic() + KILL_TIMEOUT
            while time.monotonic() < deadline:
                if await self.poll() is not None:
                    return
                await asyncio.sleep(0.02)
        await self._kill_everything()

    async def cleanup(self, restart: bool = False) -> None:
        """Without restart: the kernel's life under this manager is over, end the nanny."""
        if not restart:
            await self._end_nanny()
        await super().cleanup(restart=restart)

    async def _end_nanny(self) -> None:
        """SIGTERM the nanny (it shuts the kernel down, if it runs, then exits); SIGKILL for
        the whole tree when it takes too long."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + NANNY_EXIT_TIMEOUT
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.process.poll() is None:
            self.log.warning("the nanny of kernel %s did not exit; killing it", self.kernel_id)
            await self._kill_everything()
        self.process = None

    async def _kill_everything(self) -> None:
        """SIGKILL to the nanny and the kernel tree at once; return when all of it is gone."""
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
