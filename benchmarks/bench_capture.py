#!/usr/bin/env python3
"""Capture benchmark: what the nanny's I/O path costs and sustains, next to ipykernel's own.

Seven measurements in one run, each on its own nanny (``nanny-io start``, a subprocess):

1. **fd output to a frontend.** A cell does ``os.write(1, chunk)`` of 1 KiB lines; an
   unmodified jupyter_client ``BlockingKernelClient`` counts the ``stream`` text it receives.
   Timed from sending execute_request until every byte has arrived (and the request's
   ``status: idle``). Through the nanny (kernelspec with ``capture_stdstreams`` and ipykernel's
   ``capture_fd_output`` off) vs ipykernel's own ``capture_fd_output`` started directly by a
   ``KernelManager`` with default settings (its stdout, where ipykernel echoes captured
   output, is /dev/null). Interleaved (direct, nanny, nanny, direct, ...). Bytes parented to
   another request are counted and reported: without output delimiters (``--delimiters``
   loads nanny_io.kernelside into the nanny's kernel) attribution is approximate.
   **The frontend's ceiling** is measured in the same interleaving: a bare publisher process
   (``--publisher``, internal) sends ready-made signed ``stream`` messages (1 MiB and 256 KiB
   of text each, built with jupyter_client's Session before the clock starts) to the same
   client loop; the nanny's rate is reported as a fraction of the better of the two.
2. **Log-FIFO ingest.** The kernel writes 100-byte lines to ``$JUPYTER_KERNEL_LOG``; timed
   until the store holds them all. Observed twice: by a raw SUB socket that reads only the
   headers of the published batches (so the nanny also packs and publishes), and with no live
   subscriber at all, by polling the replay socket (``last=0`` answers the store's last seq).
3. **Fan-out.** The same kind of burst followed by 1, 16 and 64 ``BlockingLogClient``
   subscribers, each in its own process: time until every one has every record.
4. **Replay** of 1 000 000 records to a late joiner: a raw DEALER decoding every answer with
   ``decode_replay_response``, and a ``BlockingLogClient(since_seq=...)``.
5. **Nanny RSS** while 1 GiB of stdout goes through a nanny with ``--ring-size 64M --no-spill
   -q`` to a frontend that reads it: after 128 MiB, 256 MiB, 512 MiB and 1 GiB, plus the peak.
6. **CPU seconds per MB** captured: the nanny process's user+system time (psutil) divided by
   the bytes, for the stdout path (measurements 1 and 5) and the log FIFO path (2).
7. **Nobody watching**: the same fd output with no frontend subscribed to iopub (a client
   with a shell channel only); the kernel times its own writes, next to the same code
   writing into a bare pipe that a reader drains.

Prints a table and, last, one JSON line ``{"benchmark": "capture", ...}``. Every nanny,
kernel and subscriber is stopped at the end, also on Ctrl-C or an error; survivors are
reported (and killed), and the exit status is 2 when there were any.

``--subscriber`` and ``--publisher`` are internal: the fan-out's subscriber processes and
the ceiling's bare publisher run this script with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import benchkit
import psutil
import zmq
from benchkit import BenchmarkError, ProcessTracker

from nanny_io.testing import NannyProcess
from nanny_io.zap import secure_client

MiB = 1 << 20
MB = 1e6
LOG_LINE = 100  # bytes per log-FIFO line, newline included
FD_LINE = 1024  # bytes per stdout line, newline included
READY_TIMEOUT = 60.0  # seconds for a kernel to answer wait_for_ready
SETTLE = 3.0  # seconds of iopub silence after idle before missing bytes are declared lost
#: Message sizes of the frontend's ceiling (bare publisher of ready-made stream messages).
CEILING_SIZES = (1 << 20, 256 << 10)
TARGET_FD_OF_CEILING = 0.8  # nanny fd output / the frontend's ceiling
TARGET_CPU_MS_PER_MB_STDOUT = 2.0
TARGET_CPU_MS_PER_MB_LOG = 3.0
TARGET_INGEST_LINES_S = 2_000_000
TARGET_REPLAY_S = 1.0
TARGET_UNWATCHED_MB_S = 500.0  # a kernel's stdout rate with nobody watching
RSS_SLACK = 64 * MiB  # target: nanny RSS <= ring size + this
CAPTURE_SPEC = "bench-capture-nanny"  # ipykernel with capture_fd_output off, capture opt-in
DIRECT_SPEC = "bench-capture-direct"  # ipykernel with its default settings


def say(args: argparse.Namespace, text: str) -> None:
    if not args.json_only:
        print(f"... {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- environment


def make_jupyter_env(workdir: Path, delimiters: bool) -> None:
    """Private runtime and kernelspec dirs (inherited by every process started later).

    ``delimiters``: the nanny's kernel loads nanny_io.kernelside, which writes output
    delimiters around every cell (exact attribution, specs/output-sync.md 5.2).
    """
    data = workdir / "data"
    extension = ["--IPKernelApp.extensions=nanny_io.kernelside"] if delimiters else []
    specs = {
        CAPTURE_SPEC: {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.capture_fd_output=False", *extension],
            "metadata": {"capture_stdstreams": True},
        },
        DIRECT_SPEC: {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                               "{connection_file}"]},
    }
    for name, spec in specs.items():
        path = data / "kernels" / name
        path.mkdir(parents=True)
        (path / "kernel.json").write_text(
            json.dumps({"display_name": name, "language": "python", **spec}))
    os.environ["JUPYTER_RUNTIME_DIR"] = str(workdir / "runtime")
    os.environ["JUPYTER_PATH"] = str(data)
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    # ipykernel does not capture fd output under pytest: kernels must not think they are in it.
    os.environ.pop("PYTEST_CURRENT_TEST", None)


# ---------------------------------------------------------------------- kernels


def start_nanny(options: Sequence[str], workdir: Path, tracker: ProcessTracker,
                stack: contextlib.ExitStack,
                checkout: str | Path | None = None) -> tuple[NannyProcess, Any]:
    """A nanny running the capture kernelspec (from ``checkout``, else this process's
    nanny-io), and a ready BlockingKernelClient to it."""
    from jupyter_client.blocking.client import BlockingKernelClient

    connection_file = workdir / f"nanny-{uuid.uuid4().hex[:8]}.json"
    nanny = benchkit.start_nanny(
        [CAPTURE_SPEC, "--connection-file", str(connection_file), *options], tracker, stack,
        checkout=checkout)
    kc = BlockingKernelClient()
    kc.load_connection_file(str(nanny.connection_file))
    kc.start_channels()
    stack.callback(kc.stop_channels)
    kc.wait_for_ready(timeout=READY_TIMEOUT)
    tracker.add_tree(nanny.pid)
    return nanny, kc


def start_direct(workdir: Path, tracker: ProcessTracker, stack: contextlib.ExitStack) -> Any:
    """ipykernel with default settings under a plain KernelManager; a ready client to it."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=DIRECT_SPEC)
    log = open(workdir / f"direct-{uuid.uuid4().hex[:8]}.log", "wb")  # noqa: SIM115
    stack.callback(log.close)
    stack.callback(lambda: km.shutdown_kernel(now=False) if km.has_kernel else None)
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=log)
    pid = getattr(km.provisioner, "pid", None)
    if isinstance(pid, int):
        tracker.add_tree(pid)
    kc = km.client()
    kc.start_channels()
    stack.callback(kc.stop_channels)
    kc.wait_for_ready(timeout=READY_TIMEOUT)
    return kc


