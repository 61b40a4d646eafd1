"""The server's view of its nanny kernels: connection info, history, deaths, a watcher.

A ``Bridge`` belongs to one jupyter_server. For every kernel of its kernel manager that runs
under the nanny-io provisioner it keeps a ``NannyKernel``, which

- reads the kernel's frontend-facing connection file (again whenever the file changes),
- answers one-off history requests with a replay from the nanny's store,
- follows the log channel across reconnections (``channel()``), for the WebSocket follows,
- runs a *watcher* on the ``nanny`` stream that turns every ``kernel_died`` record into a
  jupyter_events event and into the kernel model's ``reason``.

Nothing here blocks the event loop on ZeroMQ: every socket is a ``zmq.asyncio`` socket of
the bridge's own context, closed when its follower ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from nanny_io_proto.connection_files import NannyConnectionInfo, decode_connection_file
from nanny_io_proto.errors import ConnectionFileError, RemoteProtocolError
from nanny_io_proto.logrecords import LogRecord, parse_nanny_event
from nanny_io_proto.replay import ReplayBatch, ReplayEnd, ReplayError, ReplayTruncated
from nanny_io_proto.streams import Stream

from ..discovery import NannyState
from ..subscriber import (
    Alive,
    ClientEvent,
    EpochChanged,
    LogClient,
    NannySilent,
    Records,
    ReplayFailed,
    ReplayUnanswered,
    replay,
)
from ..tail import iso_time, record_json
from ..tasks import OwnedTasks

log = logging.getLogger("nanny_io.serverext")

KERNEL_DIED_SCHEMA_ID = "https://events.nanny-io.org/kernel-died/v1"
KERNEL_DIED_SCHEMA = Path(__file__).parent / "events" / "kernel_died.yaml"
KERNEL_ACTIONS_SCHEMA_ID = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"

#: How long a request waits for a nanny kernel's connection file to name the log channel
#: (the provisioner writes a plain file first; the nanny adds its keys as it starts).
STARTUP_WAIT = 30.0
#: How often the connection file is looked at while waiting for it.
FILE_POLL = 0.05
#: Replay attempts when the nanny says it is busy, and the first pause between them.
BUSY_RETRIES, BUSY_PAUSE = 5, 0.05
#: How long a stopping server lets follows send what they hold.
STOP_GRACE = 2.0


class KernelUnavailable(Exception):
    """A kernel id the bridge cannot serve; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """The history asked for has been delivered: what follows is live."""


@dataclass(frozen=True, slots=True)
class LogPage:
    """What ``GET .../log`` answers (see ``to_json``)."""

    records: list[dict[str, Any]]
    first_seq: int
    last_seq: int
    truncated: bool


def runs_under_nanny(km: Any) -> bool:
    """Whether a KernelManager starts its kernel through the nanny-io provisioner."""
    from ..provisioner import NannyProvisioner

    if isinstance(getattr(km, "provisioner", None), NannyProvisioner):
        return True
    try:  # before launch, only the kernelspec tells
        metadata = getattr(km.kernel_spec, "metadata", None) or {}
    except Exception:  # no kernelspec (a KernelManager given a bare command)
        return False
    return bool(metadata.get("kernel_provisioner", {}).get("provisioner_name") == "nanny-io")


def death_json(rec: LogRecord, event: dict[str, Any]) -> dict[str, Any]:
    """One entry of a kernel's ``deaths``, from its ``kernel_died`` record."""
    return {
        "incarnation": event.get("incarnation", rec.incarnation),
        "time": iso_time(rec.time_ns),
        "exit_code": event.get("exit_code"),
        "signal": event.get("signal"),
        "signal_name": event.get("signal_name"),
        "reason": event.get("reason", ""),
        "last_words": event.get("last_words", []),
        "cause": event.get("cause"),
        "oom": event.get("oom"),
        "peak_memory": event.get("peak_memory"),
        "cell": event.get("cell"),
        "seq": rec.seq,
    }


