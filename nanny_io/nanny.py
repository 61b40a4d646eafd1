"""The nanny: launches the kernel, proxies control and iopub, reports death, shuts down.

One ``Nanny`` per kernel, on the kernel's machine, on one asyncio loop. Shell and stdin are
direct between frontends and the kernel; control and iopub pass through here; the heartbeat
is answered here. Every background task is owned by the nanny and awaited at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq
import zmq.asyncio

from nanny_io_proto.connection_files import (
    ConnectionInfo,
    NannyConnectionInfo,
    encode_connection_file,
    kernel_facing,
)
from nanny_io_proto.control import (
    KernelDied,
    KernelRestarted,
    KernelStarted,
    LastWords,
    dead_status_content,
    describe_exit,
    error_reply_content,
    exit_details,
    interrupt_reply_content,
    launch_reply_content,
    parse_shutdown_request,
    parse_signal_request,
    shutdown_reply_content,
    signal_name,
    signal_reply_content,
    starting_status_content,
)
from nanny_io_proto.delimiters import Begin, End
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.logrecords import nanny_event_data
from nanny_io_proto.messages import Message, encode_message, peek_header, split_identities
from nanny_io_proto.streams import Stream

from .capture import EchoWriter, PipeReader, StreamPipeline
from .discovery import NannyState, write_private
from .errors import NannyIOError
from .forwarding import OutputForwarder
from .guardian import GuardianHandle, wait_status_to_returncode
from .heartbeat import Heartbeat
from .launcher import (
    KernelSpecInfo,
    Prelaunch,
    format_argv,
    launch_env,
    make_log_fifo,
    make_pipe,
)
from .logchannel import REPLAY_SNDHWM, LogChannel
from .session import NannySession
from .store import DEFAULT_MAX_BYTES, DEFAULT_SPILL_BYTES, LogStore, Spill

log = logging.getLogger("nanny_io")

SIGNALS: dict[str, int] = {s.name: int(s.value) for s in signal.Signals}
SIGNAL_NAMES: dict[int, str] = {number: name for name, number in reversed(SIGNALS.items())}
_LOOPBACK_IPS = {"127.0.0.1", "localhost", "::1"}
#: How long output read while no request runs waits for a `busy` that may be on its way.
LIMBO_DELAY = 0.1


class KernelStartError(NannyIOError):
    """The kernel could not be started; the message includes the tail of its stderr."""


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

    @property
    def capture(self) -> bool:
        """Whether captured stdout/stderr go to frontends (the kernelspec opted in)."""
        return self.spec.capture_stdstreams

    @property
    def kernel_id(self) -> str:
        return self.frontend.kernel_id


@dataclass
class Incarnation:
    """One launch of the kernel process."""

    number: int
    pid: int
    exited: asyncio.Future[int]
    readers: list[PipeReader]
    started_at: float = field(default_factory=time.time)

    @property
    def alive(self) -> bool:
        return not self.exited.done()


class Nanny:
    """Runs one kernel under supervision until it is shut down."""

    def __init__(
        self, config: NannyConfig, guardian: GuardianHandle, prelaunched: Prelaunch | None = None
    ) -> None:
        self.config = config
        self._prelaunched = prelaunched
        self.guardian = guardian
        self.spec = config.spec
        self.frontend = config.frontend
        self.session = NannySession(self.frontend.key, self.frontend.signature_scheme)
        ip = self.frontend.ip
        control, iopub, hb = config.kernel_ports
        self.kernel_info: ConnectionInfo = kernel_facing(
            self.frontend, ip=ip, control_port=control, iopub_port=iopub, hb_port=hb
        )
        self.kernel_connection_file = config.private_dir / "kernel.json"
        self.ctx = zmq.asyncio.Context()
        self.incarnation: Incarnation | None = None
        self.incarnations = 0
        self.epoch = uuid.uuid4().hex
        spill = None
        if config.spill_dir is not None:
            spill = Spill(config.spill_dir, epoch=self.epoch, max_total_bytes=config.spill_bytes)
        self.store = LogStore(epoch=self.epoch, max_bytes=config.ring_bytes, spill=spill)
        self.pipelines = {
            stream: StreamPipeline(
                stream,
                self.store,
                incarnation=lambda: self.incarnations,
                on_output=self._on_output,
                on_marker=self._on_marker,
            )
            for stream in (Stream.STDOUT, Stream.STDERR, Stream.LOG)
        }
        self.forwarder = (
            OutputForwarder(self._send_stream, rate_limit=config.rate_limit)
            if config.capture
            else None
        )
        # The foreground nanny shows the kernel's log live (and its output, unless that goes
        # to frontends), as the server's terminal shows a kernel's output today.
        # Under a kernel manager its lines land in the server's log: say whose they are.
        prefix = f"[nanny-io {config.kernel_id[:8]} {{stream}}] " if config.managed else None
        self.echo = EchoWriter(sys.stderr.fileno(), prefix=prefix) if config.echo_output else None
        self.log_channel: LogChannel | None = None
        self.last_parent: dict[str, Any] = {}  # the latest execute_request seen busy
        self._parents: dict[str, dict[str, Any]] = {}  # msg_id -> parent header, bounded
        self._open_markers: dict[Stream, str] = {}  # stream -> msg_id between BEGIN and END
        self._marker_closed = asyncio.Event()
        self._idle_parent: dict[str, Any] = {}
        self._limbo: list[tuple[Stream, bytes]] = []  # output waiting for its request's busy
        self._limbo_timer: asyncio.TimerHandle | None = None
        self.fifo_path: Path | None = None
        self._fifo_reader: PipeReader | None = None
        self._fifo_keep = -1
        self.stats: dict[str, int] = {"control_rejected": 0, "control_forwarded": 0}
        self.current_parent: dict[str, Any] = {}  # the execute_request running now
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_rejection_note = -1.0
        self._stop = asyncio.Event()
        # The kernel_info probes of the incarnation starting now, and whether iopub carried a
        # status for one of them: only the new kernel can send that.
        self._probe_ids: set[str] = set()
        self._probe_seen = asyncio.Event()
        self._shutting_down = False
        self._launching = False
        self._death_report: asyncio.Task[None] | None = None
        self._spawn_reply: asyncio.Future[dict[str, Any]] | None = None
        self._shutdown_replied: deque[str] = deque(maxlen=64)
        self._k_control: zmq.asyncio.Socket | None = None
        self._k_iopub: zmq.asyncio.Socket | None = None
        self._last_state_save = 0.0
        self._state_save_pending = False
        self.state = NannyState(
            kernel_id=config.kernel_id,
            kernel_name=self.spec.name,
            connection_file=str(config.connection_file),
            nanny_pid=os.getpid(),
            nanny_started=psutil.Process().create_time(),
            spill_dir=str(config.spill_dir) if config.spill_dir else None,
        )

    # ------------------------------------------------------------------ sockets

    def _kernel_url(self, channel: str) -> str:
        url = self.kernel_info.url(channel)
        return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//*:", "//127.0.0.1:")

    def _secure(self, sock: zmq.Socket[Any]) -> None:
        """Make a frontend-facing socket a CurveZMQ server when the connection info has keys."""
        if self.frontend.curve_secretkey and self.frontend.curve_publickey:
            sock.curve_secretkey = self.frontend.curve_secretkey.encode()
            sock.curve_publickey = self.frontend.curve_publickey.encode()
            sock.curve_server = True

    def _kernel_socket(self, socket_type: int, channel: str) -> zmq.asyncio.Socket:
        """A socket connected to the kernel; a CurveZMQ client when the kernel is a server."""
        sock = self.ctx.socket(socket_type)
        sock.linger = 0
        if self.frontend.curve_secretkey and self.frontend.curve_publickey:
            sock.curve_secretkey = self.frontend.curve_secretkey.encode()
            sock.curve_publickey = self.frontend.curve_publickey.encode()
            sock.curve_serverkey = self.frontend.curve_publickey.encode()
        sock.connect(self._kernel_url(channel))
        return sock

    def _bind(self, socket_type: int, channel: str, **options: int) -> zmq.asyncio.Socket:
        """A frontend-facing socket; ``options`` are set before bind (some only apply then)."""
        sock = self.ctx.socket(socket_type)
        sock.linger = 1000
        for name, value in options.items():
            setattr(sock, name, value)
        self._secure(sock)
        sock.bind(self.frontend.url(channel))
        return sock

    def _setup_frontend_sockets(self) -> None:
        if (
            self.frontend.transport == "tcp"
            and self.frontend.ip not in _LOOPBACK_IPS
            and not self.frontend.curve_secretkey
        ):
            log.warning(
                "frontend-facing sockets bind to %r without CurveZMQ: messages are signed but "
                "not encrypted; prefer 127.0.0.1 with an SSH tunnel, or provision curve keys",
                self.frontend.ip,
            )
        self.f_control = self._bind(zmq.ROUTER, "control")
        self.f_control.router_mandatory = 0
        self.f_iopub = self._bind(zmq.XPUB, "iopub")
        self.f_iopub.setsockopt(zmq.XPUB_VERBOSE, 1)
        # The log channel is bound now so its ports are fixed for the nanny's life.
        # A subscriber that does not read costs at most this many batches; beyond it PUB
        # drops and the subscriber repairs the gap from replay (specs/log-channel.md).
        self.f_log = self._bind(zmq.XPUB, "log", sndhwm=REPLAY_SNDHWM)
        self.f_log.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscriber, to greet each
        # A small send queue per client: an answer to a client that does not read waits in
        # the store, not in memory (the limit only applies when set before bind).
        self.f_log_replay = self._bind(zmq.ROUTER, "log_replay", sndhwm=REPLAY_SNDHWM)
        self.log_channel = LogChannel(
            self.f_log, self.f_log_replay, self.store, self.session.signer
        )
        self.heartbeat = Heartbeat(
            zmq.Context.shadow(self.ctx.underlying), self.frontend.url("hb"), configure=self._secure
        )
        self.heartbeat.start()

    def _connect_kernel_sockets(self) -> None:
        """The nanny's sockets to the kernel's private control and iopub ports.

        They live as long as the nanny: every incarnation binds the same private ports, so
        ZeroMQ reconnects them by itself (XSUB resends its subscription on reconnect), and no
        socket is closed under a task still reading it.
        """
        self._k_control = self._kernel_socket(zmq.DEALER, "control")
        self._k_iopub = self._kernel_socket(zmq.XSUB, "iopub")
        self._k_iopub.send(b"\x01")  # everything: the nanny forwards and watches it all

    # ------------------------------------------------------------------ task ownership

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal task %s failed", task.get_name(), exc_info=task.exception())
            self._stop.set()

    # ------------------------------------------------------------------ main

    async def run(self) -> int:
        """Serve until the kernel is shut down; the exit status for the CLI."""
        loop = asyncio.get_running_loop()
        if self._prelaunched is None:
            write_private(self.kernel_connection_file, encode_connection_file(self.kernel_info))
        self._setup_frontend_sockets()
        self._open_log_fifo(loop)
        self.guardian.sock.setblocking(False)
        loop.add_reader(self.guardian.sock, self._guardian_readable)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request_stop)
        status = 0
        try:
            self._connect_kernel_sockets()
            assert self.log_channel is not None
            self._spawn(self.log_channel.serve_ticks(), "log-ticks")
            self._spawn(self.log_channel.serve_subscriptions(), "log-subscriptions")
            self._spawn(self.log_channel.serve_replay(), "log-replay")
            self._spawn(self._serve_kernel_control(), "kernel-control")
            self._spawn(self._serve_kernel_iopub(), "kernel-iopub")
            await self._launch()
            self._spawn(self._serve_control(), "control")
            self._spawn(self._serve_iopub_subscriptions(), "iopub-subscriptions")
            await self._stop.wait()
        except KernelStartError as exc:
            log.error("%s", exc)
            status = 1
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await self._teardown()
        return status

    def request_stop(self) -> None:
        """Shut the kernel down cleanly, then stop (SIGINT / SIGTERM to the nanny)."""
        if not self._shutting_down:
            log.info("shutting down the kernel")
            self._spawn(self._shutdown(None, restart=False), "shutdown")

    async def _teardown(self) -> None:
        loop = asyncio.get_running_loop()
        inc = self.incarnation
        if inc is not None and inc.alive:
            await self._terminate_tree(inc)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self.guardian.sock)
        self._settle_output(inc)
        if inc is not None:
            for reader in inc.readers:
                reader.close()
        self._nanny_event("nanny_stopped", "nanny stopped")
        if self._fifo_reader is not None:
            self._fifo_reader.close()
        if self._fifo_keep >= 0:
            os.close(self._fifo_keep)
            self._fifo_keep = -1
        if self.store.spill is not None:
            self.store.spill.close()
        if self.echo is not None:
            self.echo.close()
        self.heartbeat.stop()
        self.ctx.destroy(linger=0)
        self.guardian.close()
        self.state.remove()
        if self.config.owns_connection_file:
            with contextlib.suppress(OSError):
                self.config.connection_file.unlink()

    # ------------------------------------------------------------------ the guardian

    def _guardian_readable(self) -> None:
        while True:
            try:
                event = self.guardian.receive()
            except BlockingIOError:
                return
            if event is None:
                log.error("the guardian process is gone; stopping")
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_reader(self.guardian.sock)
                self._stop.set()
                return
            kind = event.get("event")
            if kind in ("spawned", "spawn_failed"):
                if self._spawn_reply is not None and not self._spawn_reply.done():
                    self._spawn_reply.set_result(event)
            elif kind == "exited":
                inc = self.incarnation
                status = event.get("status")
                if inc is not None and inc.pid == event.get("pid") and isinstance(status, int):
                    self._on_exit(inc, wait_status_to_returncode(status))

    def _on_exit(self, inc: Incarnation, returncode: int) -> None:
        if inc.exited.done():
            return
        inc.exited.set_result(returncode)
        if not self._shutting_down:
            self._death_report = self._spawn(self._report_death(inc, returncode), "report-death")

    # ------------------------------------------------------------------ launching

    # ------------------------------------------------------------------ capture

    def _open_log_fifo(self, loop: asyncio.AbstractEventLoop) -> None:
        """The $JUPYTER_KERNEL_LOG FIFO, open for reading before any kernel starts."""
        pre = self._prelaunched
        if pre is not None:
            path, read_fd, keep_fd = pre.fifo_path, pre.fifo_read_fd, pre.fifo_keep_fd
        else:
            path, read_fd, keep_fd = make_log_fifo(self.config.private_dir)
        self.fifo_path, self._fifo_keep = path, keep_fd
        self._fifo_reader = PipeReader(read_fd, Stream.LOG, self._on_log)
        self._fifo_reader.start(loop)

    def _on_log(self, stream: Stream, data: bytes) -> None:
        self.pipelines[Stream.LOG].feed(stream, data)
        if self.echo is not None:
            self.echo.write(data, stream)

    def _on_output(self, stream: Stream, data: bytes) -> None:
        """Captured stdout/stderr (delimiters removed): to frontends, or echoed locally."""
        if self.forwarder is None:
            if self.echo is not None:
                self.echo.write(data, stream)
            return
        if stream not in self._open_markers and not self.current_parent:
            # No request is known to run, but one may have started: ipykernel sends its
            # `busy` from a thread, so a cell's first output can reach the pipe before the
            # busy reaches us. Hold the output until a busy arrives or LIMBO_DELAY passes.
            self._limbo.append((stream, data))
            if self._limbo_timer is None:
                loop = asyncio.get_running_loop()
                self._limbo_timer = loop.call_later(LIMBO_DELAY, self._resolve_limbo, None)
            return
        self._resolve_limbo(None)
        self._forward(stream, data, self._attribution(stream))

    def _forward(self, stream: Stream, data: bytes, parent: dict[str, Any]) -> None:
        """Output of a request to frontends; output that belongs to no request (the kernel's
        start-up banner) only to the echo, where a kernel's output goes without a nanny."""
        assert self.forwarder is not None
        if parent:
            self.forwarder.add(stream, data, parent)
        elif self.echo is not None:
            self.echo.write(data, stream)

    def _resolve_limbo(self, parent: dict[str, Any] | None) -> None:
        """Attribute held output to ``parent`` (a request that just went busy) or, when none
        came, to the most recent request."""
        if self._limbo_timer is not None:
            self._limbo_timer.cancel()
            self._limbo_timer = None
        if not self._limbo or self.forwarder is None:
            return
        held, self._limbo = self._limbo, []
        for stream, data in held:
            self._forward(stream, data, parent or self.last_parent)

    def _on_marker(self, stream: Stream, marker: Begin | End) -> None:
        if isinstance(marker, Begin):
            self._open_markers[stream] = marker.msg_id
            self._parent_for(marker.msg_id)
        elif self._open_markers.get(stream) == marker.msg_id:
            del self._open_markers[stream]
            self._marker_closed.set()

    def _parent_for(self, msg_id: str) -> dict[str, Any]:
        """The parent header of ``msg_id``: as seen on iopub, or a minimal stand-in."""
        parent = self._parents.get(msg_id)
        if parent is None:
            parent = self._remember_parent({"msg_id": msg_id, "msg_type": "execute_request"})
        return parent

    def _remember_parent(self, parent: dict[str, Any]) -> dict[str, Any]:
        msg_id = parent.get("msg_id", "")
        known = self._parents.get(msg_id)
        if known is not None and len(known) >= len(parent):
            return known
        self._parents[msg_id] = parent
        while len(self._parents) > 256:
            del self._parents[next(iter(self._parents))]
        return parent

    def _attribution(self, stream: Stream) -> dict[str, Any]:
        """Which request produced output read now on ``stream`` (specs/output-sync.md)."""
        msg_id = self._open_markers.get(stream)
        if msg_id is not None:
            return self._parent_for(msg_id)
        return self.current_parent or self.last_parent

    def _send_stream(self, name: str, text: str, parent: dict[str, Any]) -> None:
        frames = self.session.frames("stream", {"name": name, "text": text}, parent)
        self.f_iopub.send_multipart(frames)

    def _drain_output(self, inc: Incarnation | None) -> None:
        """Read everything already in the pipes and push it all the way out."""
        if inc is not None:
            for reader in inc.readers:
                reader.drain()
        if self._fifo_reader is not None:
            self._fifo_reader.drain()

    def _settle_output(self, inc: Incarnation | None) -> None:
        """Everything the kernel wrote so far, stored: pipes drained, partial lines and
        held-back delimiter prefixes released (before a death report, a shutdown, an exit)."""
        self._drain_output(inc)
        for pipeline in self.pipelines.values():
            pipeline.flush()

    async def _drain_before_idle(self, parent: dict[str, Any]) -> None:
        """Forward every byte the request wrote before its ``status: idle`` is forwarded.

        Bytes written before the kernel sent idle are already in the pipes. A kernel that
        writes delimiters gets until its END delimiters arrive (bounded by ``end_wait``).
        """
        inc = self.incarnation
        self._drain_output(inc)
        for stream in (Stream.STDOUT, Stream.STDERR):
            if stream not in self._open_markers:  # a trailing ESC is output, not a delimiter
                self.pipelines[stream].release_held()
        msg_id = parent.get("msg_id")
        deadline = time.monotonic() + self.config.end_wait
        while msg_id in self._open_markers.values() and time.monotonic() < deadline:
            self._marker_closed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._marker_closed.wait(), max(0.0, deadline - time.monotonic())
                )
            self._drain_output(inc)
        for stream, open_id in list(self._open_markers.items()):
            if open_id == msg_id:  # END never came: stop attributing to a finished request
                del self._open_markers[stream]
                self._nanny_event(
                    "delimiter_timeout",
                    f"no END delimiter on {stream.value} for {msg_id} within "
                    f"{self.config.end_wait:g} s; idle released",
                    msg_id=msg_id,
                    stream=stream.value,
                )
        self._resolve_limbo(None)
        if self.forwarder is not None:
            self.forwarder.flush(parent)

    def _nanny_event(self, event: str, text: str, **details: Any) -> None:
        """Record a nanny event on the log channel's ``nanny`` stream."""
        data = nanny_event_data(event, text, kernel_id=self.config.kernel_id, **details)
        self.store.append_one(Stream.NANNY, self.incarnations, time.time_ns(), data)

    async def _launch(self) -> Incarnation:
        """Start the next incarnation and wait until it answers kernel_info."""
        loop = asyncio.get_running_loop()
        number = self.incarnations + 1
        # The kernel's own `starting` goes out before any subscription reaches it.
        await self._publish("status", starting_status_content())
        pre, self._prelaunched = self._prelaunched, None
        if pre is not None:  # the first incarnation, started by the CLI before we existed
            argv, out_r, err_r, reply = pre.argv, pre.stdout_fd, pre.stderr_fd, pre.reply
        else:
            env = launch_env(self.spec, self.fifo_path, self.config.capture)
            argv = format_argv(self.spec, str(self.kernel_connection_file))
            out_r, out_w = make_pipe()
            err_r, err_w = make_pipe()
            self._spawn_reply = loop.create_future()
            try:
                self.guardian.send_spawn(argv, env, self.config.cwd, out_w, err_w)
            finally:
                os.close(out_w)
                os.close(err_w)
            reply = await self._spawn_reply
        if reply.get("event") != "spawned":
            os.close(out_r)
            os.close(err_r)
            raise KernelStartError(
                f"cannot start kernel {self.spec.name!r} ({' '.join(argv)}): {reply.get('error')}"
            )
        pid = int(reply["pid"])
        readers = [
            PipeReader(
                out_r,
                Stream.STDOUT,
                self.pipelines[Stream.STDOUT].feed,
                on_eof=self.pipelines[Stream.STDOUT].flush,
            ),
            PipeReader(
                err_r,
                Stream.STDERR,
                self.pipelines[Stream.STDERR].feed,
                on_eof=self.pipelines[Stream.STDERR].flush,
            ),
        ]
        inc = Incarnation(number, pid, loop.create_future(), readers)
        self.incarnation = inc
        self.incarnations = number
        for reader in readers:
            reader.start(loop)
        self.current_parent = {}
        self.last_parent = {}  # the new kernel's start-up output belongs to no cell
        self._probe_ids.clear()
        self._probe_seen.clear()
        self._save_state("starting", inc)
        ready = await self._wait_ready(inc)
        if not ready:
            self._settle_output(inc)
            if inc.alive:
                await self._terminate_tree(inc)
                raise KernelStartError(
                    f"kernel {self.spec.name!r} did not answer kernel_info within "
                    f"{self.config.startup_timeout:g} s{self._stderr_tail()}"
                )
            if number == 1:
                code = inc.exited.result()
                exit_code, signum, name = exit_details(code, SIGNAL_NAMES)
                raise KernelStartError(
                    f"kernel {self.spec.name!r} {describe_exit(exit_code, signum, name)} "
                    f"during startup{self._stderr_tail()}"
                )
            return inc  # a restarted kernel that died at once is reported as a death
        self.heartbeat.resume()
        self._save_state("running", inc)
        if number == 1:
            event: KernelStarted | KernelRestarted = KernelStarted(number, pid)
            await self._publish("kernel_started", event.to_content())
            self._nanny_event("kernel_started", f"kernel started (pid {pid})", **event.to_content())
        else:
            event = KernelRestarted(number, pid)
            await self._publish("kernel_restarted", event.to_content())
            self._nanny_event(
                "kernel_restarted",
                f"kernel restarted (incarnation {number}, pid {pid})",
                **event.to_content(),
            )
        log.info("kernel %s (incarnation %d, pid %d) is ready", self.config.kernel_id, number, pid)
        if number == 1 and not self.config.managed:
            # The kernel's own banner names its private kernel-facing file; frontends must
            # connect through the nanny.
            log.info("connect frontends with: --existing %s", self.config.connection_file)
        return inc

    def _stderr_tail(self) -> str:
        lines = [text for _, text in self.store.tail_text(streams=(Stream.STDERR,))]
        if not lines:
            return " (it wrote nothing on stderr)"
        return "; last lines of its stderr:\n" + "\n".join(f"    {line}" for line in lines)

    async def _wait_ready(self, inc: Incarnation) -> bool:
        """Probe with kernel_info_request on shell until shell replies and iopub is proven
        connected: a status for one of the probes, or the kernel's welcome for our
        subscription (JEP 65).

        Any other message could be a late one from the previous incarnation and prove
        nothing. False when the kernel exits first or ``startup_timeout`` passes.
        """
        sock = self._kernel_socket(zmq.DEALER, "shell")
        deadline = time.monotonic() + self.config.startup_timeout
        replies = 0
        try:
            while inc.alive and time.monotonic() < deadline:
                probe = self.session.message("kernel_info_request", {})
                self._probe_ids.add(probe.msg_id)
                await sock.send_multipart(encode_message(probe, self.session.signer))
                recv: asyncio.Future[Any] = asyncio.ensure_future(sock.recv_multipart())
                done, _ = await asyncio.wait(
                    {recv, inc.exited}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                if recv in done:
                    try:
                        msg = self.session.decode(recv.result())
                    except RemoteProtocolError:
                        continue
                    if msg.msg_type != "kernel_info_reply":
                        continue
                    # Shell answers; iopub must be connected too, or the first cell's output
                    # would be published before the nanny's subscription reached the kernel.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._probe_seen.wait(), 0.1)
                        return True
                    replies += 1  # (the next probe's status will come through)
                    if replies >= 20:  # a kernel that publishes no status for kernel_info
                        log.debug("no iopub status for kernel_info; taking the kernel as ready")
                        return True
                else:
                    recv.cancel()
            return False
        finally:
            sock.close(linger=0)

    def _save_state(self, status: str, inc: Incarnation | None) -> None:
        self.state.status = status
        if self.log_channel is not None:
            # The tick knows four states; a stopped kernel waits for its manager's restart.
            tick_states = {"shutting-down": "running", "stopped": "restarting"}
            self.log_channel.kernel_state = tick_states.get(status, status)
            self.log_channel.incarnation = self.incarnations
        if inc is not None:
            self.state.kernel_pid = inc.pid
            self.state.incarnation = inc.number
            self.state.started_at = inc.started_at
        self._last_state_save = time.monotonic()
        try:
            self.state.save()
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.state.path, exc)

    # ------------------------------------------------------------------ death and shutdown

    async def _report_death(self, inc: Incarnation, returncode: int) -> None:
        """Store every last byte, clean up the tree, then tell everyone how the kernel died.

        Everything the kernel wrote before it died is in the pipes: it is drained into the
        store (and to frontends) before the death is announced, so the announcement is the
        last word, with the kernel's own last words inside it.
        """
        self._drain_output(inc)
        await self._kill_remaining()
        self._settle_output(inc)  # what the killed stragglers wrote too
        await self._flush_kernel_iopub()
        parent = self._running_parent()
        self._resolve_limbo(parent or None)
        if self.forwarder is not None:
            self.forwarder.flush(parent or self.last_parent)
        exit_code, signum, name = exit_details(returncode, SIGNAL_NAMES)
        reason = describe_exit(exit_code, signum, name)
        words = LastWords.from_tail(self.store.tail_text(incarnation=inc.number))
        died = KernelDied(exit_code, signum, name, inc.number, reason, words.lines)
        log.error("kernel %s (incarnation %d) %s", self.config.kernel_id, inc.number, reason)
        self.heartbeat.pause()
        self.state.exit_code, self.state.exit_signal = exit_code, signum
        self.state.exit_reason = reason
        self._nanny_event("kernel_died", f"kernel died: {reason}", **died.to_content())
        # Frontends that know nothing of kernel_died still show a stream: say it there too.
        await self._publish("stream", {"name": "stderr", "text": death_notice(died)}, parent)
        await self._publish("kernel_died", died.to_content(), parent)
        if not self.config.managed:
            # Final for frontends (JupyterLab drops its connection). Under a kernel manager
            # the manager decides: jupyter_server tells browsers `restarting` or `dead`.
            await self._publish("status", dead_status_content(), parent)
        self.current_parent = {}
        self._open_markers.clear()
        # Last: a kernel manager polling the state file learns of the death only now, so a
        # restart it decides on comes after the report.
        self._save_state("dead", inc)

    def _running_parent(self) -> dict[str, Any]:
        """The request that was running: opened by a BEGIN delimiter, or seen busy on iopub.

        The delimiter comes first: it is written by the kernel's main thread right before the
        code runs, while ipykernel publishes `busy` from a thread that a dying kernel may
        never let send it (a death notice would then land in no cell, or the previous one).
        """
        for msg_id in self._open_markers.values():
            return self._parent_for(msg_id)
        return self.current_parent

    async def _flush_kernel_iopub(self, limit: float = 0.25) -> None:
        """Let the forwarder pass on what the dead kernel published before it died.

        The exit is noticed at once, possibly before the kernel's last iopub messages (its
        ``busy`` for the fatal request, its last output) are forwarded; a death report must
        come after them. Waits until the socket has been quiet for 20 ms, at most ``limit``.
        """
        sock = self._k_iopub
        if sock is None:
            return
        deadline = time.monotonic() + limit
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 0.02:
                return
            await asyncio.sleep(0.005)

    async def _kill_remaining(self) -> None:
        """SIGKILL whatever is left of the kernel trees (orphans included) and wait."""
        for _ in range(200):
            procs = self.guardian.descendants()
            if not procs:
                return
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            await asyncio.sleep(0.01)
        log.warning("processes of the kernel tree survive SIGKILL: %s", self.guardian.descendants())

    async def _terminate_tree(self, inc: Incarnation) -> None:
        """SIGTERM the whole tree, give it ``term_grace``, then SIGKILL what is left."""
        for proc in self.guardian.descendants():
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(inc.exited), self.config.term_grace)
        await self._kill_remaining()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(inc.exited), 5.0)

    async def _shutdown(
        self, request: Message | None, restart: bool, frames: list[bytes] | None = None
    ) -> None:
        """Shut the kernel down (and relaunch it when ``restart``), whatever it takes."""
        if self._shutting_down:
            return
        self._shutting_down = True
        inc = self.incarnation
        try:
            if inc is not None and inc.alive:
                self._save_state("shutting-down", inc)
                assert self._k_control is not None
                if frames is not None:  # the frontend's own request, verified, as it came
                    await self._k_control.send_multipart(frames)
                else:
                    content = {"restart": restart}
                    await self._k_control.send_multipart(
                        self.session.frames("shutdown_request", content)
                    )
                try:
                    await asyncio.wait_for(asyncio.shield(inc.exited), self.config.shutdown_grace)
                except asyncio.TimeoutError:
                    log.warning(
                        "kernel did not exit within %gs of shutdown_request; "
                        "terminating its process tree",
                        self.config.shutdown_grace,
                    )
                    await self._terminate_tree(inc)
            await self._kill_remaining()
            # Stored now, so the last output keeps this incarnation's number.
            self._settle_output(inc)
            if request is not None and request.msg_id not in self._shutdown_replied:
                await self.f_control.send_multipart(
                    self.session.frames(
                        "shutdown_reply",
                        shutdown_reply_content(restart),
                        request,
                        request.identities,
                    )
                )
            if inc is not None:
                for reader in inc.readers:
                    reader.close()
            if inc is not None:
                self._nanny_event(
                    "kernel_stopped",
                    f"kernel stopped on request (incarnation {inc.number})",
                    incarnation=inc.number,
                    restart=restart,
                )
            if not restart:
                self._stop.set()
            elif self.config.managed:
                # The manager launches the next incarnation (launch_request) when it decides to.
                self.heartbeat.pause()
                self._save_state("stopped", inc)
            else:
                self._save_state("restarting", inc)
                self._shutting_down = False  # a death of the new incarnation is reported
                await self._launch()
        finally:
            if restart:
                self._shutting_down = False

    # ------------------------------------------------------------------ channels

    async def _publish(
        self, msg_type: str, content: dict[str, Any], parent: dict[str, Any] | None = None
    ) -> None:
        await self.f_iopub.send_multipart(self.session.frames(msg_type, content, parent or {}))

    async def _serve_control(self) -> None:
        """Frontend control ROUTER: verify everything, act on nanny messages, forward the rest."""
        async for frames in _arrivals(self.f_control):
            try:
                msg = self.session.decode(frames)
            except RemoteProtocolError as exc:
                self._count_rejection(exc)
                continue
            try:
                await self._handle_control(msg, frames)
            except RemoteProtocolError as exc:
                await self._reply_error(msg, "ValueError", str(exc))

    def _count_rejection(self, exc: RemoteProtocolError) -> None:
        """Count a dropped control message; say so at most once a second (a flood of garbage
        must not flood the logs), in the nanny's log, the log channel and the state file."""
        self.stats["control_rejected"] += 1
        total = self.stats["control_rejected"]
        now = time.monotonic()
        if now - self._last_rejection_note >= 1.0:
            self._last_rejection_note = now
            log.warning("dropped a control message: %s (%d dropped so far)", exc, total)
            self._nanny_event(
                "control_rejected",
                f"dropped a control message: {exc} ({total} dropped so far)",
                reason=str(exc),
                total=total,
            )
        self.state.rejected_messages = total
        if self._state_save_pending:
            return
        self._state_save_pending = True
        delay = max(0.0, 1.0 - (time.monotonic() - self._last_state_save))
        asyncio.get_running_loop().call_later(delay, self._deferred_state_save)

    def _deferred_state_save(self) -> None:
        self._state_save_pending = False
        self._save_state(self.state.status, None)

    async def _reply_error(self, msg: Message, ename: str, evalue: str) -> None:
        reply_type = msg.msg_type.replace("_request", "_reply")
        await self.f_control.send_multipart(
            self.session.frames(reply_type, error_reply_content(ename, evalue), msg, msg.identities)
        )

    async def _handle_control(self, msg: Message, frames: list[bytes]) -> None:
        inc = self.incarnation
        kind = msg.msg_type
        if kind == "shutdown_request":
            restart = parse_shutdown_request(msg.content).restart
            self._spawn(self._shutdown(msg, restart, frames), "shutdown")
            return
        if kind == "launch_request":
            if self._shutting_down or self._launching or (inc is not None and inc.alive):
                await self._reply_error(msg, "KernelRunning", "the kernel is already running")
                return
            self._spawn(self._relaunch(msg), "launch")
            return
        if inc is None or not inc.alive:
            await self._reply_error(msg, "KernelDead", "the kernel is not running; restart it")
            return
        if kind == "interrupt_request" and self.spec.interrupt_mode != "message":
            self._signal_group(inc, signal.SIGINT)
            await self.f_control.send_multipart(
                self.session.frames(
                    "interrupt_reply", interrupt_reply_content(), msg, msg.identities
                )
            )
            return
        if kind == "signal_request":
            signum = parse_signal_request(msg.content, SIGNALS)
            if not self._signal_group(inc, signum):
                await self._reply_error(msg, "ProcessLookupError", "the kernel is gone")
                return
            await self.f_control.send_multipart(
                self.session.frames(
                    "signal_reply",
                    signal_reply_content(signum, signal_name(signum, SIGNALS)),
                    msg,
                    msg.identities,
                )
            )
            return
        assert self._k_control is not None
        self.stats["control_forwarded"] += 1
        await self._k_control.send_multipart(frames)

    async def _relaunch(self, request: Message) -> None:
        """Launch the next incarnation for a ``launch_request``; reply once it is ready."""
        self._launching = True
        try:
            if self._death_report is not None:
                await asyncio.shield(self._death_report)
            for reader in self.incarnation.readers if self.incarnation else ():
                reader.close()
            self._save_state("restarting", self.incarnation)
            try:
                inc = await self._launch()
            except KernelStartError as exc:
                log.error("%s", exc)
                self.state.exit_code = self.state.exit_signal = None
                self.state.exit_reason = f"failed to start: {exc}"
                self._save_state("dead", self.incarnation)
                await self._reply_error(request, "KernelStartError", str(exc))
                return
        finally:
            self._launching = False
        launched: KernelStarted | KernelRestarted = (
            KernelStarted(inc.number, inc.pid)
            if inc.number == 1
            else KernelRestarted(inc.number, inc.pid)
        )
        await self.f_control.send_multipart(
            self.session.frames(
                "launch_reply", launch_reply_content(launched), request, request.identities
            )
        )

    def _signal_group(self, inc: Incarnation, signum: int) -> bool:
        """Signal the kernel's process group, as jupyter_client's local provisioner does."""
        try:
            os.killpg(inc.pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            os.kill(inc.pid, signum)
        return True

    async def _serve_kernel_control(self) -> None:
        """Kernel control replies back to the frontend that asked (its identity leads)."""
        sock = self._k_control
        assert sock is not None
        front: zmq.Socket[bytes] = zmq.Socket.shadow(self.f_control.underlying)
        async for frames in _arrivals(sock):
            idents, rest = _safe_split(frames)
            if not idents:
                continue  # a reply to the nanny's own request
            if len(rest) > 2 and b"shutdown_reply" in rest[1]:
                with contextlib.suppress(RemoteProtocolError, ValueError, AttributeError):
                    if peek_header(frames).get("msg_type") == "shutdown_reply":
                        self._shutdown_replied.append(json.loads(rest[2]).get("msg_id", ""))
            front.send_multipart(frames, zmq.NOBLOCK)  # ROUTER: routes or drops, never waits

    async def _serve_kernel_iopub(self) -> None:
        """Forward the kernel's iopub to every frontend, watching busy/idle for attribution."""
        sock = self._k_iopub
        assert sock is not None
        front: zmq.Socket[bytes] = zmq.Socket.shadow(self.f_iopub.underlying)
        async for frames in _arrivals(sock):
            _, rest = _safe_split(frames)
            # Most messages only pass through: parse a header only when it can matter.
            if len(rest) >= 5 and (b"status" in rest[1] or b"iopub_welcome" in rest[1]):
                try:
                    kind = json.loads(rest[1]).get("msg_type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "iopub_welcome":
                    # Sent when our subscription reached the kernel: iopub is connected.
                    self._probe_seen.set()
                    continue  # the nanny greets its own subscribers
                if kind == "status" and self._track_status(rest) == "idle":
                    await self._drain_before_idle(self._idle_parent)
            elif self.forwarder is not None and self.current_parent and len(rest) >= 5:
                # Output the request wrote to its pipes before this message (say, before its
                # execute_result) goes out first.
                self._drain_output(self.incarnation)
                self.forwarder.flush()
            front.send_multipart(frames, zmq.NOBLOCK)  # PUB: never waits, drops at HWM

    def _track_status(self, rest: list[bytes]) -> str | None:
        """Follow busy/idle of execute requests; the execution state seen, if any."""
        try:
            parent = json.loads(rest[2])
            state = json.loads(rest[4]).get("execution_state")
        except (ValueError, AttributeError):
            return None
        if not isinstance(parent, dict):
            return None
        if self._probe_ids and parent.get("msg_id") in self._probe_ids:
            self._probe_seen.set()
        if parent.get("msg_type") == "execute_request":
            parent = self._remember_parent(parent)
            if state == "busy":
                self.current_parent = self.last_parent = parent
                self._resolve_limbo(parent)
            elif state == "idle" and parent.get("msg_id") == self.current_parent.get("msg_id"):
                self.current_parent = {}
        self._idle_parent = parent
        return state if isinstance(state, str) else None

    async def _serve_iopub_subscriptions(self) -> None:
        """Greet each new iopub subscriber (JEP 65) and pass subscriptions to the kernel."""
        while True:
            event = await self.f_iopub.recv()
            if not event or event[0] != 1:
                continue
            topic = bytes(event[1:])
            idents = (topic,) if topic else ()
            await self.f_iopub.send_multipart(
                self.session.frames(
                    "iopub_welcome", {"subscription": topic.decode("utf-8", "replace")}, {}, idents
                )
            )
            if self._k_iopub is not None and topic:
                await self._k_iopub.send(event)


async def _arrivals(sock: zmq.asyncio.Socket) -> AsyncIterator[list[bytes]]:
    """Every message arriving on ``sock``: one wake-up, then all that is queued.

    Receiving through a plain (shadow) socket once the poll fired avoids a future per
    message; on a busy channel that is most of the cost of a hop through the nanny.
    """
    raw: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
    while True:
        await sock.poll()  # POLLIN
        while True:
            try:
                frames = raw.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            yield frames


def death_notice(died: KernelDied) -> str:
    """What a frontend shows in the cell when the kernel died: why, and its last words."""
    text = f"\n[nanny-io] the kernel died: {died.reason}\n"
    if died.last_words:
        text += "[nanny-io] its last words:\n" + "".join(
            f"    {line}\n" for _, line in died.last_words
        )
    return text


def _safe_split(frames: list[bytes]) -> tuple[tuple[bytes, ...], list[bytes]]:
    try:
        return split_identities(frames)
    except RemoteProtocolError:
        return (), []
