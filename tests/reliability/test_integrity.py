"""The log's integrity against clients that never read, a path that loses a message of a
replay answer, a spill damaged on disk, and an append larger than the spill."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import history, wait_for
from reliability.support import add_kernel, cli, run

from nanny_io.discovery import load_connection_info, spill_path
from nanny_io.logchannel import MAX_CONCURRENT_REPLAYS, REPLAY_STALL_TIMEOUT
from nanny_io.spill import Spill, read_spill
from nanny_io.subscriber import LogClient, Records
from nanny_io.zap import log_keypair, secure_client
from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.logrecords import LogRecord, pack_records
from nanny_io_proto.replay import (
    ReplayBatch,
    ReplayEnd,
    ReplayError,
    ReplayRequest,
    decode_replay_response,
    encode_replay_request,
)
from nanny_io_proto.streams import Stream

MiB = 2**20

#: Numbered stdout lines of 100 bytes: a replay answer of many messages.
LINES = (
    "import os\n"
    "chunk = b''.join(b'%08d ' % i + b'.' * 90 + b'\\n' for i in range({n}))\n"
    "os.write(1, chunk)\n"
    "os.write(1, b'WRITTEN\\n')"
)


def _written(nanny: Any, kc: Any, n: int) -> None:
    run(kc, LINES.format(n=n), timeout=60)
    wait_for(
        lambda: [r.data for r in history(nanny, last=1, streams=[Stream.STDOUT])] == [b"WRITTEN\n"],
        30,
        "the lines stored",
    )


def _dealer(ctx: zmq.Context[Any], info: NannyConnectionInfo, **options: int) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    for name, value in options.items():
        setattr(sock, name, value)
    secure_client(sock, info, "log_replay")
    sock.connect(info.url("log_replay"))
    return sock


@pytest.mark.timeout(120)
def test_replay_clients_that_never_read_give_their_slots_back(jupyter_env, nanny_factory) -> None:
    """Eight key holders ask for the whole history and never read: a ninth is told "busy"
    at first, and served once the stalled answers time out; a stalled client that reads
    again finds its answer ended incomplete, so it knows to ask for the rest."""
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--no-spill")
    kc = nanny.client()
    info = load_connection_info(nanny.connection_file)
    signer = info.make_signer()
    _written(nanny, kc, 400_000)
    ctx = zmq.Context()
    try:
        stalled = []
        for i in range(MAX_CONCURRENT_REPLAYS):
            sock = _dealer(ctx, info, rcvhwm=1, rcvbuf=4096)
            req = ReplayRequest(f"s{i}", uuid.uuid4().hex, since_seq=1)
            sock.send_multipart(encode_replay_request(req, signer))
            stalled.append(sock)
        assert stalled[-1].poll(10_000), "the last stalled client got nothing"
        ninth = _dealer(ctx, info)
        t0 = time.monotonic()
        answers: list[Any] = []
        while not answers or not isinstance(answers[-1], ReplayEnd):
            assert time.monotonic() - t0 < 3 * REPLAY_STALL_TIMEOUT, answers[-1:]
            request = ReplayRequest("n", uuid.uuid4().hex, last=3)
            ninth.send_multipart(encode_replay_request(request, signer))
            assert ninth.poll(10_000)
            answers = [decode_replay_response(ninth.recv_multipart(), signer)]
            while not isinstance(answers[-1], (ReplayEnd, ReplayError)):
                assert ninth.poll(10_000)
                answers.append(decode_replay_response(ninth.recv_multipart(), signer))
            if isinstance(answers[-1], ReplayError):
                assert answers[-1].code == "busy"
                time.sleep(0.2)  # a client's retry pause, as LogClient's
        waited = time.monotonic() - t0
        print(f"the ninth client was served after {waited:.1f} s")
        assert REPLAY_STALL_TIMEOUT * 0.8 < waited < 2 * REPLAY_STALL_TIMEOUT + 5
        assert [r.data for a in answers[:-1] for r in a.records][-1] == b"WRITTEN\n"
        # the stalled clients reading again: what was queued, then an end. An answer that
        # fitted in the socket buffers may have ended complete; those that held their slot
        # until the timeout end incomplete, naming what was really sent.
        incomplete = 0
        for sock in stalled:
            got = []
            while not got or not isinstance(got[-1], ReplayEnd):
                assert sock.poll(10_000), "a stalled answer never ended"
                got.append(decode_replay_response(sock.recv_multipart(), signer))
            end = got[-1]
            batches = [m for m in got if isinstance(m, ReplayBatch)]
            assert end.prev_seq == batches[-1].records[-1].seq
            assert end.sent >= sum(len(b.records) for b in batches)
            incomplete += end.complete is False
        assert incomplete >= 1, "no answer was cut by the stall timeout"
    finally:
        ctx.destroy(linger=0)


class DroppingProxy:
    """A ZeroMQ hop between a replay client and the nanny that loses the second ``records``
    message of the first answer, as a broken path or a reconnect in the middle would."""

    def __init__(self, info: NannyConnectionInfo) -> None:
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.linger = 0
        keys = log_keypair(info)
        assert keys is not None
        self.front.curve_publickey, self.front.curve_secretkey = keys
        self.front.curve_server = True  # no ZAP handler in this process: any client
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = _dealer(self.ctx, info)
        self.signer = info.make_signer()
        self.dropped: list[int] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        client = b""
        batches = 0
        while not self._stop.is_set():
            for sock, _ in poller.poll(100):
                frames = sock.recv_multipart()
                if sock is self.front:
                    client = frames[0]
                    self.back.send_multipart(frames[1:])
                    continue
                answer = decode_replay_response(frames, self.signer)
                if isinstance(answer, ReplayBatch):
                    batches += 1
                    if batches == 2:
                        self.dropped.append(answer.records[0].seq)
                        continue
                self.front.send_multipart([client, *frames])

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.ctx.destroy(linger=0)


@pytest.mark.timeout(120)
def test_a_message_lost_inside_an_answer_is_fetched_again(jupyter_env, nanny_factory) -> None:
    """The nanny's own client reads 40 000 lines through a hop that loses one answer
    message: every line arrives, once, in order (it used to skip the lost batch)."""
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--no-spill")
    kc = nanny.client()
    info = load_connection_info(nanny.connection_file)
    _written(nanny, kc, 40_000)
    proxy = DroppingProxy(info)
    try:
        via_proxy = dataclasses.replace(info, log_replay_port=proxy.port)

        async def read() -> tuple[list[LogRecord], int]:
            records: list[LogRecord] = []
            client = LogClient(via_proxy, streams=[Stream.STDOUT])
            async with client:
                async for event in client.events(follow=False):
                    if isinstance(event, Records):
                        records += event.records
            return records, client.subscription.statistics().repairs

        records, repairs = asyncio.run(read())
    finally:
        proxy.close()
    assert proxy.dropped, "the hop dropped nothing"
    numbers = [int(r.data[:8]) for r in records if r.data.endswith(b"." * 90 + b"\n")]
    assert numbers == list(range(40_000))
    assert repairs >= 1


@pytest.mark.timeout(90)
def test_a_damaged_spill_says_so_and_the_rest_is_read(jupyter_env, nanny_factory) -> None:
    """A byte of a stored line flipped on disk: post-mortem ``tail`` warns that records
    fail their checksum and shows the lines after them, instead of the altered line."""
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    kernel_id = nanny.kernel_id
    for word in ("first", "second", "third"):
        run(kc, f"import os; os.write(1, b'{word} line\\n')")
    wait_for(
        lambda: (
            [r.data for r in history(nanny, last=1, streams=[Stream.STDOUT])] == [b"third line\n"]
        ),
        15,
        "the lines stored",
    )
    nanny.stop()
    directory = spill_path(kernel_id)
    (segment,) = sorted(directory.glob("seg-*.nlog"))
    data = bytearray(segment.read_bytes())
    at = data.index(b"second line")
    data[at] ^= 0x20  # "Second line": a plausible line, and a wrong one
    segment.write_bytes(bytes(data))
    proc = cli("tail", kernel_id, "-n", "100")
    assert proc.returncode == 0, proc.stderr
    assert "fail their checksum" in proc.stderr
    assert "Second line" not in proc.stdout and "second line" not in proc.stdout
    assert "first line" in proc.stdout and "third line" in proc.stdout


def test_an_append_larger_than_a_segment_or_the_spill_keeps_the_bound(tmp_path: Path) -> None:
    """Segments of 1 MiB, 4 MiB in all: appends of 3 MiB and of 6 MiB leave at most 4 MiB
    on disk (one oversized append used to add a segment over the bound), and the newest
    records stay readable."""

    def records(first: int, n: int, size: int) -> list[LogRecord]:
        return [
            LogRecord(s, 0, 1, Stream.STDOUT, b"%08d" % s + b"x" * (size - 9) + b"\n")
            for s in range(first, first + n)
        ]

    def on_disk() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob("seg-*.nlog"))

    with Spill(tmp_path, epoch="e", segment_bytes=MiB, max_total_bytes=4 * MiB) as spill:
        seq = 1
        for _ in range(40):  # 4 MiB of 100 KiB appends: the spill is full
            spill.write_parts(seq, [pack_records(records(seq, 10, 10_240))])
            seq += 10
            assert on_disk() <= 4 * MiB
        for size in (3 * MiB, 6 * MiB):
            recs = records(seq, size // 65_536, 65_536)
            assert spill.write_parts(seq, [pack_records(recs)])
            seq += len(recs)
            assert on_disk() <= 4 * MiB, f"{on_disk() / MiB:.2f} MiB after a {size} append"
    kept = [rec.seq for _, rec in read_spill(tmp_path)]
    assert kept[-1] == seq - 1
    assert kept == list(range(kept[0], seq))
