"""The log channel against real nannies: live PUB, replay ROUTER, the client library, tail.

Every test starts real ``nanny-io start`` processes with ipykernel and talks to them over real
ZeroMQ sockets (specs/log-channel.md). Records are produced quickly by writing to the
kernel's ``$JUPYTER_KERNEL_LOG`` FIFO from a cell (the ``log`` stream); stdout/stderr writes
produce ``stdout``/``stderr`` records.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil
import pytest
import zmq
import zmq.asyncio
from helpers import NannyProcess, wait_gone

from nanny_io.discovery import load_connection_info
from nanny_io.logchannel import REPLAY_SNDHWM, LogChannel
from nanny_io.store import LogStore
from nanny_io.subscriber import (
    Alive,
    BlockingLogClient,
    LogClient,
    NannySilent,
    Records,
    Truncated,
)
from nanny_io.zap import secure_client
from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.logrecords import (
    NANNY_SILENT_AFTER,
    LogRecord,
    RecordBatch,
    Tick,
    decode_log_message,
)
from nanny_io_proto.replay import (
    ReplayBatch,
    ReplayEnd,
    ReplayError,
    ReplayRequest,
    ReplayResponse,
    ReplayTruncated,
    decode_replay_response,
    encode_replay_request,
)
from nanny_io_proto.signing import Signer
from nanny_io_proto.streams import FLAG_NO_EOL, Stream

pytestmark = pytest.mark.timeout(60)

NannyFactory = Callable[..., NannyProcess]

# Defined in the kernel once per test: fast writers to the log FIFO (the ``log`` stream).
KERNEL_SETUP = r"""
import os, sys, threading, time
_log = open(os.environ["JUPYTER_KERNEL_LOG"], "w", buffering=1 << 20)

def burst(n, prefix, start=0):
    for lo in range(start, start + n, 10000):
        hi = min(start + n, lo + 10000)
        _log.write("".join(f"{prefix} {i}\n" for i in range(lo, hi)))
    _log.flush()

def line(text):
    _log.write(text + "\n")
    _log.flush()

def paced(n, prefix, every, pause, pad=0):
    # Many small flushes: the nanny reads (and publishes) each as its own message.
    tail = " " + "." * pad if pad else ""
    for i in range(n):
        _log.write(f"{prefix} {i}{tail}\n")
        if i % every == every - 1:
            _log.flush()
            time.sleep(pause)
    _log.flush()
