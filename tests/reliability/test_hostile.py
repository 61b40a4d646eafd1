"""Hostile input: writer churn and garbage bytes on the pipes, garbage and forgeries on sockets.

What is written is generated from a seed by the same code in the kernel and in the test, so a
stream's stored records, concatenated in seq order, can be compared byte for byte.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import NannyProcess, gone, history, last_seq, stored, wait_for
from jupyter_client.session import Session
from reliability.support import (
    add_kernel,
    expression,
    hb_ping,
    run,
    shell_reply,
)

from nanny_io.discovery import load_connection_info
from nanny_io.zap import secure_client
from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.logrecords import LogRecord
from nanny_io_proto.replay import (
    ReplayBatch,
    ReplayEnd,
    ReplayError,
    ReplayRequest,
    ReplayTruncated,
    decode_replay_response,
    encode_replay_request,
)
from nanny_io_proto.signing import Signer
from nanny_io_proto.streams import FLAG_NO_EOL, Stream

MAX_RECORD = 64 * 1024  # capture.MAX_LINE: longer lines are cut into FLAG_NO_EOL pieces

# ------------------------------------------------------------------ byte-exact capture

#: Defines ``chunks(seed)``: the writes of the byte-exact tests. Run in the kernel and here.
CHUNKS = r"""
import contextlib
import random

def chunks(seed):
    rnd = random.Random(seed)
    out = []
    for size in (4095, 4096, 4097):  # PIPE_BUF (4096) and its neighbours, newline included
        out.append(bytes([97 + size % 26]) * (size - 1) + b"\n")
    for size in (4095, 4096, 4097):  # the same without a newline, then one
        out.append(bytes([65 + size % 26]) * size)
        out.append(b"\n")
    out.append(b"L" * (10 * 1024 * 1024 - 1) + b"\n")  # a 10 MB single line
    out += [  # invalid UTF-8, NUL, CR, escapes and delimiter lookalikes
        b"\xff\xfe\xfd\n", b"\xc3\n", b"\xc3(\n", b"\xed\xa0\x80 surrogate\n",
        b"\xc0\xaf overlong\n", b"\xf4\x90\x80\x80 too big\n", b"nul\x00nul\x00\n",
        b"cr\rcr\r\n", b"\x1b[31mred\x1b[0m\n", b"\x1b]5379;nanny-io;begin;bad id\x07\n",
        b"\x1b]5379;nanny-io;end;\x07\n", b"\x1b]5379;nanny-io;beg",
    ]
    for _ in range(200):  # binary garbage of every length up to two pipe buffers
        out.append(rnd.randbytes(rnd.randint(1, 9000)))
    out.append(b"tail without newline \xe2\x82")  # ends in half a character
    return out
"""

WRITE_ALL = r"""
import contextlib
import os
exec({chunks!r})
def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
if {stream!r} == 'log':
    fd = os.open(os.environ['JUPYTER_KERNEL_LOG'], os.O_WRONLY)
else:
    fd = {{'stdout': 1, 'stderr': 2}}[{stream!r}]
for chunk in chunks({seed}):
    write_all(fd, chunk)