def nanny_event(rec: LogRecord) -> dict[str, Any] | None:
    """The nanny event a record carries, or None (not a nanny record, or unreadable)."""
    if rec.stream is not Stream.NANNY:
        return None
    try:
        return parse_nanny_event(rec.data)
    except RemoteProtocolError:
        return None


class NannyKernel:
    """One kernel of the server that runs under a nanny."""

    def __init__(self, bridge: Bridge, kernel_id: str, km: Any) -> None:
        self.bridge = bridge
        self.kernel_id = kernel_id
        self.km = km
        self.closed = False
        self.followers: set[Any] = set()  # Follow objects (follow.py), closed with the kernel
        self._info: NannyConnectionInfo | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- connection info ----------------------------------------------------------------------

    @property
    def connection_file(self) -> Path:
        return Path(self.km.connection_file)

    def present(self) -> bool:
        """Whether the server still runs this kernel (the same one: ids may be reused)."""
        return not self.closed and self.bridge.manager_of(self.kernel_id) is self.km

    def _read_info(self) -> NannyConnectionInfo | None:
        """The connection info if the file names a log channel; cached until the file changes."""
        path = self.connection_file
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp and self._info is not None:
                return self._info
            info = decode_connection_file(path.read_bytes())
        except (OSError, ConnectionFileError):
            return None  # not written yet, being replaced, or mid-write
        if not isinstance(info, NannyConnectionInfo) or not info.log_port:
            return None
        self._info, self._stamp = info, stamp
        return info

    async def info(self, wait: float = STARTUP_WAIT) -> NannyConnectionInfo:
        """The current connection info, waiting (at most ``wait`` s) for the nanny to write it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            if not self.present():
                raise KernelUnavailable(404, f"kernel {self.kernel_id!r} was shut down")
            info = self._read_info()
            if info is not None:
                return info
            if loop.time() >= deadline:
                raise KernelUnavailable(
                    503,
                    f"the nanny of kernel {self.kernel_id!r} has not published its log channel "
                    f"in {str(self.connection_file)!r} yet; retry shortly",
                )
            await asyncio.sleep(FILE_POLL)

    def info_changed(self, info: NannyConnectionInfo) -> bool:
        """Whether the connection file now names another log channel than ``info``."""
        now = self._read_info()
        return now is not None and (
            now.url("log") != info.url("log") or now.url("log_replay") != info.url("log_replay")
        )

    def state(self) -> NannyState | None:
        """The nanny's state file (pids, status, incarnation), if it is there."""
        path = NannyState(self.kernel_id, "", "", 0, 0.0).path
        with contextlib.suppress(OSError, ValueError, TypeError):
            return NannyState.load(path)
        return None

    # -- history ------------------------------------------------------------------------------

    async def _replay(self, **request: Any) -> AsyncGenerator[Any, None]:
        """One replay answer, retrying while the nanny is busy; KernelUnavailable if it is gone."""
        info = await self.info()
        pause = BUSY_PAUSE
        for attempt in range(BUSY_RETRIES + 1):
            answers = replay(info, context=self.bridge.context, **request)
            try:
                async for answer in answers:
                    if isinstance(answer, ReplayError):
                        if answer.code == "busy" and attempt < BUSY_RETRIES:
                            break
                        raise KernelUnavailable(
                            503, f"the nanny refused to replay its log: {answer.message}"
                        )
                    yield answer
                else:
                    return
            except ReplayUnanswered as exc:
                raise KernelUnavailable(
                    503, f"the nanny of kernel {self.kernel_id!r} is not answering: {exc}"
                ) from exc
            finally:
                await answers.aclose()
            await asyncio.sleep(pause)
            pause *= 2

    async def read_log(
        self,
        *,
        streams: tuple[Stream, ...] | None,
        since: int | None,
        last: int | None,
        max_records: int,
        max_bytes: int,
    ) -> LogPage:
        """A page of history: ``last`` records, or the records from seq ``since`` on.

        At most ``max_records`` records and about ``max_bytes`` of text: with ``last`` the
        oldest are left out, with ``since`` the newest (``last_seq`` then says where to go on).
        """
        if since is None:
            want = 100 if last is None else last
            cap = min(want, max_records)
            # One more than the cap tells whether the cap left anything out.
            request: dict[str, Any] = {"last": cap + 1 if want > cap else cap}
        else:
            cap = max_records
            request = {"since_seq": since, "limit": max_records}
        kept: deque[tuple[int, dict[str, Any], int]] = deque()
        size, cut = 0, False
        oldest: int | None = None  # set when the store no longer holds the start of the range
        end: ReplayEnd | None = None
        async with contextlib.aclosing(self._replay(streams=streams, **request)) as answers:
            async for answer in answers:
                if isinstance(answer, ReplayTruncated):
                    oldest = answer.oldest_seq
                elif isinstance(answer, ReplayEnd):
                    end = answer
                elif isinstance(answer, ReplayBatch):
                    for rec in answer.records:
                        obj = record_json(rec)
                        cost = len(obj["text"]) + 80  # about what its JSON takes
                        kept.append((rec.seq, obj, cost))
                        size += cost
                        # Too much: the oldest go for `last`, the newest for `since`.
                        while len(kept) > cap or (size > max_bytes and len(kept) > 1):
                            cut = True
                            size -= (kept.popleft() if since is None else kept.pop())[2]
                    if cut and since is not None:
                        break  # the rest of the answer is not wanted
        if since is None:
            last_seq = end.last_seq if end is not None else 0
            first_seq = kept[0][0] if kept else last_seq + 1
            truncated = cut
        else:
            first_seq = oldest or since
            complete = end is not None and end.complete and not cut
            if complete and end is not None:
                last_seq = max(end.last_seq, first_seq - 1)
            else:  # cut by a cap: the next page starts after the last record here
                last_seq = kept[-1][0] if kept else first_seq - 1
            truncated = oldest is not None or not complete
        return LogPage([obj for _, obj, _ in kept], first_seq, last_seq, truncated)

    async def describe(self) -> dict[str, Any]:
        """The nanny's view of the kernel (``GET .../kernels/{id}``)."""
        info = await self.info()
        deaths: list[dict[str, Any]] = []
        end: ReplayEnd | None = None
        answers = self._replay(streams=(Stream.NANNY,), since_seq=1)
        async with contextlib.aclosing(answers):
            async for answer in answers:
                if isinstance(answer, ReplayBatch):
                    for rec in answer.records:
                        event = nanny_event(rec)
                        if event is not None and event.get("event") == "kernel_died":
                            deaths.append(death_json(rec, event))
                elif isinstance(answer, ReplayEnd):
                    end = answer
        state = self.state()
        return {
            "kernel_id": self.kernel_id,
            "kernel_name": getattr(self.km, "kernel_name", ""),
            "status": state.status if state else "unknown",
            "incarnation": state.incarnation if state else None,
            "pid": state.kernel_pid if state else None,
            "nanny_pid": state.nanny_pid if state else None,
            "log_channel": {
                "transport": info.transport,
                "ip": info.ip,
                "log_port": info.log_port,
                "log_replay_port": info.log_replay_port,
                "nanny_protocol_version": info.nanny_protocol_version,
                "epoch": end.epoch if end else None,
                "last_seq": end.last_seq if end else None,
                "followers": len(self.followers),
            },
            "deaths": deaths,
        }

    # -- following ----------------------------------------------------------------------------

    async def channel(
        self,
        *,
        streams: Iterable[Stream] | None,
        since_seq: int | None = None,
        last: int | None = None,
        silent_after: float | None = None,
    ) -> AsyncGenerator[ClientEvent | CaughtUp, None]:
        """Log-channel events of this kernel until it is shut down, across reconnections.

        When the nanny falls silent or the connection file names another log channel, the
        subscription is made again from the new file and goes on after the last seq it
        delivered; if a different nanny (a new epoch) now serves the kernel id, an
        EpochChanged is yielded and its history is followed from seq 1. ``CaughtUp`` comes
        once, after the history asked for.
        """
        wanted = None if streams is None else tuple(streams)
        epoch: str | None = None
        cursor = 0
        announced = retry = False
        params: dict[str, Any] = {"since_seq": since_seq, "last": last}
        while self.present():
            try:
                info = await self.info()
            except KernelUnavailable:
                if not self.present():
                    return
                continue
            extra: dict[str, Any] = {} if silent_after is None else {"silent_after": silent_after}
            client = LogClient(info, streams=wanted, context=self.bridge.context, **params, **extra)
            passed_on = 0
            async with client, contextlib.aclosing(client.events(follow=True)) as events:
                async for event in events:
                    sub = client.subscription
                    if (
                        epoch is not None
                        and sub.epoch not in (None, epoch)
                        and not isinstance(event, EpochChanged)
                    ):
                        # a new nanny behind the same kernel id: start over with its history
                        yield EpochChanged(epoch, sub.epoch)
                        epoch, cursor, params = None, 0, {"since_seq": 1}
                        break
                    if isinstance(event, ReplayFailed) and event.code == "busy" and not announced:
                        # The nanny serves a few replays at a time: ask for the history again
                        # rather than follow without it.
                        await asyncio.sleep(BUSY_PAUSE)
                        retry = True
                        break
                    epoch = sub.epoch or epoch
                    yield event
                    cursor = sub.last_seq
                    if isinstance(event, Records):
                        passed_on += len(event.records)
                    # Caught up once the subscription is, and every record it delivered has
                    # been passed on: the client yields one poll's events one by one, after the
                    # subscription has taken all of them in.
                    if not announced and sub.caught_up and passed_on == sub.statistics().delivered:
                        announced = True
                        yield CaughtUp()
                    if not self.present():
                        return
                    if isinstance(event, (Alive, NannySilent)) and self.info_changed(info):
                        break
            if retry:
                retry = False
            elif epoch is not None:
                params = {"since_seq": cursor + 1}

    def start_watching(self) -> None:
        """Follow the ``nanny`` stream for deaths (once)."""
        if self._watcher is None and not self.closed:
            self._watcher = self.bridge.spawn(self._watch(), f"nanny-io watcher {self.kernel_id}")

    async def _watch(self) -> None:
        channel = self.channel(streams=(Stream.NANNY,), since_seq=1)
        async with contextlib.aclosing(channel):
            async for event in channel:
                if isinstance(event, Records):
                    for rec in event.records:
                        details = nanny_event(rec)
                        if details is not None and details.get("event") == "kernel_died":
                            self._died(rec, details)
        if not self.closed:  # the kernel left the server without a shutdown event
            self.bridge.forget(self.kernel_id)

    def _died(self, rec: LogRecord, event: dict[str, Any]) -> None:
        """A death record: the kernel model's reason, and a jupyter_events event."""
        death = death_json(rec, event)
        with contextlib.suppress(Exception):  # a KernelManager without a `reason` trait
            self.km.reason = f"kernel died: {death['reason']}"
        data = {
            "kernel_id": self.kernel_id,
            "kernel_name": getattr(self.km, "kernel_name", "") or "",
            **death,
        }
        try:
            self.bridge.event_logger.emit(schema_id=KERNEL_DIED_SCHEMA_ID, data=data)
        except Exception:
            log.exception("nanny-io: cannot emit the kernel-died event of %s", self.kernel_id)

    async def close(self) -> None:
        """The kernel is gone: end its followers and its watcher."""
        self.closed = True
        for follower in list(self.followers):
            follower.kernel_gone()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher


class Bridge:
    """All nanny kernels of one jupyter_server."""

    def __init__(self, kernel_manager: Any, event_logger: Any) -> None:
        self.kernel_manager = kernel_manager
        self.event_logger = event_logger
        self.context = zmq.asyncio.Context()
        self.kernels: dict[str, NannyKernel] = {}
        self._tasks = OwnedTasks()  # closings and WebSocket follows
        self.stopped = False

    def register_events(self) -> None:
        """Our schema, and a listener for the server's own kernel actions."""
        from jupyter_events.schema_registry import SchemaRegistryException

        with contextlib.suppress(SchemaRegistryException):  # already there: a second server
            self.event_logger.register_event_schema(KERNEL_DIED_SCHEMA)
        self.event_logger.add_listener(schema_id=KERNEL_ACTIONS_SCHEMA_ID, listener=self._on_action)

    async def _on_action(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        """Watch kernels as they start; forget them when they are shut down."""
        kernel_id = data.get("kernel_id")
        if not kernel_id or data.get("status") != "success" or self.stopped:
            return
        if data.get("action") in ("start", "restart"):
            with contextlib.suppress(KernelUnavailable):
                self.lookup(kernel_id).start_watching()
        elif data.get("action") == "shutdown":
            await self.forget_now(kernel_id)

    def lookup(self, kernel_id: str) -> NannyKernel:
        """The NannyKernel of ``kernel_id``; KernelUnavailable (404) if there is none."""
        kernel = self.kernels.get(kernel_id)
        if kernel is not None and kernel.present():
            return kernel
        if self.stopped:
            raise KernelUnavailable(503, "the server is shutting down")
        km = self.manager_of(kernel_id)
        if km is None:
            raise KernelUnavailable(404, f"no such kernel: {kernel_id!r}")
        if not runs_under_nanny(km):
            name = getattr(km, "kernel_name", "") or "SOURCE"
            raise KernelUnavailable(
                404,
                f"kernel {kernel_id!r} ({name}) does not run under nanny-io; install a "
                f"nanny-io kernelspec with 'nanny-io install {name} --sys-prefix' and start "
                f"the kernel from it ('{name}-nanny')",
            )
        kernel = self.kernels[kernel_id] = NannyKernel(self, kernel_id, km)
        return kernel

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task the bridge owns: awaited (or cancelled) when the server stops."""
        return self._tasks.spawn(coro, name)

    def manager_of(self, kernel_id: str) -> Any:
        """The KernelManager of a kernel of the server, or None."""
        if kernel_id not in self.kernel_manager:
            return None
        return self.kernel_manager.get_kernel(kernel_id)

    def forget(self, kernel_id: str) -> None:
        """Close a kernel's followers and watcher (from synchronous code)."""
        kernel = self.kernels.pop(kernel_id, None)
        if kernel is not None:
            self.spawn(kernel.close(), f"nanny-io closing {kernel_id}")

    async def forget_now(self, kernel_id: str) -> None:
        kernel = self.kernels.pop(kernel_id, None)
        if kernel is not None:
            await kernel.close()

    async def stop(self) -> None:
        """The server is stopping: close everything, then the ZeroMQ context."""
        self.stopped = True
        with contextlib.suppress(Exception):
            self.event_logger.remove_listener(
                schema_id=KERNEL_ACTIONS_SCHEMA_ID, listener=self._on_action
            )
        for kernel_id in list(self.kernels):
            await self.forget_now(kernel_id)
        # Follows send what they hold and end; one whose client does not read is cut off.
        if running := self._tasks.running():
            _, late = await asyncio.wait(running, timeout=STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self.context.destroy(linger=0)

    def open_sockets(self) -> int:
        """ZeroMQ sockets of this bridge that are still open (for leak checks; pyzmq's
        context keeps a weak set of its sockets)."""
        return sum(1 for s in list(getattr(self.context, "_sockets", ())) if not s.closed)