# ---------------------------------------------------------------------- cells


def fd_cell(total: int, chunk: int, line: int = FD_LINE) -> str:
    """Code writing ``total`` bytes of 1 KiB ASCII lines to fd 1, ``chunk`` bytes per write."""
    return (
        "import os as _os\n"
        f"_c = (b'x' * {line - 1} + b'\\n') * max(1, {chunk // line})\n"
        f"_n, _r = divmod({total}, len(_c))\n"
        "for _b in [_c] * _n + [_c[:_r]]:\n"
        "    _m = memoryview(_b)\n"
        "    while _m:\n"
        "        _m = _m[_os.write(1, _m):]\n"
    )


def log_cell(lines: int) -> str:
    """Code writing ``lines`` 100-byte lines to $JUPYTER_KERNEL_LOG in 64 000-byte writes."""
    return (
        "import os as _os\n"
        "_fd = _os.open(_os.environ['JUPYTER_KERNEL_LOG'], _os.O_WRONLY)\n"
        f"_l = b'y' * {LOG_LINE - 1} + b'\\n'\n"
        f"_n, _r = divmod({lines}, 640)\n"
        "for _b in [_l * 640] * _n + [_l * _r]:\n"
        "    _m = memoryview(_b)\n"
        "    while _m:\n"
        "        _m = _m[_os.write(_fd, _m):]\n"
        "_os.close(_fd)\n"
    )


@dataclass
class CellRun:
    seconds: float  # execute_request sent .. all bytes (and idle) received
    received: int  # stdout stream bytes received, whatever their parent
    messages: int  # stdout stream messages received
    misattributed: int  # of ``received``, bytes parented to another request
    frontend_cpu_s: float  # this process's CPU meanwhile (the client and its channel thread)