"""


def _chunks(seed: int) -> list[bytes]:
    namespace: dict[str, Any] = {}
    exec(CHUNKS, namespace)
    return namespace["chunks"](seed)


def _stored_since(nanny: NannyProcess, stream: Stream, base: int, size: int) -> list[LogRecord]:
    """The stream's records after seq ``base``, once they add up to ``size`` bytes."""
    return wait_for(
        lambda: (r := stored(nanny, stream, base)) and sum(len(x.data) for x in r) >= size and r,
        30,
        f"{size} bytes of {stream.value} in the store",
        every=0.1,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stream", [Stream.STDOUT, Stream.STDERR, Stream.LOG])
def test_pipe_buf_edges_a_10_mb_line_and_garbage_are_stored_byte_exact(
    stream: Stream, jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--no-spill")
    kc = nanny.client()
    base = last_seq(nanny)
    seed = 1234 + len(stream.value)
    run(kc, WRITE_ALL.format(chunks=CHUNKS, stream=stream.value, seed=seed), timeout=60)
    want = b"".join(_chunks(seed))
    records = _stored_since(nanny, stream, base, len(want))
    got = b"".join(r.data for r in records)
    if got != want:
        at = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
        raise AssertionError(
            f"{stream.value}: stored {len(got)} bytes, wrote {len(want)}; first difference at "
            f"byte {at}: stored {got[at - 10 : at + 20]!r}, wrote {want[at - 10 : at + 20]!r}"
        )
    assert max(len(r.data) for r in records) <= MAX_RECORD
    for rec in records:  # a record ends a line exactly when it is not flagged FLAG_NO_EOL
        assert rec.data.endswith(b"\n") == (not rec.flags & FLAG_NO_EOL), rec.data[-20:]
    print(f"{stream.value}: {len(want)} bytes in {len(records)} records, byte-exact")


CHURN = r"""
import contextlib
import os
lines = [b'cycle %04d ' % i + bytes([97 + i % 26]) * (i * 7 % 5000) + b'\n' for i in range(1000)]
for i, line in enumerate(lines):
    fd = os.open(os.environ['JUPYTER_KERNEL_LOG'], os.O_WRONLY)
    os.write(fd, line[: len(line) // 2])  # two writes per open: a line split across writes
    os.write(fd, line[len(line) // 2 :])
    os.close(fd)
"""


@pytest.mark.timeout(60)
def test_a_thousand_fifo_open_write_close_cycles_are_stored_byte_exact(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    base = last_seq(nanny)
    t0 = time.monotonic()
    run(kc, CHURN)
    lines = [
        b"cycle %04d " % i + bytes([97 + i % 26]) * (i * 7 % 5000) + b"\n" for i in range(1000)
    ]
    want = b"".join(lines)
    records = _stored_since(nanny, Stream.LOG, base, len(want))
    took = time.monotonic() - t0
    assert b"".join(r.data for r in records) == want
    assert [r.data for r in records] == lines  # one record per line, in order
    print(f"1000 FIFO open/write/close cycles ({len(want)} bytes) stored in {took:.2f} s")
    # the FIFO still works for a writer that comes after all of them
    run(kc, "fd = os.open(os.environ['JUPYTER_KERNEL_LOG'], os.O_WRONLY); os.write(fd, b'x\\n')")
    wait_for(lambda: stored(nanny, Stream.LOG)[-1].data == b"x\n", 10, "a later writer")


WRITER = r"""
import os, random, sys
k = int(sys.argv[1])
rnd = random.Random(k)
fd = -1
for i in range(1500):
    if i % 50 == 0:  # reopen every 50 lines: churn while the others write
        if fd >= 0:
            os.close(fd)
        fd = os.open(os.environ['JUPYTER_KERNEL_LOG'], os.O_WRONLY)
    n = rnd.randint(24, 4096)  # at most PIPE_BUF: each line is one atomic write
    head = b'w%d %04d %04d ' % (k, i, n)
    assert os.write(fd, head + bytes([97 + (k + i) % 26]) * (n - len(head) - 1) + b'\n') == n
os.close(fd)
"""
WRITER_LINE = re.compile(rb"w(\d) (\d{4}) (\d{4}) ([a-z]+)\n")


@pytest.mark.timeout(90)
def test_eight_concurrent_fifo_writers_never_tear_or_lose_a_line(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    base = last_seq(nanny)
    run(
        kc,
        "import subprocess, sys\n"
        f"writer = {WRITER!r}\n"
        "procs = [subprocess.Popen([sys.executable, '-c', writer, str(k)]) for k in range(8)]\n"
        "assert [p.wait() for p in procs] == [0] * 8",
    )
    records = wait_for(
        lambda: (r := stored(nanny, Stream.LOG, base)) and len(r) >= 12000 and r,
        30,
        "12 000 lines",
        every=0.2,
    )
    assert len(records) == 12000
    seen: dict[int, list[int]] = {k: [] for k in range(8)}
    for rec in records:
        m = WRITER_LINE.fullmatch(rec.data)
        assert m is not None and rec.flags == 0, f"torn line: {rec.data[:60]!r}"
        k, i, n = int(m[1]), int(m[2]), int(m[3])
        assert len(rec.data) == n and set(m[4]) == {97 + (k + i) % 26}, rec.data[:60]
        seen[k].append(i)
    assert all(seen[k] == list(range(1500)) for k in range(8))
    sizes = sum(len(r.data) for r in records)
    print(f"8 concurrent writers x 1500 lines with reopen churn: {sizes / 1e6:.1f} MB, no tear")


# ------------------------------------------------------------------ garbage and forgeries

FLOOD = 10_000


def _garbage(rnd: random.Random, i: int) -> list[bytes]:
    """Multipart messages that are not valid Jupyter messages, of many shapes."""
    kind = i % 6
    if kind == 0:
        return [rnd.randbytes(rnd.randint(0, 200))]
    if kind == 1:
        return [rnd.randbytes(rnd.randint(0, 40)) for _ in range(rnd.randint(2, 12))]
    if kind == 2:
        return [b"<IDS|MSG>", b"sig", b"{", b"}", b"[]", b"{}"]
    if kind == 3:
        return [b"<IDS|MSG>"]
    if kind == 4:
        return [b"<IDS|MSG>", b"", b"{}", b"{}", b"{}", b"{}"]  # unsigned
    return [b"<IDS|MSG>", rnd.randbytes(32).hex().encode(), b"{}", b"{}", b"{}", b"{}", b"x"]


def _control_flood(url: str, session: Session, rnd: random.Random) -> tuple[int, int]:
    """Send FLOOD bad messages and one genuine signal_request replayed; (rejected, replies)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(url)
    forger = Session(key=b"not-the-key", username="mallory")
    unsigned = Session(key=b"", username="mallory")
    genuine = session.serialize(session.msg("signal_request", {"signum": "SIGCONT"}))
    rejected = 0
    try:
        for i in range(FLOOD):
            kind = i % 5
            if kind == 0:
                forger.send(sock, rnd.choice(["interrupt_request", "shutdown_request"]), {})
            elif kind == 1:
                unsigned.send(sock, "shutdown_request", {"restart": False})
            elif kind == 2:
                sock.send_multipart(_garbage(rnd, i))
            elif kind == 3:  # correctly signed, but not a valid message (a hostile insider)
                header = b'{"msg_type": 5}'
                sig = session.sign([header, b"{}", b"{}", b"{}"])
                sock.send_multipart([b"<IDS|MSG>", sig, header, b"{}", b"{}", b"{}"])
            else:  # the genuine message, then replays of it
                sock.send_multipart(genuine)
            rejected += 1
        rejected -= 1  # the first genuine one is served
        replies = []
        while sock.poll(2000):
            replies.append(sock.recv_multipart())
        return rejected, len(replies)
    finally:
        sock.close()
        ctx.term()


def _hb_flood(url: str, rnd: random.Random) -> int:
    """Garbage on the heartbeat from a DEALER (echoed back, like any ping); echoes read."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(url)
    echoed = 0
    try:
        for i in range(FLOOD):
            sock.send_multipart(_garbage(rnd, i))
            while sock.poll(0):
                sock.recv_multipart()
                echoed += 1
        while sock.poll(1000):
            sock.recv_multipart()
            echoed += 1
        return echoed
    finally:
        sock.close()
        ctx.term()


def _replay_flood(info: NannyConnectionInfo, rnd: random.Random) -> dict[str, int]:
    """FLOOD bad replay requests from a peer the nanny admits, at most 8 in flight; the
    error codes of the answers."""
    signer = info.make_signer()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    secure_client(sock, info, "log_replay")
    sock.connect(info.url("log_replay"))
    forger = Signer(b"not-the-key")
    replayed = encode_replay_request(ReplayRequest("r-genuine", uuid.uuid4().hex, last=0), signer)
    sock.send_multipart(replayed)  # served once: an end (after nothing)
    codes: dict[str, int] = {}
    try:
        first = decode_replay_response(sock.recv_multipart(), signer)
        assert isinstance(first, ReplayEnd), first
        in_flight = 0
        for i in range(FLOOD):
            kind = i % 4
            req = ReplayRequest(f"r{i}", uuid.uuid4().hex, since_seq=1)
            if kind == 0:
                sock.send_multipart(_garbage(rnd, i))
            elif kind == 1:
                sock.send_multipart(encode_replay_request(req, forger))
            elif kind == 2:
                sock.send_multipart([b"", encode_replay_request(req, signer)[1]])
            else:
                sock.send_multipart(replayed)
            in_flight += 1
            while in_flight >= 8 or (in_flight and sock.poll(0)):
                assert sock.poll(10_000), f"no answer to bad replay request {i}"
                answer = decode_replay_response(sock.recv_multipart()[-3:], signer)
                assert isinstance(answer, ReplayError), answer
                codes[answer.code] = codes.get(answer.code, 0) + 1
                in_flight -= 1
        while in_flight:
            assert sock.poll(10_000), "answers missing at the end of the flood"
            answer = decode_replay_response(sock.recv_multipart()[-3:], signer)
            assert isinstance(answer, ReplayError), answer
            codes[answer.code] = codes.get(answer.code, 0) + 1
            in_flight -= 1
        return codes
    finally:
        sock.close()
        ctx.term()


def _tcp_junk(ports: list[int], rnd: random.Random) -> None:
    """Raw TCP connections that speak no ZMTP at all: random bytes, then a hang-up."""
    for port in ports:
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.settimeout(0.2)
                with contextlib.suppress(OSError):  # the peer may hang up on a bad byte
                    conn.sendall(rnd.randbytes(rnd.randint(1, 65536)))


AFTER_FLOOD = "for i in range(20000):\n    os.write(1, b'after %05d ' % i + b'-' * 60 + b'\\n')"


@pytest.mark.timeout(120)
def test_garbage_and_forgeries_on_control_hb_and_replay_change_nothing(
    jupyter_env, nanny_factory, tmp_path: Path
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--ring-size", "1M")
    kc = nanny.client()
    info = load_connection_info(nanny.connection_file)
    kernel_pid = nanny.state()["kernel_pid"]
    go = tmp_path / "go"
    msg_id = kc.execute(
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\n"
        "finished = True",
        user_expressions={"finished": "finished"},
    )
    wait_for(lambda: nanny.state()["status"] == "running", 10, "running")
    rnd = random.Random(7)
    t0 = time.monotonic()
    rejected, control_replies = _control_flood(info.url("control"), kc.session, rnd)
    t_control = time.monotonic() - t0
    # counted, exactly (the state file is saved at most once a second)
    wait_for(
        lambda: nanny.state().get("rejected_messages") == rejected,
        5,
        f"rejected_messages == {rejected} in the state file",
    )
    echoed = _hb_flood(info.url("hb"), rnd)
    t_hb = time.monotonic() - t0 - t_control
    codes = _replay_flood(info, rnd)
    t_replay = time.monotonic() - t0 - t_control - t_hb
    ports = [info.control_port, info.hb_port, info.iopub_port, info.log_port]
    _tcp_junk([*ports, info.log_replay_port], rnd)
    print(
        f"{FLOOD} bad messages each: control {t_control:.1f} s, hb {t_hb:.1f} s ({echoed} "
        f"echoed), replay {t_replay:.1f} s {codes}; then 50 raw TCP junk connections"
    )

    # no effect: the cell was neither interrupted nor shut down, the kernel is the same
    go.write_text("")
    reply = shell_reply(kc, msg_id, timeout=30)
    assert reply["status"] == "ok", reply
    assert expression(reply, "finished") is True
    assert nanny.state()["kernel_pid"] == kernel_pid
    assert nanny.state()["incarnation"] == 1
    assert control_replies == 1  # only the genuine signal_request was answered
    # counted
    # raw junk may be read as ZMTP 1.0 frames, which are garbage messages too: counted
    assert nanny.state().get("rejected_messages", 0) >= rejected
    assert sum(codes.values()) == FLOOD
    assert codes.get("duplicate") == FLOOD // 4
    assert codes.get("bad_signature", 0) >= FLOOD // 2
    # no crash: every channel still serves
    assert not gone(nanny.proc.pid)
    ctx = zmq.Context()
    try:
        assert hb_ping(ctx, info.url("hb"))
    finally:
        ctx.term()
    assert kc.is_alive()
    assert "Traceback" not in nanny.stderr
    run(kc, AFTER_FLOOD)
    wait_for(
        lambda: (
            (h := history(nanny, last=1, streams=[Stream.STDOUT]))
            and h[-1].data.startswith(b"after 19999 ")
        ),
        15,
        "output after the flood",
    )
    # a replay asking for evicted history gets an explicit truncation notice
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    secure_client(sock, info, "log_replay")
    sock.connect(info.url("log_replay"))
    signer = info.make_signer()
    try:
        sock.send_multipart(
            encode_replay_request(ReplayRequest("evicted", uuid.uuid4().hex, since_seq=1), signer)
        )
        answer: list[Any] = []
        while not answer or not isinstance(answer[-1], (ReplayEnd, ReplayError)):
            assert sock.poll(10_000), "no answer"
            answer.append(decode_replay_response(sock.recv_multipart(), signer))
    finally:
        sock.close()
        ctx.term()
    notice = answer[0]
    assert isinstance(notice, ReplayTruncated), answer[0]
    assert notice.oldest_seq > 1 and notice.lost == notice.oldest_seq - 1
    records = [r for m in answer if isinstance(m, ReplayBatch) for r in m.records]
    assert records[0].seq == notice.oldest_seq
    assert records[-1].data.startswith(b"after 19999 ")
    print(f"replay from seq 1 after eviction: truncated, lost {notice.lost} records")
