"""The nanny: one per kernel, on the kernel's machine, on one asyncio loop.

Shell and stdin are direct between frontends and the kernel; control and iopub pass through
here; the heartbeat is answered here. This module holds the configuration and wires the
pieces, each with one job:

- ``journal``: lifecycle state and state file, the nanny's events, the tasks it owns;
- ``endpoints``: the sockets, frontend- and kernel-facing;
- ``capture`` (``KernelOutput``): pipes and the log FIFO into the log store;
- ``attribution``: which cell an output belongs to, and holding ``idle`` until it went out;
- ``supervisor``: launching, readiness, death, shutdown, the process tree;
- ``proxy``: control and iopub;
- ``logchannel``: the log channel (live and replay), a listener of the store.

Data flows one way: capture → store → log channel and forwarder → frontends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from nanny_io_proto.connection_files import (
    ConnectionInfo,
    NannyConnectionInfo,
    encode_connection_file,
    kernel_facing,
)
from nanny_io_proto.streams import Stream

from .attribution import Attribution
from .capture import EchoWriter, KernelOutput, StreamPipeline
from .discovery import NannyState, write_private
from .endpoints import Endpoints
from .forwarding import OutputForwarder
from .guardian import GuardianHandle
from .iopublog import IopubLog
from .journal import Journal
from .launcher import KernelSpecInfo, Prelaunch, make_log_fifo
from .logchannel import LogChannel
from .proxy import Proxy
from .session import NannySession
from .signals import SIGNAL_NAMES, SIGNALS
from .store import DEFAULT_MAX_BYTES, DEFAULT_SPILL_BYTES, LogStore, Spill
from .supervisor import KernelStartError, Supervisor, SupervisorConfig, death_notice

__all__ = [
    "SIGNALS",
    "SIGNAL_NAMES",
    "KernelStartError",
    "Nanny",
    "NannyConfig",
    "death_notice",
]

log = logging.getLogger("nanny_io")


@dataclass(frozen=True)
class NannyConfig:
    """Everything ``nanny-io start`` decided before the nanny runs (configuration is data)."""

    spec: KernelSpecInfo
    frontend: NannyConnectionInfo
    connection_file: Path
    private_dir: Path
    kernel_ports: tuple[int, int, int]  # control, iopub, hb: the kernel-facing private ports
    owns_connection_file: bool = True
    cwd: str | None = None
    shutdown_grace: float = 5.0  # after shutdown_request, before SIGTERM
    term_grace: float = 2.0  # after SIGTERM, before SIGKILL
    startup_timeout: float = 60.0
    echo_output: bool = True  # without capture opt-in: echo stdout/stderr on our stderr
    ring_bytes: int = DEFAULT_MAX_BYTES  # the in-memory log store's bound
    spill_dir: Path | None = None  # on-disk history; None: memory only
    spill_bytes: int = DEFAULT_SPILL_BYTES
    rate_limit: float | None = None  # bytes/s of captured output forwarded to frontends
    end_wait: float = 2.0  # how long idle waits for a kernel's END delimiters
    # Under a jupyter_client KernelManager (the provisioner) the manager decides about
    # restarts: a death is not announced as a final `status: dead`, and a shutdown_request
    # with restart stops the kernel and waits for the manager's launch_request
    # (specs/protocol.md §8.3).
    managed: bool = False
    # A launcher (`nanny-io launch`, the gateway_provisioners protocol) serves one incarnation:
    # its manager restarts a kernel by starting a new launcher. A death ends the nanny with
    # the kernel's exit status once it is reported, and so does a shutdown with restart.
    exit_with_kernel: bool = False
    # Keep the kernel's own iopub output (stream and error messages) in the log (FLAG_IOPUB).
    store_iopub: bool = True

    @property
    def capture(self) -> bool:
        """Whether captured stdout/stderr go to frontends (the kernelspec opted in)."""
        return self.spec.capture_stdstreams

    @property
    def kernel_id(self) -> str:
        return self.frontend.kernel_id


class Nanny:
    """Runs one kernel under supervision until it is shut down."""

    def __init__(
        self, config: NannyConfig, guardian: GuardianHandle, prelaunched: Prelaunch | None = None
    ) -> None:
        self.config = config
        self.guardian = guardian
        self._prelaunched = prelaunched
        self.session = NannySession(config.frontend.key, config.frontend.signature_scheme)
        control, iopub, hb = config.kernel_ports
        self.kernel_info: ConnectionInfo = kernel_facing(
            config.frontend,
            ip=config.frontend.ip,
            control_port=control,
            iopub_port=iopub,
            hb_port=hb,
        )
        self.kernel_connection_file = config.private_dir / "kernel.json"
        self.epoch = uuid.uuid4().hex
        spill = None
        if config.spill_dir is not None:
            spill = Spill(config.spill_dir, epoch=self.epoch, max_total_bytes=config.spill_bytes)
        self.store = LogStore(epoch=self.epoch, max_bytes=config.ring_bytes, spill=spill)
        self.journal = Journal(
            NannyState(
                kernel_id=config.kernel_id,
                kernel_name=config.spec.name,
                connection_file=str(config.connection_file),
                nanny_pid=os.getpid(),
                nanny_started=psutil.Process().create_time(),
                spill_dir=str(config.spill_dir) if config.spill_dir else None,
            ),
            self.store,
        )
        # The foreground nanny shows the kernel's log live (and its output, unless that goes
        # to frontends), as the server's terminal shows a kernel's output today.
        # Under a kernel manager its lines land in the server's log: say whose they are.
        prefix = f"[nanny-io {config.kernel_id[:8]} {{stream}}] " if config.managed else None
        self.echo = EchoWriter(sys.stderr.fileno(), prefix=prefix) if config.echo_output else None
        self.log_channel: LogChannel | None = None
        self.endpoints: Endpoints | None = None

    def _on_log(self, stream: Stream, data: bytes) -> None:
        self.output.pipelines[Stream.LOG].feed(stream, data)
        if self.echo is not None:
            self.echo.write(data, stream)

    def _wire(self) -> None:
        """Build the pieces (on the running loop: they own sockets, events and timers)."""
        config = self.config
        self.endpoints = endpoints = Endpoints(config.frontend, self.kernel_info, self.session)
        self.log_channel = LogChannel(
            endpoints.log, endpoints.log_replay, self.store, self.session.signer
        )

        def update_ticks(journal: Journal) -> None:
            assert self.log_channel is not None
            self.log_channel.kernel_state = journal.lifecycle.tick_state
            self.log_channel.incarnation = journal.incarnations

        self.journal.on_change(update_ticks)
        forwarder = (
            OutputForwarder(endpoints.send_stream, rate_limit=config.rate_limit)
            if config.capture
            else None
        )
        self.attribution = attribution = Attribution(
            forwarder,
            self.echo,
            end_wait=config.end_wait,
            drain=lambda: self.output.drain(),
            release_held=lambda stream: self.output.release_held(stream),
            on_delimiter_timeout=self._delimiter_timeout,
        )
        self.output = KernelOutput(
            {
                stream: StreamPipeline(
                    stream,
                    self.store,
                    incarnation=lambda: self.journal.incarnations,
                    on_output=attribution.on_output,
                    on_marker=attribution.on_marker,
                )
                for stream in (Stream.STDOUT, Stream.STDERR, Stream.LOG)
            }
        )
        self.supervisor = Supervisor(
            SupervisorConfig(
                spec=config.spec,
                kernel_id=config.kernel_id,
                kernel_connection_file=self.kernel_connection_file,
                cwd=config.cwd,
                capture=config.capture,
                managed=config.managed,
                exit_with_kernel=config.exit_with_kernel,
                shutdown_grace=config.shutdown_grace,
                term_grace=config.term_grace,
                startup_timeout=config.startup_timeout,
            ),
            self.journal,
            self.guardian,
            endpoints,
            self.output,
            attribution,
            self._prelaunched,
        )
        attribution.on_cell_start = self.supervisor.cells.started
        attribution.on_cell_end = self.supervisor.cells.quiet
        iopub_log = IopubLog(
            self.store,
            lambda: self.journal.incarnations,
            self.supervisor.cells,
            store_output=config.store_iopub,
        )
        self.proxy = Proxy(
            config.spec, self.journal, endpoints, self.supervisor, attribution, iopub_log
        )

    def _delimiter_timeout(self, stream: Stream, msg_id: str) -> None:
        self.journal.event(
            "delimiter_timeout",
            f"no END delimiter on {stream.value} for {msg_id} within "
            f"{self.config.end_wait:g} s; idle released",
            msg_id=msg_id,
            stream=stream.value,
        )

    def _open_log_fifo(self, loop: asyncio.AbstractEventLoop) -> None:
        """The $JUPYTER_KERNEL_LOG FIFO, open for reading before any kernel starts."""
        pre = self._prelaunched
        if pre is not None:
            path, read_fd, keep_fd = pre.fifo_path, pre.fifo_read_fd, pre.fifo_keep_fd
        else:
            path, read_fd, keep_fd = make_log_fifo(self.config.private_dir)
        self.supervisor.fifo_path = path
        self.output.open_fifo(loop, read_fd, keep_fd, self._on_log)

    # ------------------------------------------------------------------ main

    async def run(self) -> int:
        """Serve until the kernel is shut down; the exit status for the CLI."""
        loop = asyncio.get_running_loop()
        if self._prelaunched is None:
            write_private(self.kernel_connection_file, encode_connection_file(self.kernel_info))
        self._wire()
        assert self.endpoints is not None and self.log_channel is not None
        self.endpoints.heartbeat.start()
        self._open_log_fifo(loop)
        self.supervisor.watch_guardian(loop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_stop)
        status = 0
        try:
            self.journal.spawn(self.log_channel.serve_ticks(), "log-ticks")
            self.journal.spawn(self.log_channel.serve_subscriptions(), "log-subscriptions")
            self.journal.spawn(self.log_channel.serve_replay(), "log-replay")
            self.proxy.serve_kernel()
            await self.supervisor.launch()
            if not self.config.managed:
                # The kernel's own banner names its private kernel-facing file; frontends
                # must connect through the nanny.
                log.info("connect frontends with: --existing %s", self.config.connection_file)
            self.proxy.serve()
            await self.journal.stop.wait()
        except KernelStartError as exc:
            log.error("%s", exc)
            status = 1
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await self._teardown()
        exit_status = self.supervisor.exit_status
        return status if exit_status is None else exit_status

    def request_stop(self) -> None:
        """Shut the kernel down cleanly, then stop (SIGINT / SIGTERM to the nanny)."""
        if not self.supervisor.shutting_down:
            log.info("shutting down the kernel")

            async def nothing_to_reply() -> None:
                pass

            self.journal.spawn(self.supervisor.shutdown(False, None, nothing_to_reply), "shutdown")

    async def _teardown(self) -> None:
        loop = asyncio.get_running_loop()
        inc = self.supervisor.incarnation
        if inc is not None and inc.alive:
            await self.supervisor.terminate_tree(inc)
        await self.journal.cancel_tasks()
        self.supervisor.unwatch_guardian(loop)
        self.output.settle()
        self.output.close_pipes()
        self.journal.event("nanny_stopped", "nanny stopped")
        self.output.close()
        if self.store.spill is not None:
            self.store.spill.close()
        if self.echo is not None:
            self.echo.close()
        assert self.endpoints is not None
        # A nanny that ends with its kernel lets its death report leave first.
        self.endpoints.close(final=self.config.exit_with_kernel)
        self.guardian.close()
        self.journal.state.remove()
        if self.config.owns_connection_file:
            with contextlib.suppress(OSError):
                self.config.connection_file.unlink()

    # ------------------------------------------------------------------ for launchers

    @property
    def kernel_running(self) -> bool:
        return self.supervisor.kernel_alive

    async def interrupt(self) -> bool:
        """Interrupt the kernel as its kernelspec says: SIGINT to its process group, or an
        ``interrupt_request`` on its control channel. False when no kernel runs."""
        if not self.supervisor.kernel_alive:
            return False
        if self.config.spec.interrupt_mode == "message":
            assert self.endpoints is not None  # its reply comes back without identities
            frames = self.session.frames("interrupt_request", {})
            await self.endpoints.to_kernel_control(frames)
            return True
        return self.supervisor.signal_group(signal.SIGINT)

    def signal_kernel(self, signum: int) -> bool:
        """``signum`` to the kernel's process group, as for a ``signal_request``."""
        return self.supervisor.signal_group(signum)

    def signal_tree(self, signum: int) -> int:
        """``signum`` to every process of the kernel's tree, those that left its process
        group included; how many were signalled."""
        return self.supervisor.signal_tree(signum)