"""


# ---------------------------------------------------------------------------------- helpers


def _cell(kc: Any, code: str, timeout: float = 60) -> None:
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", reply["content"]


def _start(factory: NannyFactory, *args: str) -> tuple[NannyProcess, Any, NannyConnectionInfo]:
    """A quiet nanny running python3 with the writers defined; (nanny, client, info)."""
    nanny = factory("python3", "-q", *args)
    kc = nanny.client()
    _cell(kc, KERNEL_SETUP)
    return nanny, kc, load_connection_info(nanny.connection_file)


_ids = iter(range(1, 1 << 30))


def _request(**fields: Any) -> ReplayRequest:
    return ReplayRequest(request_id=f"t{next(_ids)}", nonce=uuid.uuid4().hex, **fields)


class ReplaySocket:
    """A raw DEALER on log_replay_port: send requests or anything else, read answers."""

    def __init__(self, info: NannyConnectionInfo, *, rcvhwm: int | None = None) -> None:
        self.info = info
        self.signer = info.make_signer()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if rcvhwm is not None:
            self.sock.rcvhwm = rcvhwm
            self.sock.rcvbuf = 4096  # keep the kernel's socket buffer small too
        secure_client(self.sock, info, "log_replay")
        self.sock.connect(info.url("log_replay"))

    def send(self, req: ReplayRequest) -> None:
        self.sock.send_multipart(encode_replay_request(req, self.signer))

    def recv(self, timeout: float = 10) -> list[bytes]:
        assert self.sock.poll(int(timeout * 1000)), "no answer from the replay socket"
        return self.sock.recv_multipart()

    def answer(self, timeout: float = 30) -> list[ReplayResponse]:
        """Every message of one answer, up to its end (or error)."""
        out: list[ReplayResponse] = []
        deadline = time.monotonic() + timeout
        while True:
            out.append(decode_replay_response(self.recv(deadline - time.monotonic()), self.signer))
            if isinstance(out[-1], (ReplayEnd, ReplayError)):
                return out

    def ask(self, req: ReplayRequest, timeout: float = 30) -> list[ReplayResponse]:
        self.send(req)
        return self.answer(timeout)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _records(answer: Iterable[ReplayResponse]) -> list[LogRecord]:
    return [rec for msg in answer if isinstance(msg, ReplayBatch) for rec in msg.records]


def _replay(info: NannyConnectionInfo, **fields: Any) -> list[ReplayResponse]:
    sock = ReplaySocket(info)
    try:
        return sock.ask(_request(**fields))
    finally:
        sock.close()


def _store_last(info: NannyConnectionInfo) -> int:
    end = _replay(info, last=0)[-1]
    assert isinstance(end, ReplayEnd)
    return end.last_seq


def _wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def _wait_stored(info: NannyConnectionInfo, text: bytes, timeout: float = 10) -> LogRecord:
    """Wait until a log record with exactly ``text`` is in the store (it reached the nanny)."""

    def find() -> LogRecord | None:
        recs = _records(_replay(info, last=200, streams=(Stream.LOG,)))
        return next((r for r in recs if r.data == text), None)

    return _wait_for(find, timeout, f"{text!r} in the store")


def _contiguous(recs: list[LogRecord], first: int | None = None) -> None:
    seqs = [r.seq for r in recs]
    start = seqs[0] if first is None else first
    assert seqs == list(range(start, start + len(seqs))), _describe_holes(seqs)


def _describe_holes(seqs: list[int]) -> str:
    holes = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1][:5]
    return f"{len(seqs)} seqs {seqs[:1]}..{seqs[-1:]}, first discontinuities: {holes}"


def _log_lines(recs: Iterable[LogRecord], prefix: str) -> list[int]:
    """The numbers of the ``prefix N`` lines written by the kernel, in the order received.

    A line may arrive in pieces (``FLAG_NO_EOL`` records: a partial line flushed by the
    nanny's timer when the rest was late); they are joined first, as a renderer would.
    """
    head = prefix.encode() + b" "
    lines: list[bytes] = []
    partial: dict[Stream, bytes] = {}
    for rec in recs:
        data = partial.pop(rec.stream, b"") + rec.data
        if rec.flags & FLAG_NO_EOL:
            partial[rec.stream] = data
        else:
            lines.append(data)
    return [int(line[len(head) :].split()[0]) for line in lines if line.startswith(head)]


def _caught_up(client: BlockingLogClient) -> bool:
    assert client._client is not None
    return client._client.subscription.caught_up


def _kill_nanny(nanny: NannyProcess) -> None:
    """SIGKILL the nanny; wait until it and its kernel tree are gone."""
    tree = nanny.tree_pids()
    os.kill(nanny.proc.pid, signal.SIGKILL)
    nanny.proc.wait(10)
    assert wait_gone(tree) == []


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", *args], capture_output=True, text=True, timeout=timeout
    )


class Tail:
    """``nanny-io tail ARGS`` running in the background; stdout lines with arrival times."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanny_io", "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[tuple[float, str]] = queue.Queue()
        self._err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in iter(self.proc.stdout.readline, ""):
                self._queue.put((time.monotonic(), line.rstrip("\n")))

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            self._err.extend(iter(self.proc.stderr.readline, ""))

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 15) -> tuple[float, str]:
        """The next line (arrival time, text) satisfying ``predicate``; earlier ones are kept."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                when, line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"tail printed no matching line in {timeout} s; printed {self.lines[-20:]}, "
                    f"stderr {''.join(self._err)[-2000:]!r}"
                ) from None
            self.lines.append(line)
            if predicate(line):
                return when, line

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def tails() -> Iterator[Callable[..., Tail]]:
    started: list[Tail] = []

    def start(*args: str) -> Tail:
        started.append(Tail(*args))
        return started[-1]

    yield start
    for tail in started:
        tail.stop()


# ---------------------------------------------------------------------------------- live PUB


def test_plain_sub_gets_signed_batches_and_ticks(nanny_factory: NannyFactory) -> None:
    _, kc, info = _start(nanny_factory)
    signer = info.make_signer()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    secure_client(sub, info, "log")
    sub.connect(info.url("log"))
    try:
        # The nanny greets every new subscription with a tick: then live messages reach us.
        assert sub.poll(5000), "no greeting tick"
        first = decode_log_message(sub.recv_multipart(), signer)
        assert isinstance(first, Tick)
        _cell(kc, "burst(1000, 'pub')")
        batches: list[RecordBatch] = []
        ticks: list[tuple[float, Tick]] = []
        deadline = time.monotonic() + 10
        # Three ticks after the burst: their spacing shows the heartbeat period.
        while len([t for t in ticks if t[1].last_seq >= 1000]) < 3:
            assert time.monotonic() < deadline, f"{len(batches)} batches, {len(ticks)} ticks"
            if not sub.poll(200):
                continue
            frames = sub.recv_multipart()
            assert len(frames) == 4
            with pytest.raises(RemoteProtocolError):  # really signed with the key
                decode_log_message(frames, Signer(b"not the key"))
            item = decode_log_message(frames, signer)
            if isinstance(item, Tick):
                assert frames[0] == b"tick" and frames[3] == b""
                ticks.append((time.monotonic(), item))
            else:
                assert frames[0] == item.stream.value.encode()
                assert all(r.stream is item.stream for r in item.records)
                batches.append(item)
        recs = [r for b in batches for r in b.records]
        assert _log_lines(recs, "pub") == list(range(1000))
        _contiguous(recs)
        for batch in batches:
            assert batch.epoch == first.epoch
            # prev_seqs: the last record of each stream published before the batch
            assert batch.prev_seqs.latest() == batch.first_seq - 1
        late = [(t, tick) for t, tick in ticks if tick.last_seq >= 1000]
        for _, tick in late:
            assert tick.epoch == first.epoch
            assert tick.kernel_state == "running"
            assert tick.incarnation == 1
            assert tick.last_seq == recs[-1].seq == tick.last_seqs.latest()
            assert tick.last_seqs[Stream.LOG] == recs[-1].seq
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(late)]
        print(f"tick spacing: {[round(g, 3) for g in gaps]} s")
        assert all(0.6 < g < 1.6 for g in gaps), gaps
    finally:
        sub.close(0)
        ctx.term()


# ---------------------------------------------------------------------------------- replay


def test_a_log_client_follows_unsigned_batches_while_an_older_one_gets_signed_ones(
    nanny_factory: NannyFactory,
) -> None:
    """Spec 4.3: on the CurveZMQ log channel the client moves to the curve. topics, where
    batches carry no HMAC; a subscriber that knows only the signed topics still gets those."""
    _, kc, info = _start(nanny_factory)
    signer = info.make_signer()
    ctx = zmq.Context()
    older = ctx.socket(zmq.SUB)
    older.linger = 0
    for topic in (b"log", b"tick"):
        older.subscribe(topic)
    secure_client(older, info, "log")
    older.connect(info.url("log"))
    try:
        assert older.poll(5000), "no greeting tick"
        with BlockingLogClient(info, last=0, streams=[Stream.LOG]) as client:
            sub = client._client.subscription  # type: ignore[union-attr]
            events = client.events(follow=True)
            for _ in events:  # Alive on every tick: the first one moves it
                if sub.on_curve and sub.caught_up:
                    break
            _cell(kc, "burst(5000, 'both')")
            recs: list[LogRecord] = []
            for event in events:
                assert isinstance(event, (Records, Alive)), event
                if isinstance(event, Records):
                    recs.extend(event.records)
                if len(_log_lines(recs, "both")) == 5000:
                    break
            assert client._client.rejected == 0  # type: ignore[union-attr]
        assert _log_lines(recs, "both") == list(range(5000))
        _contiguous(recs, first=recs[0].seq)
        signed: list[int] = []
        while older.poll(2000) and len(signed) < 5000:
            frames = older.recv_multipart()
            assert frames[0] in (b"log", b"tick") and frames[1], frames[:2]
            item = decode_log_message(frames, signer)  # verified with the key
            if isinstance(item, RecordBatch):
                signed += [r.seq for r in item.records]
        assert signed[-5000:] == [r.seq for r in recs[-5000:]]
    finally:
        older.close()
        ctx.term()


def test_late_joiner_gets_everything_once_while_output_continues(
    nanny_factory: NannyFactory,
) -> None:
    _, kc, info = _start(nanny_factory)
    _cell(kc, "burst(200000, 'old')")
    # A writer that keeps going for about two seconds, while the client replays and joins.
    _cell(
        kc,
        "def _bg():\n"
        "    paced(100000, 'new', 50, 0.001)\n"
        "    line('end-new')\n"
        "threading.Thread(target=_bg).start()",
    )
    start = time.monotonic()
    with BlockingLogClient(info, since_seq=1) as client:
        recs: list[LogRecord] = []
        first_batch_had_end = None
        for event in client.events(follow=True):
            if isinstance(event, Records):
                if first_batch_had_end is None:
                    first_batch_had_end = any(r.data == b"end-new\n" for r in event.records)
                recs.extend(event.records)
                if recs[-1].data == b"end-new\n":
                    break
            else:
                assert isinstance(event, Alive), event  # no gap, truncation or failure
            assert time.monotonic() - start < 30
        stats = client._client.subscription.statistics()  # type: ignore[union-attr]
    elapsed = time.monotonic() - start
    assert first_batch_had_end is False, "the writer was not running during the replay"
    _contiguous(recs, first=1)
    assert _log_lines(recs, "old") == list(range(200000))
    assert _log_lines(recs, "new") == list(range(100000))
    print(f"late joiner: {len(recs)} records in {elapsed:.2f} s; {stats}")


@pytest.mark.timeout(90)
def test_gap_repair_after_pub_drops(nanny_factory: NannyFactory) -> None:
    _, kc, info = _start(nanny_factory)

    async def run() -> tuple[list[LogRecord], Any, list[Any]]:
        async with LogClient(info, last=0) as client:
            agen = client.events(follow=True)
            others: list[Any] = []
            recs: list[LogRecord] = []
            async for event in agen:
                if isinstance(event, Records):
                    recs.extend(event.records)
                if client.subscription.caught_up:
                    break
            # Not reading: the kernel writes 50 000 lines (~7 MB) in ~20 000 small messages
            # (measured), more bytes than the socket buffers (~4 MB) and more messages than
            # the high-water marks hold (1 000 each side), so the nanny's PUB drops for this
            # subscriber (the stats below prove it did).
            _cell(kc, "paced(50000, 'gap', 2, 0, pad=100); line('end-gap')")
            async for event in agen:
                if isinstance(event, Records):
                    recs.extend(event.records)
                    if recs[-1].data == b"end-gap\n":
                        break
                elif not isinstance(event, Alive):
                    others.append(event)
            await agen.aclose()
            return recs, client.subscription.statistics(), others

    start = time.monotonic()
    recs, stats, others = asyncio.run(asyncio.wait_for(run(), 60))
    print(f"gap repair: {len(recs)} records in {time.monotonic() - start:.2f} s; {stats}")
    assert others == []
    _contiguous(recs)
    assert _log_lines(recs, "gap") == list(range(50000))
    assert stats.repairs > 0, "no message was dropped: the test did not exercise repair"
    assert stats.gaps == 0


def test_truncation_is_explicit(nanny_factory: NannyFactory) -> None:
    nanny, kc, info = _start(nanny_factory, "--ring-size", "1M", "--no-spill")
    _cell(kc, "burst(100000, 'trunc')")  # ~1.2 MB of data, far more with per-record overhead
    _wait_stored(info, b"trunc 99999\n")
    answer = _replay(info, since_seq=1)
    notice = answer[0]
    assert isinstance(notice, ReplayTruncated), answer[:2]
    assert notice.oldest_seq > 1
    assert notice.lost == notice.oldest_seq - 1
    recs = _records(answer)
    end = answer[-1]
    assert isinstance(end, ReplayEnd) and end.complete
    _contiguous(recs, first=notice.oldest_seq)
    assert recs[-1].seq == end.last_seq and end.sent == len(recs)
    assert sum(len(r.data) for r in recs) <= 1 << 20
    assert _log_lines(recs, "trunc")[-1] == 99999
    # with since_seq inside the ring: no notice
    inside = _replay(info, since_seq=notice.oldest_seq + 10)
    assert not any(isinstance(m, ReplayTruncated) for m in inside)
    assert _records(inside)[0].seq == notice.oldest_seq + 10
    # until_seq before the oldest: everything asked for is gone
    gone = _replay(info, since_seq=1, until_seq=5)
    assert isinstance(gone[0], ReplayTruncated) and gone[0].lost == 5
    assert _records(gone) == []

    with BlockingLogClient(info, since_seq=1) as client:
        events = [e for e in client.events(follow=False) if not isinstance(e, Alive)]
    assert isinstance(events[0], Truncated)
    assert events[0].lost >= notice.lost  # the store may have moved on since
    client_recs = [r for e in events if isinstance(e, Records) for r in e.records]
    _contiguous(client_recs, first=events[0].oldest_seq)

    proc = cli("tail", nanny.kernel_id, "--since", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["notice"] == "truncated"
    assert lines[0]["oldest_seq"] > 1 and lines[0]["lost"] == lines[0]["oldest_seq"] - 1
    assert "truncated" in lines[0]["text"]
    assert lines[1]["seq"] == lines[0]["oldest_seq"]
    assert all("notice" not in line for line in lines[1:])


def test_last_n_with_stream_filter_and_limit(nanny_factory: NannyFactory) -> None:
    _, kc, info = _start(nanny_factory)
    for i in range(5):  # interleave the three streams in known amounts
        _cell(
            kc,
            f"burst(40, 'log{i}')\n"
            f"os.write(1, b''.join(b'out{i} %d\\n' % j for j in range(30)))\n"
            f"os.write(2, b''.join(b'err{i} %d\\n' % j for j in range(20)))",
        )
    _wait_stored(info, b"log4 39\n")
    _wait_for(
        lambda: b"err4 19\n" in {r.data for r in _records(_replay(info, last=5))},
        10,
        "stderr records",
    )
    full_answer = _replay(info, since_seq=1)
    full = _records(full_answer)
    top = full[-1].seq
    _contiguous(full, first=1)

    def pick(*streams: Stream) -> list[LogRecord]:
        return [r for r in full if r.stream in streams]

    def check(expected: list[LogRecord], complete: bool, **fields: Any) -> None:
        answer = _replay(info, **{"until_seq": top, **fields})
        end = answer[-1]
        assert isinstance(end, ReplayEnd), answer[-1]
        assert not any(isinstance(m, ReplayTruncated) for m in answer)
        assert _records(answer) == expected, fields
        assert end.sent == len(expected)
        assert end.complete is complete, fields
        assert end.last_seq >= top  # the store's newest seq, whatever the range

    err = pick(Stream.STDERR)
    out_log = pick(Stream.STDOUT, Stream.LOG)
    assert len(err) >= 100 and len(out_log) >= 350
    check(err[-7:], True, last=7, streams=(Stream.STDERR,))
    check(err, True, last=10**6, streams=(Stream.STDERR,))
    check(
        out_log[-50:][:5],
        False,
        last=50,
        streams=(Stream.LOG, Stream.STDOUT),
        limit=5,
    )
    check(
        out_log[-50:],
        True,
        last=50,
        streams=(Stream.STDOUT, Stream.LOG),
        limit=50,
    )
    check([], True, last=0)
    check(full[-3:], True, last=3)
    mid = full[len(full) // 3].seq
    in_range = [r for r in pick(Stream.LOG) if mid <= r.seq]
    check(in_range, True, since_seq=mid, streams=(Stream.LOG,), limit=10**6)
    check(in_range[:25], False, since_seq=mid, streams=(Stream.LOG,), limit=25)
    check(in_range[-25:], True, since_seq=mid, streams=(Stream.LOG,), last=25)
    nanny_events = [r for r in pick(Stream.NANNY) if r.seq <= mid]
    check(nanny_events, True, since_seq=1, until_seq=mid, streams=(Stream.NANNY,))
    # The client library: last N of some streams is the same selection.
    with BlockingLogClient(info, last=7, streams=[Stream.STDERR]) as client:
        assert client.history() == err[-7:]


@pytest.mark.parametrize("envelope", [False, True])
def test_garbage_and_forged_requests_are_refused(
    nanny_factory: NannyFactory, envelope: bool
) -> None:
    nanny, kc, info = _start(nanny_factory)
    _cell(kc, "burst(100, 'ok')")
    _wait_stored(info, b"ok 99\n")
    sock = ReplaySocket(info)
    signer = info.make_signer()
    pre = [b""] if envelope else []

    def reply() -> ReplayResponse:
        frames = sock.recv()
        assert (frames[0] == b"") is envelope, "the REQ-style envelope was not put back"
        return decode_replay_response(frames, signer)

    try:
        serial = itertools.count()

        def make_garbage() -> list[list[bytes]]:
            """1000 garbage messages of various shapes (fresh: signed ones are never reused)."""
            out: list[list[bytes]] = []
            for i in range(1000):
                blob = os.urandom(1 + i % 97)
                unique = b"%d-%s" % (next(serial), blob)  # never signed twice: not a replay
                out.append(
                    [
                        [blob],  # one frame
                        [blob, blob, blob],  # three frames, no empty delimiter
                        [b"", b"{}", b"x", b"y"],  # four frames
                        [b"deadbeef", b'{"version":1,"type":"replay_request"}'],  # bad signature
                        [signer.sign((unique,)), unique],  # signed, not a JSON request
                    ][i % 5]
                )
            return out

        garbage = make_garbage()
        # Sent without reading: the nanny refuses what fits in its small per-client queue
        # and drops the rest; it must neither crash nor stall.
        for frames in garbage:
            sock.sock.send_multipart(frames)
        flood: dict[str, int] = {}
        while sock.sock.poll(1000):
            refused = decode_replay_response(sock.sock.recv_multipart(), signer)
            assert isinstance(refused, ReplayError) and refused.request_id is None, refused
            flood[refused.code] = flood.get(refused.code, 0) + 1
        assert 0 < sum(flood.values()) <= len(garbage), flood
        assert set(flood) <= {"malformed", "bad_signature"}, flood
        # Sent by a client that reads its answers: exactly one refusal each. Waves stay below
        # half the nanny's per-client queue (REPLAY_SNDHWM): ZeroMQ returns send credit in
        # batches, and a refusal that finds no room is dropped, by design.
        codes: dict[str, int] = {}
        garbage = make_garbage()
        wave_size = max(1, REPLAY_SNDHWM // 4)
        for start in range(0, len(garbage), wave_size):
            wave = garbage[start : start + wave_size]
            for frames in wave:
                sock.sock.send_multipart(frames)
            for _ in wave:
                refused = decode_replay_response(sock.recv(), signer)
                assert isinstance(refused, ReplayError) and refused.request_id is None, refused
                codes[refused.code] = codes.get(refused.code, 0) + 1
        assert codes == {"malformed": 800, "bad_signature": 200}, codes

        req = _request(since_seq=1)
        body = encode_replay_request(req, signer)[1]
        # unsigned
        sock.sock.send_multipart([*pre, b"", body])
        refused = reply()
        assert isinstance(refused, ReplayError) and refused.code == "bad_signature"
        assert refused.request_id == req.request_id
        # signed with another key
        sock.sock.send_multipart([*pre, *encode_replay_request(req, Signer(b"wrong key"))])
        refused = reply()
        assert isinstance(refused, ReplayError) and refused.code == "bad_signature"
        # another version (the previous one), correctly signed
        v1 = json.dumps({**json.loads(body), "version": 1}).encode()
        sock.sock.send_multipart([*pre, signer.sign((v1,)), v1])
        refused = reply()
        assert isinstance(refused, ReplayError) and refused.code == "unsupported_version"
        # an invalid field, correctly signed
        bad = json.dumps({**json.loads(body), "since_seq": 0}).encode()
        sock.sock.send_multipart([*pre, signer.sign((bad,)), bad])
        refused = reply()
        assert isinstance(refused, ReplayError) and refused.code == "malformed"
        assert refused.request_id == req.request_id
        # a correctly signed request, twice: served, then refused as a replayed message
        genuine_req = _request(since_seq=1, streams=(Stream.LOG,))
        genuine = encode_replay_request(genuine_req, signer)
        sock.sock.send_multipart([*pre, *genuine])
        answer = [reply()]
        while not isinstance(answer[-1], (ReplayEnd, ReplayError)):
            answer.append(reply())
        assert _log_lines(_records(answer), "ok") == list(range(100))
        sock.sock.send_multipart([*pre, *genuine])
        refused = reply()
        assert isinstance(refused, ReplayError) and refused.code == "duplicate"
        assert refused.request_id == genuine_req.request_id
    finally:
        sock.close()
    # The nanny is unharmed: a genuine client is served, the kernel runs cells and is captured.
    assert nanny.proc.poll() is None
    _cell(kc, "line('still here')")
    with BlockingLogClient(info, since_seq=1, streams=[Stream.LOG]) as client:
        recs = client.history()
    assert _log_lines(recs, "ok") == list(range(100))
    assert recs[-1].data == b"still here\n"
    assert "Traceback" not in nanny.stderr


@pytest.mark.timeout(90)
def test_a_client_that_never_reads_its_answer_holds_up_nobody(
    nanny_factory: NannyFactory,
) -> None:
    nanny, kc, info = _start(nanny_factory, "--ring-size", "512M", "--no-spill")
    _cell(kc, "burst(1000000, 'm')")
    _wait_stored(info, b"m 999999\n", timeout=30)
    # Asks for a million records (about 60 answer messages, more than REPLAY_SNDHWM, what the
    # nanny queues for one client) and reads nothing.
    stuck = ReplaySocket(info, rcvhwm=1)
    try:
        stuck_req = _request(since_seq=1)
        stuck.send(stuck_req)
        assert stuck.sock.poll(10000), "the answer did not start"
        # Meanwhile the kernel runs cells, capture goes on, and others are served in full.
        _cell(kc, "line('during the stall')")
        _wait_stored(info, b"during the stall\n")
        start = time.monotonic()
        with BlockingLogClient(info, since_seq=1) as client:
            recs = client.history()
        elapsed = time.monotonic() - start
        print(
            f"replay of {len(recs)} records to another client: {elapsed:.2f} s "
            f"({len(recs) / elapsed / 1e6:.2f} M records/s)"
        )
        _contiguous(recs, first=1)
        assert _log_lines(recs, "m") == list(range(1000000))
        assert recs[-1].data == b"during the stall\n"
        assert elapsed < 10
        cpu = psutil.Process(nanny.proc.pid).cpu_percent(0.5)
        print(f"nanny CPU while an answer waits for its reader: {cpu:.0f} %")
        # The stalled client reads at last: its answer is whole, nothing was dropped.
        answer = stuck.answer(timeout=30)
        end = answer[-1]
        assert isinstance(end, ReplayEnd), end
        assert end.request_id == stuck_req.request_id and end.complete
        stuck_recs = _records(answer)
        _contiguous(stuck_recs, first=1)
        assert len(stuck_recs) == end.sent == end.last_seq
    finally:
        stuck.close()


@pytest.mark.timeout(90)
def test_records_evicted_under_an_answer_are_never_skipped_silently(
    nanny_factory: NannyFactory,
) -> None:
    _, kc, info = _start(nanny_factory, "--ring-size", "160M", "--no-spill")
    # 600 000 records (~37 answer messages) for a client that does not read yet ...
    _cell(kc, "burst(600000, 'old'); line('end-old')")
    _wait_stored(info, b"end-old\n", timeout=30)
    stuck = ReplaySocket(info, rcvhwm=1)
    try:
        stuck.send(_request(since_seq=1))
        assert stuck.sock.poll(10000), "the answer did not start"
        # ... while the ring moves past everything it holds.
        _cell(kc, "burst(900000, 'new'); line('end-new')")
        _wait_stored(info, b"end-new\n", timeout=30)
        answer = stuck.answer(timeout=30)
    finally:
        stuck.close()
    end = answer[-1]
    assert isinstance(end, ReplayEnd), end
    recs = _records(answer)
    # Whatever was sent is contiguous. Either the answer outran the eviction and is whole,
    # or it stopped where the records were gone and says it is incomplete (so a client asks
    # again and is told what was lost): never a silent hole.
    _contiguous(recs)
    assert len(recs) == end.sent
    if end.complete:
        assert recs[0].seq == 1 and recs[-1].seq == end.last_seq
    else:
        assert recs == [] or recs[-1].seq < end.last_seq
    print(f"answer under eviction: {end.sent} records, complete={end.complete}")


@pytest.mark.timeout(60)
def test_a_client_that_never_reads_costs_the_nanny_bounded_memory(
    nanny_factory: NannyFactory,
) -> None:
    nanny, kc, info = _start(nanny_factory, "--ring-size", "512M", "--no-spill")
    _cell(kc, "burst(1000000, 'm'); line('end-m')")
    _wait_stored(info, b"end-m\n", timeout=30)
    process = psutil.Process(nanny.proc.pid)
    before = process.memory_info().rss
    stuck = ReplaySocket(info, rcvhwm=1)
    try:
        stuck.send(_request(since_seq=1))  # ~62 messages, ~37 MB
        assert stuck.sock.poll(10000), "the answer did not start"
        # Watch two seconds: REPLAY_SNDHWM messages (~10 MB) may be queued, not the answer.
        peak, until = 0, time.monotonic() + 2
        while time.monotonic() < until and peak < 25e6:
            peak = max(peak, process.memory_info().rss - before)
            time.sleep(0.05)
    finally:
        stuck.close()
    print(f"nanny memory held for a client that does not read: {peak / 1e6:.1f} MB")
    assert peak < 25e6


@pytest.mark.parametrize("evict", [False, True])
def test_a_stalled_answer_waits_alone_in_process(evict: bool) -> None:
    """LogChannel in this process, its replay ROUTER given a small SNDHWM before bind (as
    the nanny does with REPLAY_SNDHWM), so an
    answer really stalls: it waits for its client without holding up anyone else's answer,
    loses nothing, and ends incomplete (never skipping silently) when the ring moved past
    the records it had not sent yet."""
    asyncio.run(asyncio.wait_for(_stalled_answer(evict), 50))


async def _stalled_answer(evict: bool) -> None:
    ctx = zmq.asyncio.Context()
    signer = Signer(b"secret")
    pub = ctx.socket(zmq.XPUB)
    router = ctx.socket(zmq.ROUTER)
    router.sndhwm = 2  # before bind, or it does not apply
    pub.bind("tcp://127.0.0.1:*")
    router.bind("tcp://127.0.0.1:*")
    url = router.getsockopt_string(zmq.LAST_ENDPOINT)
    store = LogStore(epoch="in-process", max_bytes=128 << 20)  # ~600 000 records of 20 bytes
    pieces = [(b"y" * 19 + b"\n", 0)] * 10000

    def write(records: int) -> None:
        for _ in range(records // len(pieces)):
            store.append(Stream.LOG, 1, time.time_ns(), pieces)

    total = 400000  # 25 answer messages of 16 384 records: more than queue + socket buffers
    write(total)
    channel = LogChannel(pub, router, store, signer)
    server = asyncio.get_running_loop().create_task(channel.serve_replay())
    stuck = ctx.socket(zmq.DEALER)
    stuck.rcvhwm = 1
    stuck.rcvbuf = 4096
    other = ctx.socket(zmq.DEALER)
    for sock in (stuck, other):
        sock.connect(url)

    async def answer(sock: zmq.asyncio.Socket) -> list[ReplayResponse]:
        out: list[ReplayResponse] = []
        while not out or not isinstance(out[-1], (ReplayEnd, ReplayError)):
            frames = await asyncio.wait_for(sock.recv_multipart(), 20)
            out.append(decode_replay_response(frames, signer))
        return out

    try:
        await stuck.send_multipart(encode_replay_request(_request(since_seq=1), signer))
        deadline = time.monotonic() + 20
        while channel.stats["replay_waits"] == 0:  # the answer waits for its reader
            assert time.monotonic() < deadline, "the answer never had to wait"
            await asyncio.sleep(0.01)
        # Meanwhile another client is served in full.
        await other.send_multipart(encode_replay_request(_request(last=20), signer))
        served = await answer(other)
        assert [r.seq for r in _records(served)] == list(range(total - 19, total + 1))
        assert isinstance(served[-1], ReplayEnd) and served[-1].complete
        if evict:
            write(700000)  # the ring moves past what the stalled answer has not sent yet
            assert store.oldest_seq > total
        stalled = await answer(stuck)  # the client reads at last
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        ctx.destroy(linger=0)
    end = stalled[-1]
    assert isinstance(end, ReplayEnd), end
    recs = _records(stalled)
    _contiguous(recs, first=1)
    if evict:  # sent what it could, then said it is incomplete: the client asks again
        assert not end.complete
        assert end.sent == len(recs) < total
    else:  # nothing dropped
        assert end.complete
        assert end.sent == len(recs) == total == end.last_seq


@pytest.mark.timeout(90)
def test_sixteen_live_subscribers_each_get_a_100k_line_burst(nanny_factory: NannyFactory) -> None:
    _, kc, info = _start(nanny_factory)
    count = 16
    ready = [threading.Event() for _ in range(count)]
    results: list[Any] = [None] * count

    def follow(i: int) -> None:
        try:
            with BlockingLogClient(info, last=0) as client:
                recs: list[LogRecord] = []
                others: list[Any] = []
                events = client.events(follow=True)
                for event in events:
                    if isinstance(event, Records):
                        recs.extend(event.records)
                        if recs[-1].data == b"end-burst\n":
                            break
                    elif not isinstance(event, Alive):
                        others.append(event)
                    if _caught_up(client):
                        ready[i].set()
                events.close()
                assert client._client is not None
                results[i] = (recs, others, client._client.subscription.statistics())
        except BaseException as exc:  # reported by the test thread
            results[i] = exc
            ready[i].set()

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for event in ready:
        assert event.wait(15), "a subscriber did not catch up"
    start = time.monotonic()
    _cell(kc, "burst(100000, 'b'); line('end-burst')")
    for thread in threads:
        thread.join(max(0.0, start + 60 - time.monotonic()))
    elapsed = time.monotonic() - start
    assert not any(t.is_alive() for t in threads), "subscribers still waiting after 60 s"
    repairs = []
    for result in results:
        assert not isinstance(result, BaseException), result
        recs, others, stats = result
        assert others == []
        _contiguous(recs)
        assert _log_lines(recs, "b") == list(range(100000))
        repairs.append(stats.repairs)
    print(f"16 subscribers x 100 000 lines: {elapsed:.2f} s; repairs per client {repairs}")
    assert elapsed < 45


# ---------------------------------------------------------------------------------- the client


def test_a_killed_nanny_is_reported_silent(nanny_factory: NannyFactory) -> None:
    nanny, _, info = _start(nanny_factory)
    with BlockingLogClient(info, last=0) as client:
        events = client.events(follow=True)
        for _event in events:
            if _caught_up(client):
                break
        _kill_nanny(nanny)
        killed = time.monotonic()
        for event in events:
            if isinstance(event, NannySilent):
                break
            assert time.monotonic() - killed < 10, "no NannySilent"
        silent_after = time.monotonic() - killed
        events.close()
    print(f"NannySilent {silent_after:.2f} s after SIGKILL ({event.seconds:.2f} s of silence)")
    assert event.seconds >= NANNY_SILENT_AFTER
    assert 1.5 < silent_after < 5


# ---------------------------------------------------------------------------------- tail


def test_tail_follow_prints_new_lines_within_a_second(
    nanny_factory: NannyFactory, tails: Callable[..., Tail]
) -> None:
    nanny, kc, _ = _start(nanny_factory)
    _cell(kc, "line('before tail')")
    tail = tails(nanny.kernel_id, "-f")
    tail.wait_line(lambda line: line.endswith(" before tail"))
    latencies = []
    for i in range(3):
        written = time.monotonic()
        _cell(kc, f"line('hello {i}')")
        arrived, _line = tail.wait_line(lambda line, i=i: line.endswith(f" hello {i}"), 5)
        latencies.append(arrived - written)
    print(f"tail -f latency: {', '.join(f'{x * 1000:.1f} ms' for x in latencies)}")
    assert max(latencies) < 2.0
    assert tail.proc.poll() is None


def test_tail_after_the_nanny_exited_reads_the_spill(nanny_factory: NannyFactory) -> None:
    for how in ("SIGTERM", "SIGKILL"):
        nanny, kc, info = _start(nanny_factory)
        _cell(kc, f"burst(500, '{how}'); os.write(2, b'stderr before {how}\\n')")
        _wait_stored(info, f"{how} 499\n".encode())
        _wait_for(
            lambda how=how, info=info: any(
                r.data == f"stderr before {how}\n".encode()
                for r in _records(_replay(info, last=20, streams=(Stream.STDERR,)))
            ),
            10,
            "the stderr line",
        )
        if how == "SIGTERM":
            assert nanny.stop() == 0
        else:
            _kill_nanny(nanny)
        proc = cli("tail", nanny.kernel_id, "-n", "1000")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("-- the nanny is gone; history from "), lines[0]
        texts = [line.split(" ", 2)[2].strip() for line in lines[1:]]
        assert [int(t.split()[-1]) for t in texts if t.startswith(f"{how} ")] == list(range(500))
        assert f"stderr before {how}" in texts
        if how == "SIGTERM":  # a clean exit records the end of the story too
            assert texts[-1] == "nanny stopped"
        # --since and --json work on the spill too
        proc = cli("tail", nanny.kernel_id, "--since", "1", "--json")
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert rows[0]["notice"] == "post-mortem"
        assert [r["seq"] for r in rows[1:]] == list(range(1, len(rows)))


def test_tail_wait_follows_across_kernel_and_nanny_restarts(
    nanny_factory: NannyFactory, tails: Callable[..., Tail]
) -> None:
    kernel_id = uuid.uuid4().hex
    tail = tails("--wait", kernel_id, "-f")  # before the nanny exists
    assert tail.proc.poll() is None
    nanny = nanny_factory("python3", "-q", "--kernel-id", kernel_id)
    tail.wait_line(lambda line: "kernel started" in line)
    kc = nanny.client()
    _cell(kc, KERNEL_SETUP + "\nline('first kernel')")
    tail.wait_line(lambda line: line.endswith(" first kernel"))
    # a kernel restart under the same nanny
    proc = cli("shutdown", kernel_id, "--restart")
    assert proc.returncode == 0, proc.stderr
    tail.wait_line(lambda line: "kernel restarted (incarnation 2" in line)
    _cell(kc, KERNEL_SETUP + "\nline('second kernel')")
    tail.wait_line(lambda line: line.endswith(" second kernel"))
    # a new nanny process for the same kernel id
    assert nanny.stop() == 0
    nanny2 = nanny_factory("python3", "-q", "--kernel-id", kernel_id)
    kc2 = nanny2.client()
    _cell(kc2, KERNEL_SETUP + "\nline('second nanny')")
    tail.wait_line(lambda line: line.endswith(" second nanny"), timeout=20)
    assert tail.proc.poll() is None
    for text in ("first kernel", "second kernel", "second nanny"):
        assert sum(line.endswith(f" {text}") for line in tail.lines) == 1, tail.lines


def test_tail_unknown_kernel_is_one_clear_line(jupyter_env: Any) -> None:
    proc = cli("tail", "no-such-kernel")
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nanny-io: error: ") and "no-such-kernel" in lines[0]


def test_tail_human_output(nanny_factory: NannyFactory) -> None:
    nanny, kc, info = _start(nanny_factory)
    _cell(kc, "os.write(1, b'to stdout\\n'); os.write(2, b'to stderr\\n'); line('to log')")
    wanted = {b"to stdout\n", b"to stderr\n", b"to log\n"}
    _wait_for(lambda: wanted <= {r.data for r in _records(_replay(info, last=50))}, 10, "the lines")

    def rows(*args: str) -> list[tuple[str, str]]:
        proc = cli("tail", nanny.kernel_id, "-n", "100", *args)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout  # not a terminal: no colour
        out = []
        for line in proc.stdout.splitlines():
            match = re.fullmatch(r"(\d\d:\d\d:\d\d\.\d{3}) (stdout|stderr|log|nanny) +(.*)", line)
            assert match, line
            out.append((match[2], match[3]))
        return out

    everything = rows()
    assert ("stdout", "to stdout") in everything
    assert ("stderr", "to stderr") in everything
    assert ("log", "to log") in everything
    started = [text for stream, text in everything if stream == "nanny"]
    assert any(re.fullmatch(r"kernel started \(pid \d+\)", t) for t in started), started
    only_stderr = rows("--stream", "stderr")
    assert ("stderr", "to stderr") in only_stderr
    assert {stream for stream, _ in only_stderr} == {"stderr"}
    assert len(rows("-n", "2")) == 2
