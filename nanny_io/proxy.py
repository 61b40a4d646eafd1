"""Control and iopub through the nanny: every control message verified and either acted on
(interrupt, signals, shutdown, launch) or forwarded; the kernel's iopub forwarded to every
frontend, with the statuses that say which cell runs (specs/protocol.md §4 to §6)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any

import zmq

from nanny_io_proto.control import (
    KernelRestarted,
    KernelStarted,
    interrupt_reply_content,
    launch_reply_content,
    parse_shutdown_request,
    parse_signal_request,
    shutdown_reply_content,
    signal_name,
    signal_reply_content,
)
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.messages import Message, peek_header, split_identities

from .attribution import Attribution
from .endpoints import Endpoints
from .iopublog import IopubLog
from .journal import Journal
from .launcher import KernelSpecInfo
from .pump import Pump, send_frames
from .signals import SIGNALS
from .supervisor import Supervisor

log = logging.getLogger("nanny_io")

# The status messages of every kernel that packs JSON as jupyter_client does (ipykernel and
# most others), recognised without parsing their header and content; other spellings are
# parsed. jupyter_client packs with json (", " and ": ") or, when orjson is installed in the
# kernel's environment, with orjson (compact): both are recognised.
_STATUS_HEADERS = (b'"msg_type": "status"', b'"msg_type":"status"')
_STATES = {
    json.dumps({"execution_state": state}, separators=separators).encode(): state
    for state in ("busy", "idle", "starting")
    for separators in ((", ", ": "), (",", ":"))
}


class Proxy:
    """The nanny's control and iopub service."""

    def __init__(
        self,
        spec: KernelSpecInfo,
        journal: Journal,
        endpoints: Endpoints,
        supervisor: Supervisor,
        attribution: Attribution,
        iopub_log: IopubLog | None = None,
    ) -> None:
        self.spec = spec
        self.iopub_log = iopub_log
        self.journal = journal
        self.endpoints = endpoints
        self.session = endpoints.session
        self.supervisor = supervisor
        self.attribution = attribution
        self.stats: dict[str, int] = {"control_rejected": 0, "control_forwarded": 0}
        self._last_rejection_note = -1.0
        self._shutdown_replied: deque[str] = deque(maxlen=64)  # requests the kernel answered
        self._front_iopub: zmq.Socket[Any] = zmq.Socket.shadow(endpoints.iopub.underlying)
        self._kernel_control: Pump | None = None

    def serve(self) -> None:
        """Start serving the frontends (once the first incarnation is ready)."""
        endpoints = self.endpoints
        self.journal.spawn(endpoints.pump(endpoints.control, self._on_control).run(), "control")
        self.journal.spawn(self._serve_iopub_subscriptions(), "iopub-subscriptions")

    def serve_kernel(self) -> None:
        """Start forwarding what the kernel sends (before the first launch: readiness is
        proven by the kernel's iopub)."""
        endpoints = self.endpoints
        self._kernel_control = endpoints.pump(endpoints.kernel_control, self._on_kernel_control)
        self.journal.spawn(self._kernel_control.run(), "kernel-control")
        self.journal.spawn(
            endpoints.pump(endpoints.kernel_iopub, self._on_kernel_iopub).run(), "kernel-iopub"
        )

    # ------------------------------------------------------------------ control

    def _on_control(self, frames: list[bytes]) -> None:
        """Frontend control ROUTER: verify everything, act on nanny messages, forward the rest."""
        try:
            msg = self.session.decode(frames)
        except RemoteProtocolError as exc:
            self._count_rejection(exc)
            return
        try:
            self._handle_control(msg, frames)
        except RemoteProtocolError as exc:
            self.endpoints.reply_error(msg, "ValueError", str(exc))

    def _count_rejection(self, exc: RemoteProtocolError) -> None:
        """Count a dropped control message; say so at most once a second (a flood of garbage
        must not flood the logs), in the nanny's log, the log channel and the state file."""
        self.stats["control_rejected"] += 1
        total = self.stats["control_rejected"]
        now = time.monotonic()
        if now - self._last_rejection_note >= 1.0:
            self._last_rejection_note = now
            log.warning("dropped a control message: %s (%d dropped so far)", exc, total)
            self.journal.event(
                "control_rejected",
                f"dropped a control message: {exc} ({total} dropped so far)",
                priority=4,
                reason=str(exc),
                total=total,
            )
        self.journal.state.rejected_messages = total
        self.journal.save_soon()

    def _handle_control(self, msg: Message, frames: list[bytes]) -> None:
        kind = msg.msg_type
        supervisor = self.supervisor
        if kind == "shutdown_request":
            restart = parse_shutdown_request(msg.content).restart

            async def reply_if_the_kernel_did_not() -> None:
                if msg.msg_id not in self._shutdown_replied:
                    self.endpoints.reply(msg, "shutdown_reply", shutdown_reply_content(restart))

            self.journal.spawn(
                supervisor.shutdown(restart, frames, reply_if_the_kernel_did_not), "shutdown"
            )
            return
        if kind == "launch_request":
            if supervisor.busy or supervisor.kernel_alive:
                self.endpoints.reply_error(msg, "KernelRunning", "the kernel is already running")
                return

            async def reply(outcome: KernelStarted | KernelRestarted | str) -> None:
                if isinstance(outcome, str):
                    self.endpoints.reply_error(msg, "KernelStartError", outcome)
                else:
                    self.endpoints.reply(msg, "launch_reply", launch_reply_content(outcome))

            self.journal.spawn(supervisor.relaunch(reply), "launch")
            return
        if not supervisor.kernel_alive:
            self.endpoints.reply_error(msg, "KernelDead", "the kernel is not running; restart it")
            return
        if kind == "interrupt_request" and self.spec.interrupt_mode != "message":
            supervisor.signal_group(signal.SIGINT)
            self.endpoints.reply(msg, "interrupt_reply", interrupt_reply_content())
            return
        if kind == "signal_request":
            signum = parse_signal_request(msg.content, SIGNALS)
            if not supervisor.signal_group(signum):
                self.endpoints.reply_error(msg, "ProcessLookupError", "the kernel is gone")
                return
            content = signal_reply_content(signum, signal_name(signum, SIGNALS))
            self.endpoints.reply(msg, "signal_reply", content)
            return
        self.stats["control_forwarded"] += 1
        endpoints = self.endpoints
        try:
            send_frames(endpoints.kernel_control, frames)
        except zmq.Again:  # a thousand messages queued for a kernel that does not read
            self.journal.spawn(endpoints.to_kernel_control(frames), "control-backlog")
            return
        endpoints.kick(endpoints.kernel_control)

    def _on_kernel_control(self, frames: list[bytes]) -> None:
        """Kernel control replies back to the frontend that asked (its identity leads)."""
        idents, rest = _safe_split(frames)
        if not idents:
            return  # a reply to the nanny's own request
        control = self.endpoints.control
        send_frames(control, frames)  # ROUTER: routes or drops, never waits
        self.endpoints.kick(control)
        if len(rest) > 2 and b"shutdown_reply" in rest[1]:
            with contextlib.suppress(RemoteProtocolError, ValueError, AttributeError):
                if peek_header(frames).get("msg_type") == "shutdown_reply":
                    self._shutdown_replied.append(json.loads(rest[2]).get("msg_id", ""))

    # ------------------------------------------------------------------ iopub

    def _on_kernel_iopub(self, frames: list[bytes]) -> Awaitable[None] | None:
        """Forward one kernel iopub message to every frontend, watching busy/idle for
        attribution. With capture, a ``status: idle`` waits (and the messages after it) until
        the request's output is out (specs/output-sync.md §4); without, the message leaves
        at once and the looking (the drain for the store included) comes after."""
        _, rest = _safe_split(frames)
        forwarded = False
        if self.attribution.forwarder is None and (
            len(rest) < 5 or b"iopub_welcome" not in rest[1]
        ):
            # Captured output is not forwarded, so nothing the nanny sends on iopub has to go
            # out before this message: it leaves first, and is looked at after (the kernel's
            # own iopub_welcome is the one message not forwarded).
            send_frames(self._front_iopub, frames)  # PUB: never waits, drops at HWM
            forwarded = True
        # A control reply that came in meanwhile (the kernel sends its busy just before it)
        # goes back before this message's bookkeeping: it is what a frontend waits for, and
        # the protocol orders nothing between control and iopub.
        if self._kernel_control is not None:
            self._kernel_control.read_now()
        return self._look_at(frames, rest, forwarded)

    def _look_at(
        self, frames: list[bytes], rest: list[bytes], forwarded: bool
    ) -> Awaitable[None] | None:
        """Status tracking, the pre-idle drain and the iopub log for one kernel message,
        which is then forwarded unless it already was (``forwarded``)."""
        attribution = self.attribution
        # Most messages only pass through: parse a header only when it can matter.
        if len(rest) >= 5 and (b"status" in rest[1] or b"iopub_welcome" in rest[1]):
            header = rest[1]  # (quotes inside a JSON string are escaped)
            if _STATUS_HEADERS[0] in header or _STATUS_HEADERS[1] in header:
                kind = "status"
            else:
                try:
                    kind = json.loads(header).get("msg_type")
                except (ValueError, AttributeError):
                    kind = None
            if kind == "iopub_welcome":
                # Sent when our subscription reached the kernel: iopub is connected.
                self.supervisor.probe_seen.set()
                return None  # the nanny greets its own subscribers
            if kind == "status" and self._track_status(rest) == "idle":
                parent = attribution.idle_parent
                if not attribution.drain_before_idle_now(parent):
                    return self._forward_after_idle_drain(parent, frames, rest, forwarded)
        elif attribution.before_forwarding() and len(rest) >= 5:
            # Output the request wrote to its pipes before this message (say, before its
            # execute_result) goes out first.
            self.supervisor.output.drain()
            assert attribution.forwarder is not None
            attribution.forwarder.flush()
        self._forward_iopub(frames, rest, forwarded)
        return None

    async def _forward_after_idle_drain(
        self, parent: dict[str, Any], frames: list[bytes], rest: list[bytes], forwarded: bool
    ) -> None:
        await self.attribution.drain_before_idle(parent)
        self._forward_iopub(frames, rest, forwarded)

    def _forward_iopub(self, frames: list[bytes], rest: list[bytes], forwarded: bool) -> None:
        # After the drain: the fd output written before this message is stored first.
        iopub_log = self.iopub_log
        if iopub_log is not None and len(rest) >= 5 and iopub_log.wants(rest[1]):
            iopub_log.on_message(rest)
        if not forwarded:
            send_frames(self._front_iopub, frames)  # PUB: never waits, drops at HWM

    def _track_status(self, rest: list[bytes]) -> Any:
        """A status message's execution state, after noting what it says."""
        try:
            parent = json.loads(rest[2])
            state = _STATES.get(rest[4]) or json.loads(rest[4]).get("execution_state")
        except (ValueError, AttributeError):
            return None
        if not isinstance(parent, dict):
            return None
        probes = self.supervisor.probe_ids
        if probes and parent.get("msg_id") in probes:
            self.supervisor.probe_seen.set()
        self.attribution.track_status(parent, state)
        return state

    async def _serve_iopub_subscriptions(self) -> None:
        """Greet each new iopub subscriber (JEP 65) and pass subscriptions to the kernel."""
        iopub = self.endpoints.iopub
        topics = self.endpoints.iopub_topics
        while True:
            event = await iopub.recv()
            if not event or event[0] not in (0, 1):
                continue
            topic = bytes(event[1:])
            # The XPUB is verbose: every subscribe is reported, but only the last
            # unsubscribe of a topic (its last subscriber left), as a set of topics needs.
            if event[0] == 0:
                topics.discard(topic)
                continue
            topics.add(topic)
            idents = (topic,) if topic else ()
            await iopub.send_multipart(
                self.session.frames(
                    "iopub_welcome", {"subscription": topic.decode("utf-8", "replace")}, {}, idents
                )
            )
            if topic:
                self.endpoints.kernel_iopub.send(event, zmq.NOBLOCK)  # XSUB: never waits
                self.endpoints.kick(self.endpoints.kernel_iopub)


def _safe_split(frames: list[bytes]) -> tuple[tuple[bytes, ...], list[bytes]]:
    try:
        return split_identities(frames)
    except RemoteProtocolError:
        return (), []
