"""The kernel's supervisor: launching each incarnation, proving it ready, reporting its death,
shutting it down, and ending its whole process tree.

The guardian process spawns every kernel and reports every exit; the supervisor turns those
reports into the lifecycle the journal records (nanny_io.lifecycle) and the messages
frontends receive (specs/protocol.md §8, §9).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil
import zmq

from nanny_io_proto.control import (
    KernelDied,
    KernelRestarted,
    KernelStarted,
    dead_status_content,
    describe_exit,
    exit_details,
    starting_status_content,
)
from nanny_io_proto.deaths import PeakMemory, describe_cause, describe_death
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.messages import encode_message
from nanny_io_proto.streams import Stream

from .attribution import Attribution
from .capture import KernelOutput
from .cgroups import OomWatch
from .deathwatch import CellWatch, last_words, sample_tree_memory
from .endpoints import Endpoints
from .errors import NannyIOError
from .guardian import GUARDIAN_LOST_STATUS, GuardianHandle, wait_status_to_returncode
from .journal import Journal
from .launcher import KernelSpecInfo, Prelaunch, format_argv, launch_env, make_pipe
from .lifecycle import KernelState
from .signals import SIGNAL_NAMES

log = logging.getLogger("nanny_io")

#: Deaths kept in the state file, and the last words of each (the log keeps everything):
#: a kernel manager reads the file often.
MAX_DEATHS = 10
STATE_LAST_WORDS = 20


class KernelStartError(NannyIOError):
    """The kernel could not be started; the message includes the tail of its stderr."""


@dataclass(frozen=True)
class SupervisorConfig:
    """The supervisor's part of the nanny's configuration."""

    spec: KernelSpecInfo
    kernel_id: str
    kernel_connection_file: Path
    cwd: str | None
    capture: bool
    managed: bool
    exit_with_kernel: bool  # a launcher's nanny ends with its kernel (protocol §8.4)
    shutdown_grace: float  # after shutdown_request, before SIGTERM
    term_grace: float  # after SIGTERM, before SIGKILL
    startup_timeout: float


@dataclass
class Incarnation:
    """One launch of the kernel process."""

    number: int
    pid: int
    exited: asyncio.Future[int]
    started_at: float = field(default_factory=time.time)
    oom: OomWatch | None = None  # its cgroups' out-of-memory counters since it started
    maxrss: int | None = None  # its peak memory, from its wait status's resource usage
    tree_peak: int = 0  # the most its process tree used at once, as sampled
    nanny_killed: bool = False  # the nanny sent it SIGKILL (asked to, or ending its tree)
    ready_seq: int | None = None  # the first log seq after it was proven ready

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def note_tree_memory(self, rss: int) -> None:
        self.tree_peak = max(self.tree_peak, rss)


class Supervisor:
    """Launches, watches and ends the kernel, one incarnation after another."""

    def __init__(
        self,
        config: SupervisorConfig,
        journal: Journal,
        guardian: GuardianHandle,
        endpoints: Endpoints,
        output: KernelOutput,
        attribution: Attribution,
        prelaunched: Prelaunch | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.guardian = guardian
        self.endpoints = endpoints
        self.output = output
        self.attribution = attribution
        self.fifo_path: Path | None = None
        self.incarnation: Incarnation | None = None
        self._prelaunched = prelaunched
        self._spawn_reply: asyncio.Future[dict[str, Any]] | None = None
        # The kernel_info probes of the incarnation starting now, and whether iopub carried a
        # status for one of them: only the new kernel can send that.
        self.probe_ids: set[str] = set()
        self.probe_seen = asyncio.Event()
        self.shutting_down = False
        self._launching = False
        self._death_report: asyncio.Task[None] | None = None
        #: The cells that ran: number, code, start, where their output begins in the log.
        self.cells = CellWatch(journal.store)
        #: The process exit status when the nanny ended with its kernel (exit_with_kernel).
        self.exit_status: int | None = None

    @property
    def busy(self) -> bool:
        """A shutdown or a launch is under way."""
        return self.shutting_down or self._launching

    # ------------------------------------------------------------------ the guardian

    def watch_guardian(self, loop: asyncio.AbstractEventLoop) -> None:
        self.guardian.sock.setblocking(False)
        loop.add_reader(self.guardian.sock, self._guardian_readable)

    def unwatch_guardian(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self.guardian.sock)

    def _guardian_readable(self) -> None:
        while True:
            try:
                event = self.guardian.receive()
            except BlockingIOError:
                return
            if event is None:
                self._guardian_lost()
                return
            kind = event.get("event")
            if kind in ("spawned", "spawn_failed"):
                if self._spawn_reply is not None and not self._spawn_reply.done():
                    self._spawn_reply.set_result(event)
            elif kind == "exited":
                inc = self.incarnation
                status = event.get("status")
                if inc is not None and inc.pid == event.get("pid") and isinstance(status, int):
                    maxrss = event.get("maxrss")
                    if isinstance(maxrss, int) and maxrss > 0:
                        inc.maxrss = maxrss
                    self._on_exit(inc, wait_status_to_returncode(status))

    def _guardian_lost(self) -> None:
        """Someone killed the guardian. Its orphans, the kernel trees, are the nanny's
        children now (the nanny is a subreaper too): end them, then stop with an error."""
        log.error(
            "the guardian process (pid %d) was killed; ending the kernel tree and stopping",
            self.guardian.pid,
        )
        self.unwatch_guardian(asyncio.get_running_loop())
        self.guardian.adopt_orphans()
        self.exit_status = GUARDIAN_LOST_STATUS
        self.shutting_down = True  # no death report and no restart: the nanny is stopping
        self.journal.spawn(self._reap_adopted(), "reap-adopted")
        self.journal.stop.set()

    async def _reap_adopted(self) -> None:
        """Do the lost guardian's work: notice when the kernel process exits."""
        while True:
            for pid, status in self.guardian.reap_adopted().items():
                inc = self.incarnation
                if inc is not None and inc.pid == pid:
                    self._on_exit(inc, wait_status_to_returncode(status))
            await asyncio.sleep(0.02)

    def _on_exit(self, inc: Incarnation, returncode: int) -> None:
        if inc.exited.done():
            return
        inc.exited.set_result(returncode)
        if not self.shutting_down:
            self._death_report = self.journal.spawn(
                self._report_death(inc, returncode), "report-death"
            )

    # ------------------------------------------------------------------ launching

    async def launch(self) -> Incarnation:
        """Start the next incarnation and wait until it answers kernel_info."""
        loop = asyncio.get_running_loop()
        number = self.journal.incarnations + 1
        # The kernel's own `starting` goes out before any subscription reaches it.
        await self.endpoints.publish("status", starting_status_content())
        pre, self._prelaunched = self._prelaunched, None
        if pre is not None:  # the first incarnation, started by the CLI before we existed
            argv, out_r, err_r, reply = pre.argv, pre.stdout_fd, pre.stderr_fd, pre.reply
        else:
            env = launch_env(self.config.spec, self.fifo_path, self.config.capture)
            argv = format_argv(self.config.spec, str(self.config.kernel_connection_file))
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
                f"cannot start kernel {self.config.spec.name!r} ({' '.join(argv)}): "
                f"{reply.get('error')}"
            )
        pid = int(reply["pid"])
        inc = Incarnation(number, pid, loop.create_future())
        inc.oom = OomWatch.of(pid)
        self.incarnation = inc
        self.journal.incarnations = number
        self.output.attach_pipes(loop, out_r, err_r)
        self.attribution.new_incarnation()
        self.probe_ids.clear()
        self.probe_seen.clear()
        self.journal.enter(
            KernelState.STARTING, incarnation=number, pid=pid, started_at=inc.started_at
        )
        self.journal.spawn(
            sample_tree_memory(self.guardian.pid, inc.exited, inc.note_tree_memory),
            "memory-sampler",
        )
        if not await self._wait_ready(inc):
            return await self._not_ready(inc)
        watch = OomWatch.of(pid)  # a kernel may have moved itself into a cgroup of its own
        if inc.alive and inc.oom is not None and watch.levels != inc.oom.levels:
            inc.oom = watch
        self.endpoints.heartbeat.resume()
        self.cells.quiet()  # its start-up output is nobody's last words
        inc.ready_seq = self.journal.store.last_seq + 1
        self.journal.enter(KernelState.RUNNING)
        event: KernelStarted | KernelRestarted
        if number == 1:
            event, kind = KernelStarted(number, pid), "kernel_started"
            text = f"kernel started (pid {pid})"
        else:
            event, kind = KernelRestarted(number, pid), "kernel_restarted"
            text = f"kernel restarted (incarnation {number}, pid {pid})"
        await self.endpoints.publish(kind, event.to_content())
        self.journal.event(kind, text, **event.to_content())
        log.info("kernel %s (incarnation %d, pid %d) is ready", self.config.kernel_id, number, pid)
        return inc

    async def _not_ready(self, inc: Incarnation) -> Incarnation:
        """A launch that did not become ready: a start error, or a death to report."""
        self.output.settle()
        name = self.config.spec.name
        if inc.alive:
            await self.terminate_tree(inc)
            raise KernelStartError(
                f"kernel {name!r} did not answer kernel_info within "
                f"{self.config.startup_timeout:g} s{self._stderr_tail()}"
            )
        if inc.number == 1:
            exit_code, signum, signame = exit_details(inc.exited.result(), SIGNAL_NAMES)
            raise KernelStartError(
                f"kernel {name!r} {describe_exit(exit_code, signum, signame)} "
                f"during startup{self._stderr_tail()}"
            )
        return inc  # a restarted kernel that died at once is reported as a death

    def _stderr_tail(self) -> str:
        lines = [text for _, text in self.journal.store.tail_text(streams=(Stream.STDERR,))]
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
        session = self.endpoints.session
        sock = self.endpoints.kernel_socket(zmq.DEALER, "shell")
        deadline = time.monotonic() + self.config.startup_timeout
        replies = 0
        try:
            while inc.alive and time.monotonic() < deadline:
                probe = session.message("kernel_info_request", {})
                self.probe_ids.add(probe.msg_id)
                await sock.send_multipart(encode_message(probe, session.signer))
                recv = asyncio.ensure_future(sock.recv_multipart())
                waiting: set[asyncio.Future[Any]] = {recv, inc.exited}
                done, _ = await asyncio.wait(
                    waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                if recv not in done:
                    recv.cancel()
                    continue
                try:
                    msg = session.decode(recv.result())
                except RemoteProtocolError:
                    continue
                if msg.msg_type != "kernel_info_reply":
                    continue
                # Shell answers; iopub must be connected too, or the first cell's output
                # would be published before the nanny's subscription reached the kernel.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.probe_seen.wait(), 0.1)
                    return True
                replies += 1  # (the next probe's status will come through)
                if replies >= 20:  # a kernel that publishes no status for kernel_info
                    log.debug("no iopub status for kernel_info; taking the kernel as ready")
                    return True
            return False
        finally:
            sock.close(linger=0)

    async def relaunch(
        self, reply: Callable[[KernelStarted | KernelRestarted | str], Awaitable[None]]
    ) -> None:
        """Launch the next incarnation for a ``launch_request``; ``reply`` with what started,
        or with the reason it did not."""
        self._launching = True
        try:
            if self._death_report is not None:
                await asyncio.shield(self._death_report)
            self.output.close_pipes()
            self.journal.enter(KernelState.RESTARTING)
            try:
                inc = await self.launch()
            except KernelStartError as exc:
                log.error("%s", exc)
                state = self.journal.state
                state.exit_code = state.exit_signal = None
                state.exit_reason = f"failed to start: {exc}"
                self.journal.enter(KernelState.DEAD)
                await reply(str(exc))
                return
        finally:
            self._launching = False
        await reply(
            KernelStarted(inc.number, inc.pid)
            if inc.number == 1
            else KernelRestarted(inc.number, inc.pid)
        )

    # ------------------------------------------------------------------ death

    async def _report_death(self, inc: Incarnation, returncode: int) -> None:
        """Store every last byte, clean up the tree, then tell everyone how the kernel died.

        Everything the kernel wrote before it died is in the pipes: it is drained into the
        store (and to frontends) before the death is announced, so the announcement is the
        last word, with the kernel's own last words inside it.
        """
        nanny_killed = inc.nanny_killed  # before the stragglers are killed below
        self.output.drain()
        await self.kill_remaining()
        self.output.settle()  # what the killed stragglers wrote too
        await self._flush_kernel_iopub()
        parent = self.attribution.flush_for_death()
        died = self._diagnose(inc, returncode, parent.get("msg_id"), nanny_killed)
        reason = died.reason
        log.error("kernel %s (incarnation %d) %s", self.config.kernel_id, inc.number, reason)
        self.endpoints.heartbeat.pause()
        state = self.journal.state
        state.exit_code, state.exit_signal, state.exit_reason = died.exit_code, died.signal, reason
        kept = {"time": time.time(), **died.to_content()}
        kept["last_words"] = kept["last_words"][-STATE_LAST_WORDS:]  # the log has them all
        state.deaths = [*state.deaths, kept][-MAX_DEATHS:]
        self.journal.event("kernel_died", f"kernel died: {reason}", priority=3, **died.to_content())
        # Frontends that know nothing of kernel_died still show a stream: say it there too.
        await self.endpoints.publish(
            "stream", {"name": "stderr", "text": death_notice(died)}, parent
        )
        await self.endpoints.publish("kernel_died", died.to_content(), parent)
        if not self.config.managed:
            # Final for frontends (JupyterLab drops its connection). Under a kernel manager
            # the manager decides: jupyter_server tells browsers `restarting` or `dead`.
            await self.endpoints.publish("status", dead_status_content(), parent)
        self.attribution.forget_request()
        # Last: a kernel manager polling the state file learns of the death only now, so a
        # restart it decides on comes after the report.
        self.journal.enter(KernelState.DEAD)
        if self.config.exit_with_kernel:  # as a shell reports it: the code, or 128 + signal
            signum, code = died.signal, died.exit_code
            self.exit_status = 128 + signum if signum else (code or 0) & 0xFF
            self.journal.stop.set()

    def _diagnose(
        self, inc: Incarnation, returncode: int, msg_id: str | None, nanny_killed: bool
    ) -> KernelDied:
        """Everything known about a death: the wait status, an out-of-memory kill, the peak
        memory, the cell that was running and what was written since it started."""
        exit_code, signum, name = exit_details(returncode, SIGNAL_NAMES)
        base = describe_exit(exit_code, signum, name)
        killed = name == "SIGKILL" or exit_code == 137
        oom = None
        checked = False
        if killed and not nanny_killed and inc.oom is not None:
            oom, checked = inc.oom.check(), inc.oom.checkable
        cause = describe_cause(
            base, name, exit_code, oom=oom, oom_checked=checked, nanny_killed=nanny_killed
        )
        tree = max(inc.tree_peak, inc.maxrss or 0)
        peak = PeakMemory(inc.maxrss, tree or None)
        running = self.cells.running(msg_id)
        cell, since = running if running is not None else (None, None)
        reason = describe_death(cause, oom=oom, peak=peak, cell=cell)
        words = last_words(self.journal.store, inc.number, since, inc.ready_seq)
        return KernelDied(
            exit_code,
            signum,
            name,
            inc.number,
            reason,
            words.lines,
            cause=cause,
            oom=oom,
            peak_memory=peak,
            cell=cell,
        )

    async def _flush_kernel_iopub(self, limit: float = 0.25) -> None:
        """Let the forwarder pass on what the dead kernel published before it died.

        The exit is noticed at once, possibly before the kernel's last iopub messages (its
        ``busy`` for the fatal request, its last output) are forwarded; a death report must
        come after them. Waits until the socket has been quiet for 20 ms, at most ``limit``.
        """
        sock = self.endpoints.kernel_iopub
        deadline = time.monotonic() + limit
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            waiting = cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN
            self.endpoints.kick(sock)  # reading EVENTS may have taken the pump's wake-up
            if waiting:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 0.02:
                return
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ ending the tree

    async def kill_remaining(self) -> None:
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

    async def terminate_tree(self, inc: Incarnation) -> None:
        """SIGTERM the whole tree, give it ``term_grace``, then SIGKILL what is left."""
        inc.nanny_killed = True
        for proc in self.guardian.descendants():
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(inc.exited), self.config.term_grace)
        await self.kill_remaining()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(inc.exited), 5.0)

    def signal_group(self, signum: int) -> bool:
        """Signal the kernel's process group, as jupyter_client's local provisioner does;
        False when no kernel runs."""
        inc = self.incarnation
        if inc is None or not inc.alive:
            return False
        if signum == signal.SIGKILL:
            inc.nanny_killed = True
        try:
            os.killpg(inc.pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            os.kill(inc.pid, signum)
        return True

    def signal_tree(self, signum: int) -> int:
        """``signum`` to every process of the kernel's tree, those that left its process
        group included; how many were signalled."""
        count = 0
        if signum == signal.SIGKILL and self.incarnation is not None:
            self.incarnation.nanny_killed = True
        for proc in self.guardian.descendants():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signum)
                count += 1
        return count

    @property
    def kernel_alive(self) -> bool:
        return self.incarnation is not None and self.incarnation.alive

    async def shutdown(
        self,
        restart: bool,
        forward: list[bytes] | None,
        on_stopped: Callable[[], Awaitable[None]],
    ) -> None:
        """Shut the kernel down (and relaunch it when ``restart``), whatever it takes.

        ``forward`` is the frontend's own verified request, passed to the kernel as it came
        (None: the nanny asks itself); ``on_stopped`` runs once the kernel is gone, before any
        relaunch (it sends the reply the kernel did not).
        """
        if self.shutting_down:
            return
        self.shutting_down = True
        inc = self.incarnation
        try:
            if inc is not None and inc.alive:
                self.journal.enter(KernelState.SHUTTING_DOWN)
                session = self.endpoints.session
                frames = forward or session.frames("shutdown_request", {"restart": restart})
                await self.endpoints.to_kernel_control(frames)
                try:
                    await asyncio.wait_for(asyncio.shield(inc.exited), self.config.shutdown_grace)
                except asyncio.TimeoutError:
                    log.warning(
                        "kernel did not exit within %gs of shutdown_request; "
                        "terminating its process tree",
                        self.config.shutdown_grace,
                    )
                    await self.terminate_tree(inc)
            await self.kill_remaining()
            # Stored now, so the last output keeps this incarnation's number.
            self.output.settle()
            await on_stopped()
            self.output.close_pipes()
            if inc is not None:
                self.journal.event(
                    "kernel_stopped",
                    f"kernel stopped on request (incarnation {inc.number})",
                    incarnation=inc.number,
                    restart=restart,
                )
            if not restart or self.config.exit_with_kernel:
                self.journal.stop.set()
            elif self.config.managed:
                # The manager launches the next incarnation (launch_request) when it decides to.
                self.endpoints.heartbeat.pause()
                self.journal.enter(KernelState.STOPPED)
            else:
                self.journal.enter(KernelState.RESTARTING)
                self.shutting_down = False  # a death of the new incarnation is reported
                await self.launch()
        finally:
            if restart:
                self.shutting_down = False


def death_notice(died: KernelDied) -> str:
    """What a frontend shows in the cell when the kernel died: why, and its last words."""
    text = f"\n[nanny-io] the kernel died: {died.reason}\n"
    if died.last_words:
        text += "[nanny-io] its last words:\n" + "".join(
            f"    {words[1]}\n" for words in died.last_words
        )
    return text