def _check_reply(kc: Any, msg_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            reply = kc.get_shell_msg(timeout=1)
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            content = reply["content"]
            if content.get("status") != "ok":
                tb = "\n".join(content.get("traceback", []))
                raise BenchmarkError(f"cell failed: {content.get('ename')}: "
                                     f"{content.get('evalue')}\n{tb}")
            return
    raise BenchmarkError("no execute_reply within 30 s")


def run_counting(kc: Any, code: str, expected: int, timeout: float = 600.0) -> CellRun:
    """Execute ``code``; count stdout stream bytes until ``expected`` and idle have arrived.

    Nothing else runs on the kernel, so every stdout byte arriving after the request was sent
    is its output; bytes parented to another request (approximate attribution without
    delimiters, specs/output-sync.md 5.1) are counted, and reported as misattributed. Output
    is ASCII, so characters are bytes. When idle came and the count stays short for SETTLE
    seconds, the rest is taken as lost (reported, not raised).
    """
    drain_iopub(kc)  # anything left over from before
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    msg_id = kc.execute(code, silent=False, store_history=False)
    run = count_output(kc, msg_id, expected, t0, cpu0, timeout)
    _check_reply(kc, msg_id)
    return run


def drain_iopub(kc: Any) -> None:
    """Drop whatever iopub messages are already there."""
    while True:
        try:
            kc.get_iopub_msg(timeout=0.01)
        except queue.Empty:
            break


def count_output(kc: Any, msg_id: str, expected: int, t0: float, cpu0: float,
                 timeout: float = 600.0) -> CellRun:
    """The client loop of every fd measurement: count stdout ``stream`` text from ``t0``
    until ``expected`` bytes and the ``status: idle`` parented to ``msg_id`` have arrived."""
    received = messages = misattributed = 0
    idle = False
    done_at = last_heard = t0
    while not (idle and received >= expected):
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            now = time.perf_counter()
            if idle and now - last_heard > SETTLE:
                break
            if now - t0 > timeout:
                raise BenchmarkError(f"cell output incomplete after {timeout:g} s "
                                     f"({received} of {expected} bytes)") from None
            continue
        ours = msg["parent_header"].get("msg_id") == msg_id
        kind = msg["msg_type"]
        if kind == "stream" and msg["content"].get("name") == "stdout":
            size = len(msg["content"]["text"])
            received += size
            misattributed += 0 if ours else size
            messages += 1
            last_heard = done_at = time.perf_counter()
        elif ours and kind == "status" and msg["content"].get("execution_state") == "idle":
            idle = True
            last_heard = done_at = time.perf_counter()
    cpu = time.process_time() - cpu0
    return CellRun(done_at - t0, received, messages, misattributed, cpu)


# ---------------------------------------------------------------------- 1b: the frontend's ceiling


class BarePublisher:
    """The most an unmodified frontend can ingest: ready-made signed ``stream`` messages.

    A process of its own (``--publisher``) binds an iopub socket; for each run it builds
    every message first (jupyter_client's Session: signed, serialized, distinct ids, as the
    digest history demands), says ``ready``, and on ``go`` sends them back to back, then a
    ``status: idle``. The same ``count_output`` loop counts them on a BlockingKernelClient.
    """

    def __init__(self, tracker: ProcessTracker, stack: contextlib.ExitStack) -> None:
        from jupyter_client.blocking.client import BlockingKernelClient

        key = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--publisher", key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stack.callback(self.close)
        tracker.add_tree(self.proc.pid)
        port = int(self._line())
        self.kc = kc = BlockingKernelClient()
        kc.load_connection_info({"transport": "tcp", "ip": "127.0.0.1", "iopub_port": port,
                                 "key": key, "signature_scheme": "hmac-sha256"})
        kc.start_channels(shell=False, stdin=False, hb=False, control=False)
        stack.callback(kc.stop_channels)
        if self._line() != "subscribed":
            raise BenchmarkError("the bare publisher saw no subscription")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchmarkError("the bare publisher exited")
        return line.strip()

    def _say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def run(self, total: int, size: int, line: int = FD_LINE) -> CellRun:
        msg_id = uuid.uuid4().hex
        self._say(f"{msg_id} {total} {size} {line}")
        if self._line() != "ready":
            raise BenchmarkError("the bare publisher did not get ready")
        drain_iopub(self.kc)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        self._say("go")
        return count_output(self.kc, msg_id, total, t0, cpu0)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def publisher_main(key: str) -> int:
    """``--publisher KEY``: the bare publisher's side (see BarePublisher)."""
    from jupyter_client.session import Session

    session = Session(key=key.encode())
    ctx: zmq.Context[Any] = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.sndhwm = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    pub.recv()  # the frontend's subscription
    print("subscribed", flush=True)
    messages: list[list[bytes]] = []
    for command in sys.stdin:
        if command.strip() == "go":
            for frames in messages:
                pub.send_multipart(frames, copy=False)
            continue
        msg_id, total, size, length = command.split()
        line = b"x" * (int(length) - 1) + b"\n"
        parent = session.msg_header("execute_request")
        parent["msg_id"] = msg_id
        text = (line * (int(size) // len(line) + 1)).decode()
        messages = []
        for offset in range(0, int(total), int(size)):
            chunk = text[: min(int(size), int(total) - offset)]
            msg = session.msg("stream", {"name": "stdout", "text": chunk}, parent=parent)
            messages.append(session.serialize(msg))
        msg = session.msg("status", {"execution_state": "idle"}, parent=parent)
        messages.append(session.serialize(msg))
        print("ready", flush=True)
    pub.close(linger=1000)
    ctx.term()
    return 0


# ---------------------------------------------------------------------- 1: fd throughput


@dataclass
class FdResult:
    expected: int  # bytes per run
    # "direct", "nanny", and "ceiling-<message bytes>" for each of CEILING_SIZES
    runs: dict[str, list[CellRun]] = field(default_factory=dict)
    nanny_cpu_s: float = 0.0  # nanny CPU over its timed runs
    nanny_bytes: int = 0

    def mb_s(self, path: str) -> float:
        return statistics.median(r.received / r.seconds for r in self.runs[path]) / MB

    def lost(self, path: str) -> int:
        return sum(max(0, self.expected - r.received) for r in self.runs[path])

    def misattributed(self, path: str) -> int:
        return sum(r.misattributed for r in self.runs[path])

    def frontend_cpu_per_mb(self, path: str) -> float:
        runs = self.runs[path]
        return sum(r.frontend_cpu_s for r in runs) / (sum(r.received for r in runs) / MB)


def measure_fd(args: argparse.Namespace, workdir: Path, tracker: ProcessTracker) -> FdResult:
    total, chunk = args.fd_mib * MiB, args.fd_chunk_kib * 1024
    result = FdResult(expected=total)
    with contextlib.ExitStack() as stack:
        say(args, "fd output: starting ipykernel directly and a nanny")
        clients = {"direct": start_direct(workdir, tracker, stack)}
        nanny, clients["nanny"] = start_nanny(args.nanny_options, workdir, tracker, stack)
        publisher = BarePublisher(tracker, stack)
        for kc in clients.values():  # warm-up: imports, first allocation of buffers
            run_counting(kc, fd_cell(MiB, chunk, args.fd_line), MiB)
        for size in CEILING_SIZES:
            publisher.run(MiB, size, args.fd_line)
        code = fd_cell(total, chunk, args.fd_line)
        paths = ["direct", "nanny", *(f"ceiling-{size}" for size in CEILING_SIZES)]
        for i in range(args.fd_reps):
            for path in paths if i % 2 == 0 else paths[::-1]:
                cpu0 = nanny.cpu_seconds()
                if path.startswith("ceiling-"):
                    run = publisher.run(total, int(path.partition("-")[2]), args.fd_line)
                else:
                    run = run_counting(clients[path], code, total)
                if path == "nanny":
                    result.nanny_cpu_s += nanny.cpu_seconds() - cpu0
                    result.nanny_bytes += run.received
                if not run.received:
                    raise BenchmarkError(f"{path}: the frontend received no output at all")
                result.runs.setdefault(path, []).append(run)
                say(args, f"  {path}: {run.received / run.seconds / MB:7.1f} MB/s "
                          f"({run.messages} messages, {run.received}/{total} bytes, "
                          f"{run.misattributed} parented to another request)")
    return result


# ---------------------------------------------------------------------- 2-4: the log channel


class SeqWatcher:
    """A raw SUB to the log channel reading only headers: the store's last log seq, live.

    It subscribes as the project's LogClient does: to the signed ``log`` topic, then, when a
    tick says the nanny offers unsigned batches on its CurveZMQ channel, to ``curve.log``
    instead (specs/log-channel.md 4.3), so the nanny does the work a real subscriber costs.
    """

    def __init__(self, ctx: zmq.Context[Any], info: Any) -> None:
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.rcvhwm = 0
        for topic in (b"log", b"tick"):
            self.sock.subscribe(topic)
        secure_client(self.sock, info, "log")
        self.sock.connect(info.url("log"))
        self.last = -1
        self.batches = 0
        self.curve = False  # following the unsigned curve.log topic

    def _take(self, timeout_ms: int) -> bool:
        if not self.sock.poll(timeout_ms):
            return False
        frames = self.sock.recv_multipart()
        header = json.loads(frames[2])
        if header["type"] == "tick":
            self.last = max(self.last, header["last_seqs"]["log"])
            if header.get("curve_batches") and not self.curve:
                self.curve = True
                self.sock.subscribe(b"curve.log")
                self.sock.unsubscribe(b"log")
        else:
            self.last = max(self.last, header["last_seq"])
            self.batches += 1
        return True

    def wait_for(self, seq: int, timeout: float) -> float:
        """perf_counter() when a header showed ``seq`` stored."""
        deadline = time.monotonic() + timeout
        while self.last < seq:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"log seq {self.last} < {seq} after {timeout:g} s")
            self._take(100)
        return time.perf_counter()

    def close(self) -> None:
        self.sock.close(linger=0)


class ReplayProbe:
    """A raw DEALER on the replay socket: asks for history and decodes every answer."""

    def __init__(self, ctx: zmq.Context[Any], info: Any) -> None:
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvhwm = 0
        secure_client(self.sock, info, "log_replay")
        self.sock.connect(info.url("log_replay"))
        self.signer = info.make_signer()

    def request(self, timeout: float = 60.0, **fields: Any) -> tuple[int, int]:
        """(records decoded, end.last_seq) of one replay request."""
        from nanny_io_proto.replay import (
            ReplayBatch,
            ReplayEnd,
            ReplayError,
            ReplayRequest,
            decode_replay_response,
            encode_replay_request,
        )

        rid = uuid.uuid4().hex
        req = ReplayRequest(request_id=rid, nonce=uuid.uuid4().hex, **fields)
        self.sock.send_multipart(encode_replay_request(req, self.signer))
        count = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(100):
                continue
            item = decode_replay_response(self.sock.recv_multipart(), self.signer)
            if item.request_id != rid:
                continue
            if isinstance(item, ReplayBatch):
                count += len(item.records)
            elif isinstance(item, ReplayEnd):
                return count, item.last_seq
            elif isinstance(item, ReplayError):
                raise BenchmarkError(f"replay refused: {item.code}: {item.message}")
        raise BenchmarkError(f"replay answer incomplete after {timeout:g} s")

    def close(self) -> None:
        self.sock.close(linger=0)


@dataclass
class IngestRun:
    lines: int
    seconds: float

    @property
    def lines_s(self) -> float:
        return self.lines / self.seconds

    @property
    def mb_s(self) -> float:
        return self.lines * LOG_LINE / self.seconds / MB


def ingest_published(kc: Any, watcher: SeqWatcher, probe: ReplayProbe, lines: int) -> IngestRun:
    """Burst into the FIFO; timed until a published batch header shows the last line."""
    target = probe.request(last=0)[1] + lines
    t0 = time.perf_counter()
    msg_id = kc.execute(log_cell(lines), store_history=False)
    t1 = watcher.wait_for(target, timeout=max(60.0, lines / 20_000))
    _check_reply(kc, msg_id)
    return IngestRun(lines, t1 - t0)


def ingest_unobserved(kc: Any, probe: ReplayProbe, lines: int) -> IngestRun:
    """Burst with no live subscriber; polls the store's last seq by replay every 10 ms."""
    _, base = probe.request(last=0)
    t0 = time.perf_counter()
    msg_id = kc.execute(log_cell(lines), store_history=False)
    deadline = time.monotonic() + max(60.0, lines / 20_000)
    while probe.request(last=0)[1] < base + lines:
        if time.monotonic() > deadline:
            raise BenchmarkError("log lines did not all reach the store")
        time.sleep(0.01)
    t1 = time.perf_counter()
    _check_reply(kc, msg_id)
    return IngestRun(lines, t1 - t0)


@dataclass
class FanoutRun:
    subscribers: int
    lines: int
    seconds: float  # burst start .. the last subscriber has every record
    lost: int  # records reported lost (Gap) by subscribers

    @property
    def records_s(self) -> float:
        return self.subscribers * self.lines / self.seconds


class Subscribers:
    """``count`` processes each following the log with a BlockingLogClient (``--subscriber``)."""

    def __init__(self, count: int, connection_file: Path, since_seq: int, expect: int,
                 tracker: ProcessTracker) -> None:
        self.lines: queue.Queue[tuple[int, str]] = queue.Queue()
        self.procs: list[subprocess.Popen[bytes]] = []
        cmd = [sys.executable, os.path.abspath(__file__), "--subscriber", str(connection_file),
               "--since-seq", str(since_seq), "--expect", str(expect)]
        for i in range(count):
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    start_new_session=True)
            self.procs.append(proc)
            tracker.add_tree(proc.pid)
            threading.Thread(target=self._pump, args=(i, proc), daemon=True).start()

    def _pump(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.lines.put((index, raw.decode(errors="replace").strip()))
        self.lines.put((index, "exit"))

    def collect(self, want: str, timeout: float) -> list[str]:
        """One line starting with ``want`` from every subscriber."""
        got: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            try:
                index, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchmarkError(f"only {len(got)} of {len(self.procs)} subscribers said "
                                     f"{want!r} within {timeout:g} s") from None
            if line == "exit" and index in got:
                continue  # said it, then finished
            if line == "exit":
                code = self.procs[index].wait()
                raise BenchmarkError(f"subscriber {index} exited with {code} before saying "
                                     f"{want!r}")
            if line.startswith(want):
                got[index] = line
            elif line:
                raise BenchmarkError(f"subscriber {index} said {line!r}, expected {want!r}")
        return list(got.values())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fanout(kc: Any, nanny: NannyProcess, probe: ReplayProbe, count: int, lines: int,
           tracker: ProcessTracker) -> FanoutRun:
    since = probe.request(last=0)[1] + 1
    subs = Subscribers(count, nanny.connection_file, since, lines, tracker)
    try:
        subs.collect("ready", timeout=60 + count)
        t0 = time.time()
        msg_id = kc.execute(log_cell(lines), store_history=False)
        done = [json.loads(line.split(" ", 1)[1])
                for line in subs.collect("done", timeout=120 + count * lines / 50_000)]
        _check_reply(kc, msg_id)
    finally:
        subs.stop()
    return FanoutRun(count, lines, max(d["time"] for d in done) - t0,
                     sum(d["lost"] for d in done))


def subscriber_main(connection_file: str, since_seq: int, expect: int) -> int:
    """A fan-out subscriber: says ready, counts log records from ``since_seq``, says done."""
    from nanny_io.discovery import load_connection_info
    from nanny_io.subscriber import BlockingLogClient, Gap, Records
    from nanny_io_proto.streams import Stream

    info = load_connection_info(Path(connection_file))
    got = lost = 0
    ready = False
    with BlockingLogClient(info, streams=[Stream.LOG], since_seq=since_seq) as client:
        for event in client.events(follow=True):
            if not ready:
                print("ready", flush=True)
                ready = True
            if isinstance(event, Records):
                got += len(event.records)
            elif isinstance(event, Gap):
                lost += event.last_missing - event.first_missing + 1
            if got + lost >= expect:
                break
    print("done " + json.dumps({"time": time.time(), "got": got, "lost": lost}), flush=True)
    return 0


@dataclass
class ReplayRun:
    records: int
    raw_seconds: float
    client_seconds: float


def replay(info: Any, probe: ReplayProbe, count: int) -> ReplayRun:
    """``count`` newest records to a late joiner: raw DEALER, then BlockingLogClient."""
    from nanny_io.subscriber import BlockingLogClient, Records

    _, last = probe.request(last=0)
    since = last - count + 1
    if since < 1:
        raise BenchmarkError(f"the store holds only {last} records, not {count}")
    t0 = time.perf_counter()
    got, _ = probe.request(since_seq=since, until_seq=last, timeout=120)
    raw = time.perf_counter() - t0
    if got != count:
        raise BenchmarkError(f"raw replay returned {got} of {count} records (ring too small?)")
    t0 = time.perf_counter()
    got = 0
    with BlockingLogClient(info, since_seq=since) as client:
        for event in client.events(follow=False):
            if isinstance(event, Records):
                got += len(event.records)
    client_s = time.perf_counter() - t0
    if got < count:
        raise BenchmarkError(f"BlockingLogClient replay delivered {got} of {count} records")
    return ReplayRun(count, raw, client_s)


@dataclass
class LogResult:
    ingest: IngestRun
    ingest_unobserved: IngestRun
    cpu_s: float  # nanny CPU over the published ingest
    fanout: list[FanoutRun]
    replay: ReplayRun


def measure_log(args: argparse.Namespace, workdir: Path, tracker: ProcessTracker) -> LogResult:
    from nanny_io.discovery import load_connection_info

    with contextlib.ExitStack() as stack:
        say(args, f"log channel: starting a nanny with --ring-size {args.log_ring}")
        options = ["--ring-size", args.log_ring, *args.nanny_options]
        nanny, kc = start_nanny(options, workdir, tracker, stack)
        info = load_connection_info(nanny.connection_file)
        ctx: zmq.Context[Any] = zmq.Context()
        stack.callback(ctx.term)
        probe = ReplayProbe(ctx, info)
        stack.callback(probe.close)
        run_counting(kc, log_cell(10_000), 0)  # warm-up
        watcher = SeqWatcher(ctx, info)
        stack.callback(watcher.close)
        cpu0 = nanny.cpu_seconds()
        ingest = ingest_published(kc, watcher, probe, args.log_lines)
        cpu = nanny.cpu_seconds() - cpu0
        say(args, f"  ingest with a live subscriber: {ingest.lines_s:,.0f} lines/s "
                  f"({watcher.batches} batches seen)")
        # The replay wants the newest records all log lines: measure it right after a burst.
        if args.log_lines < args.replay_records:
            ingest_published(kc, watcher, probe, args.replay_records - args.log_lines)
        watcher.close()  # no live subscriber from here on
        rep = replay(info, probe, args.replay_records)
        say(args, f"  replay of {rep.records:,} records: raw {rep.raw_seconds:.2f} s, "
                  f"BlockingLogClient {rep.client_seconds:.2f} s")
        quiet = ingest_unobserved(kc, probe, args.log_lines)
        say(args, f"  ingest with no subscriber: {quiet.lines_s:,.0f} lines/s")
        runs = []
        for count in args.fanout:
            run = fanout(kc, nanny, probe, count, args.fanout_lines, tracker)
            say(args, f"  fan-out to {count}: {run.seconds:.2f} s, "
                      f"{run.records_s:,.0f} records/s aggregate, {run.lost} lost")
            runs.append(run)
    return LogResult(ingest, quiet, cpu, runs, rep)


# ---------------------------------------------------------------------- 5: memory


@dataclass
class RssResult:
    ring: int
    base: int  # after start and a 1 MiB warm-up
    curve: list[tuple[int, int]]  # (bytes written so far, RSS after it)
    peak: int
    cpu_s: float
    bytes: int
    lost: int
    misattributed: int
    seconds: float


class PeakSampler:
    """Samples a process's RSS every 20 ms in a thread; keeps the peak."""

    def __init__(self, sample: Callable[[], int]) -> None:
        self._sample = sample
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._sample())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure_rss(args: argparse.Namespace, workdir: Path, tracker: ProcessTracker) -> RssResult:
    ring = args.rss_ring_mib * MiB
    total = args.rss_mib * MiB
    chunk = args.fd_chunk_kib * 1024
    with contextlib.ExitStack() as stack:
        say(args, f"memory: {args.rss_mib} MiB of stdout through a nanny with "
                  f"--ring-size {args.rss_ring_mib}M --no-spill -q")
        options = ["--ring-size", f"{args.rss_ring_mib}M", "--no-spill", "-q"]
        nanny, kc = start_nanny(options, workdir, tracker, stack)
        run_counting(kc, fd_cell(MiB, chunk), MiB)
        base = nanny.rss()
        sampler = PeakSampler(nanny.rss)
        stack.callback(sampler.stop)
        cpu0 = nanny.cpu_seconds()
        written = received = misattributed = 0
        seconds = 0.0
        curve = []
        for point in (total // 8, total // 4, total // 2, total):
            run = run_counting(kc, fd_cell(point - written, chunk), point - written)
            written, received, seconds = point, received + run.received, seconds + run.seconds
            misattributed += run.misattributed
            curve.append((written, nanny.rss()))
            say(args, f"  after {written // MiB} MiB: RSS {curve[-1][1] / MiB:.0f} MiB "
                      f"({run.received / run.seconds / MB:.0f} MB/s)")
        cpu = nanny.cpu_seconds() - cpu0
        sampler.stop()
    return RssResult(ring, base, curve, max(sampler.peak, *(r for _, r in curve)), cpu, written,
                     written - received, misattributed, seconds)


# ---------------------------------------------------------------------- 7: nobody watching


def timed_fd_cell(total: int, chunk: int) -> str:
    """``fd_cell`` timed by the writer itself: ``_rate`` is its MB/s."""
    return ("import time as _t\n_t0 = _t.perf_counter()\n" + fd_cell(total, chunk)
            + f"_rate = {total} / (_t.perf_counter() - _t0) / 1e6\n")


@dataclass
class UnwatchedResult:
    nanny_mb_s: list[float]  # the kernel's own write rate, per run
    raw_pipe_mb_s: list[float]  # the same code writing into a pipe drained by a reader
    nanny_cpu_s: float
    bytes: int


def measure_unwatched(args: argparse.Namespace, workdir: Path,
                      tracker: ProcessTracker) -> UnwatchedResult:
    """A kernel writing to stdout with no frontend subscribed to iopub: how fast it writes
    (timed in the cell), next to the same code writing into a bare pipe."""
    from jupyter_client.blocking.client import BlockingKernelClient

    total, chunk = args.fd_mib * MiB, args.fd_chunk_kib * 1024
    code = timed_fd_cell(total, chunk)
    result = UnwatchedResult([], [], 0.0, 0)
    with contextlib.ExitStack() as stack:
        say(args, "fd output with nobody watching: a nanny, no iopub subscriber")
        nanny, watcher = start_nanny([], workdir, tracker, stack)
        watcher.stop_channels()
        kc = BlockingKernelClient()
        kc.load_connection_file(str(nanny.connection_file))
        kc.start_channels(iopub=False, stdin=False, hb=False, control=False)
        stack.callback(kc.stop_channels)
        for i in range(args.fd_reps + 1):  # the first run warms up
            cpu0 = nanny.cpu_seconds()
            msg_id = kc.execute(code, silent=False, store_history=False,
                                user_expressions={"rate": "_rate"})
            reply = kc.get_shell_msg(timeout=600)
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = kc.get_shell_msg(timeout=600)
            if reply["content"].get("status") != "ok":
                raise BenchmarkError(f"unwatched cell failed: {reply['content']}")
            rate = float(reply["content"]["user_expressions"]["rate"]["data"]["text/plain"])
            if i:
                result.nanny_mb_s.append(rate)
                result.nanny_cpu_s += nanny.cpu_seconds() - cpu0
                result.bytes += total
            pipe = subprocess.Popen(
                [sys.executable, "-c", code + "import sys; print(_rate, file=sys.stderr)"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert pipe.stdout is not None
            while os.read(pipe.stdout.fileno(), 1 << 20):
                pass
            _, err = pipe.communicate(timeout=60)
            if i:
                result.raw_pipe_mb_s.append(float(err))
            say(args, f"  kernel under the nanny: {rate:7.1f} MB/s; "
                      f"into a bare pipe: {float(err):7.1f} MB/s")
    return result


# ---------------------------------------------------------------------- report


def summarize(args: argparse.Namespace, fd: FdResult, log: LogResult, rss: RssResult,
              unwatched: UnwatchedResult, leaked: int) -> dict[str, Any]:
    direct, nanny = fd.mb_s("direct"), fd.mb_s("nanny")
    ceiling = max(fd.mb_s(f"ceiling-{size}") for size in CEILING_SIZES)
    fan = {f"fanout_{r.subscribers}_seconds": r.seconds for r in log.fanout}
    fan |= {f"fanout_{r.subscribers}_records_s": r.records_s for r in log.fanout}
    fan |= {f"fanout_{r.subscribers}_lost": r.lost for r in log.fanout}
    s: dict[str, Any] = {
        "benchmark": "capture",
        "quick": args.quick,
        "spill": not args.no_spill,
        "delimiters": args.delimiters,
        "fd_bytes": args.fd_mib * MiB,
        "fd_chunk_bytes": args.fd_chunk_kib * 1024,
        "fd_line_bytes": args.fd_line,
        "fd_reps": args.fd_reps,
        "fd_direct_mb_s": direct,
        "fd_nanny_mb_s": nanny,
        "fd_ratio": nanny / direct,
        **{f"fd_ceiling_{size}_mb_s": fd.mb_s(f"ceiling-{size}") for size in CEILING_SIZES},
        "fd_ceiling_mb_s": ceiling,
        "fd_of_ceiling": nanny / ceiling,
        "fd_direct_lost_bytes": fd.lost("direct"),
        "fd_nanny_lost_bytes": fd.lost("nanny"),
        "fd_direct_misattributed_bytes": fd.misattributed("direct"),
        "fd_direct_frontend_cpu_s_per_mb": fd.frontend_cpu_per_mb("direct"),
        "fd_nanny_frontend_cpu_s_per_mb": fd.frontend_cpu_per_mb("nanny"),
        "fd_nanny_misattributed_bytes": fd.misattributed("nanny"),
        "fd_nanny_messages_per_run": statistics.median(r.messages for r in fd.runs["nanny"]),
        "fd_direct_messages_per_run": statistics.median(r.messages for r in fd.runs["direct"]),
        "log_lines": args.log_lines,
        "ingest_lines_s": log.ingest.lines_s,
        "ingest_mb_s": log.ingest.mb_s,
        "ingest_unobserved_lines_s": log.ingest_unobserved.lines_s,
        "ingest_unobserved_mb_s": log.ingest_unobserved.mb_s,
        "fanout_lines": args.fanout_lines,
        "fanout_subscribers": [r.subscribers for r in log.fanout],
        **fan,
        "replay_records": log.replay.records,
        "replay_raw_s": log.replay.raw_seconds,
        "replay_client_s": log.replay.client_seconds,
        "rss_ring_bytes": rss.ring,
        "rss_base_bytes": rss.base,
        "rss_curve": [[w, r] for w, r in rss.curve],
        "rss_final_bytes": rss.curve[-1][1],
        "rss_peak_bytes": rss.peak,
        "rss_output_mb_s": rss.bytes / rss.seconds / MB,
        "rss_lost_bytes": rss.lost,
        "rss_misattributed_bytes": rss.misattributed,
        "cpu_s_per_mb_stdout": fd.nanny_cpu_s / (fd.nanny_bytes / MB),
        "cpu_s_per_mb_stdout_rss_run": rss.cpu_s / (rss.bytes / MB),
        "cpu_s_per_mb_log": log.cpu_s / (log.ingest.lines * LOG_LINE / MB),
        "unwatched_mb_s": statistics.median(unwatched.nanny_mb_s),
        "unwatched_raw_pipe_mb_s": statistics.median(unwatched.raw_pipe_mb_s),
        "unwatched_cpu_s_per_mb": unwatched.nanny_cpu_s / (unwatched.bytes / MB),
        "leaked_processes": leaked,
    }
    s["targets_met"] = {
        "fd_of_ceiling": s["fd_of_ceiling"] >= TARGET_FD_OF_CEILING,
        "cpu_stdout": s["cpu_s_per_mb_stdout"] * 1e3 <= TARGET_CPU_MS_PER_MB_STDOUT,
        "cpu_log": s["cpu_s_per_mb_log"] * 1e3 <= TARGET_CPU_MS_PER_MB_LOG,
        "ingest_lines_s": s["ingest_lines_s"] >= TARGET_INGEST_LINES_S,
        "replay_s": s["replay_client_s"] <= TARGET_REPLAY_S,
        "rss": s["rss_peak_bytes"] <= rss.ring + RSS_SLACK,
        "unwatched_mb_s": s["unwatched_mb_s"] >= TARGET_UNWATCHED_MB_S,
    }
    return s


def print_table(s: dict[str, Any]) -> None:
    def ok(key: str) -> str:
        return "ok" if s["targets_met"][key] else "MISSED"

    mib = 1 / MiB
    rows = [
        ("measurement", "result", "target"),
        (f"fd output, ipykernel capture_fd_output ({s['fd_bytes'] // MiB} MiB)",
         f"{s['fd_direct_mb_s']:.1f} MB/s", ""),
        ("fd output through the nanny", f"{s['fd_nanny_mb_s']:.1f} MB/s", ""),
        ("  nanny / ipykernel", f"x{s['fd_ratio']:.2f}", ""),
        *((f"frontend's ceiling: bare publisher, {size // 1024} KiB messages",
           f"{s[f'fd_ceiling_{size}_mb_s']:.1f} MB/s", "") for size in CEILING_SIZES),
        ("  nanny / ceiling", f"{100 * s['fd_of_ceiling']:.0f} %",
         f">= {100 * TARGET_FD_OF_CEILING:.0f} % {ok('fd_of_ceiling')}"),
        ("  stream messages per run (direct / nanny)",
         f"{s['fd_direct_messages_per_run']:.0f} / {s['fd_nanny_messages_per_run']:.0f}", ""),
        ("  bytes lost (direct / nanny)",
         f"{s['fd_direct_lost_bytes']} / {s['fd_nanny_lost_bytes']}", ""),
        ("  bytes parented to the previous request (direct / nanny)",
         f"{s['fd_direct_misattributed_bytes']} / {s['fd_nanny_misattributed_bytes']}", ""),
        (f"log FIFO ingest, live subscriber ({s['log_lines']:,} lines)",
         f"{s['ingest_lines_s']:,.0f} lines/s, {s['ingest_mb_s']:.1f} MB/s",
         f">= {TARGET_INGEST_LINES_S:,} {ok('ingest_lines_s')}"),
        ("log FIFO ingest, no subscriber",
         f"{s['ingest_unobserved_lines_s']:,.0f} lines/s, {s['ingest_unobserved_mb_s']:.1f} MB/s",
         ""),
    ]
    for n in s["fanout_subscribers"]:
        rows.append((f"fan-out to {n} subscriber(s) ({s['fanout_lines']:,} lines)",
                     f"{s[f'fanout_{n}_seconds']:.2f} s, "
                     f"{s[f'fanout_{n}_records_s']:,.0f} rec/s, {s[f'fanout_{n}_lost']} lost", ""))
    rows += [
        (f"replay {s['replay_records']:,} records, raw DEALER", f"{s['replay_raw_s']:.2f} s", ""),
        ("replay, BlockingLogClient late joiner", f"{s['replay_client_s']:.2f} s",
         f"<= {TARGET_REPLAY_S:g} s {ok('replay_s')}"),
        (f"nanny RSS, ring {s['rss_ring_bytes'] // MiB} MiB: at start",
         f"{s['rss_base_bytes'] * mib:.0f} MiB", ""),
    ]
    for written, rss in s["rss_curve"]:
        rows.append((f"  after {written // MiB} MiB of stdout", f"{rss * mib:.0f} MiB", ""))
    rows += [
        ("  peak", f"{s['rss_peak_bytes'] * mib:.0f} MiB",
         f"<= {(s['rss_ring_bytes'] + RSS_SLACK) // MiB} MiB {ok('rss')}"),
        ("  output rate", f"{s['rss_output_mb_s']:.0f} MB/s", ""),
        ("  bytes lost / parented to the previous request",
         f"{s['rss_lost_bytes']} / {s['rss_misattributed_bytes']}", ""),
        ("nanny CPU per MB, stdout to a frontend",
         f"{s['cpu_s_per_mb_stdout'] * 1e3:.2f} ms "
         f"({s['cpu_s_per_mb_stdout_rss_run'] * 1e3:.2f} in the RSS run)",
         f"<= {TARGET_CPU_MS_PER_MB_STDOUT:g} ms {ok('cpu_stdout')}"),
        ("frontend CPU per MB, stdout (direct / nanny)",
         f"{s['fd_direct_frontend_cpu_s_per_mb'] * 1e3:.2f} / "
         f"{s['fd_nanny_frontend_cpu_s_per_mb'] * 1e3:.2f} ms", ""),
        ("fd output with nobody watching: the kernel's write rate",
         f"{s['unwatched_mb_s']:.0f} MB/s",
         f">= {TARGET_UNWATCHED_MB_S:g} MB/s {ok('unwatched_mb_s')}"),
        ("  the same writes into a bare pipe", f"{s['unwatched_raw_pipe_mb_s']:.0f} MB/s", ""),
        ("  nanny CPU per MB meanwhile", f"{s['unwatched_cpu_s_per_mb'] * 1e3:.2f} ms", ""),
        ("nanny CPU per MB, log FIFO (live subscriber)",
         f"{s['cpu_s_per_mb_log'] * 1e3:.2f} ms",
         f"<= {TARGET_CPU_MS_PER_MB_LOG:g} ms {ok('cpu_log')}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    spill = "spill on" if s["spill"] else "--no-spill"
    delimiters = "with" if s["delimiters"] else "without"
    print(f"\nnanny-io capture benchmark ({'quick' if s['quick'] else 'full'}; nannies of "
          f"measurements 1-4: {spill}; kernel {delimiters} output delimiters)")
    for i, (name, value, target) in enumerate(rows):
        print(f"{name.ljust(widths[0])}  {value.rjust(widths[1])}  {target}".rstrip())
        if i == 0:
            print("-" * (sum(widths) + 20))
    if s["leaked_processes"]:
        print(f"WARNING: {s['leaked_processes']} process(es) survived the benchmark")


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes for a CI smoke run (< 60 s)")
    add("--json-only", action="store_true", help="print only the JSON line")
    add("--fd-mib", type=int, default=64, help="MiB written to fd 1 per run (default 64)")
    add("--fd-chunk-kib", type=int, default=64, help="KiB per os.write (default 64)")
    add("--fd-line", type=int, default=FD_LINE, help="bytes per stdout line (default 1024)")
    add("--fd-reps", type=int, default=3, help="runs per path, interleaved (default 3)")
    add("--log-lines", type=int, default=2_000_000, help="lines per ingest burst (default 2M)")
    add("--log-ring", default="512M", help="ring of the log-channel nanny (default 512M)")
    add("--fanout", default="1,16,64", help="subscriber counts (default 1,16,64)")
    add("--fanout-lines", type=int, default=200_000, help="lines per fan-out burst (200k)")
    add("--replay-records", type=int, default=1_000_000, help="records replayed (default 1M)")
    add("--rss-mib", type=int, default=1024, help="MiB of stdout for the RSS curve (1024)")
    add("--rss-ring-mib", type=int, default=64, help="ring of the RSS nanny in MiB (64)")
    add("--no-spill", action="store_true", help="start the nannies of 1-4 with --no-spill")
    add("--delimiters", action="store_true",
        help="the nanny's ipykernel loads nanny_io.kernelside (output delimiters)")
    add("--subscriber", metavar="CONNECTION_FILE", help=argparse.SUPPRESS)
    add("--publisher", metavar="KEY", help=argparse.SUPPRESS)
    add("--since-seq", type=int, default=1, help=argparse.SUPPRESS)
    add("--expect", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.fd_mib, args.fd_reps, args.log_lines = 8, 1, 200_000
        args.fanout, args.fanout_lines, args.replay_records = "1,4", 20_000, 100_000
        args.rss_mib, args.log_ring = 128, "128M"
    try:
        args.fanout = [int(n) for n in args.fanout.split(",") if n.strip()]
    except ValueError:
        parser.error("--fanout takes counts separated by commas, e.g. 1,16,64")
    sizes = (args.fd_mib, args.fd_chunk_kib, args.fd_line - 1, args.fd_reps, args.log_lines,
             args.fanout_lines, args.replay_records, args.rss_mib, args.rss_ring_mib, *args.fanout)
    if min(sizes) < 1:
        parser.error("sizes and counts must be >= 1")
    args.nanny_options = ["--no-spill"] if args.no_spill else []
    return args


def _interrupted(signum: int, frame: object) -> NoReturn:
    """Ctrl-C or SIGTERM: unwind (stopping everything), ignoring further signals meanwhile."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.subscriber:
        return subscriber_main(args.subscriber, args.since_seq, args.expect)
    if args.publisher:
        return publisher_main(args.publisher)
    benchkit.compile_checkout()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)

    def measure(workdir: Path, tracker: ProcessTracker) -> tuple[Any, ...]:
        fd = measure_fd(args, workdir, tracker)
        log = measure_log(args, workdir, tracker)
        rss = measure_rss(args, workdir, tracker)
        unwatched = measure_unwatched(args, workdir, tracker)
        return fd, log, rss, unwatched

    results, status, leaked = benchkit.run_measurement(
        "bench_capture", measure, lambda workdir: make_jupyter_env(workdir, args.delimiters)
    )
    if results is None:
        return status
    summary = summarize(args, *results, leaked=leaked)
    return benchkit.finish(summary, args.json_only, lambda: print_table(summary))


if __name__ == "__main__":
    sys.exit(main())
