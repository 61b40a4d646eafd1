"""Capture end to end: real kernels, real pipes and FIFOs, unmodified jupyter_client clients.

Each pitfall of /work/shared/notes/capture-pitfalls.md that concerns the pipes and the log FIFO
has a test here (named ``test_pitfall_N_...``), next to the output-synchronisation guarantees of
specs/output-sync.md: fd-level, C-level and subprocess output reaches the right cell before its
``status: idle``; delimiters never reach frontends; the log FIFO reaches the store only.

Nothing here sleeps in place of an event: tests poll for a condition with a deadline. The few
sleeps that remain are the stimulus (a kernel pausing between writes) or a measuring window
(CPU time of an idle nanny).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq
from helpers import (
    IPYKERNEL,
    NannyProcess,
    gone,
    history,
    last_seq,
    reply_to,
    stored,
    stored_bytes,
    wait_for,
    wait_gone,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io.capture import EchoWriter
from nanny_io.discovery import load_connection_info
from nanny_io.zap import secure_client
from nanny_io_proto.logrecords import parse_nanny_event
from nanny_io_proto.streams import FLAG_NO_EOL, Stream

pytestmark = pytest.mark.timeout(60)

DELIMITERS = "--IPKernelApp.extensions=nanny_io.kernelside"
DELIMITER_PREFIX = b"\x1b]5379;nanny-io;"


# ---------------------------------------------------------------------------------- helpers


def add_kernel(
    jupyter_env: Any,
    name: str,
    *,
    capture: bool = True,
    delimiters: bool | None = None,
    argv: list[str] | None = None,
) -> str:
    """Install an ipykernel kernelspec with its own fd capture off; return its name.

    Capture kernels write delimiters unless told not to: the attribution tests run both
    variants; the others test what happens to the bytes, where attribution is exact.
    """
    delimiters = capture if delimiters is None else delimiters
    argv = list(argv or IPYKERNEL) + ([DELIMITERS] if delimiters else [])
    metadata = {"capture_stdstreams": True} if capture else {}
    jupyter_env.add_kernelspec(name, argv, metadata=metadata)
    return name


@dataclass
class Cell:
    """One execute_request and the iopub messages read until its ``status: idle``."""

    msg_id: str
    messages: list[dict[str, Any]]  # everything read from iopub, in arrival order
    reply: dict[str, Any] = field(default_factory=dict)

    def mine(self, msg: dict[str, Any]) -> bool:
        return msg["parent_header"].get("msg_id") == self.msg_id

    @property
    def idle_index(self) -> int:
        for i, msg in enumerate(self.messages):
            if self.mine(msg) and is_idle(msg):
                return i
        raise AssertionError("the cell never went idle")

    def streams(self, name: str | None = None) -> list[dict[str, Any]]:
        """Stream messages parented to this cell that arrived before its idle."""
        return [
            m
            for m in self.messages[: self.idle_index]
            if m["msg_type"] == "stream"
            and self.mine(m)
            and (name is None or m["content"]["name"] == name)
        ]

    def text(self, name: str) -> str:
        return "".join(m["content"]["text"] for m in self.streams(name))


def is_idle(msg: dict[str, Any]) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def read_until_idle(
    kc: Any, msg_id: str, timeout: float = 60, keep: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """iopub messages until ``msg_id``'s idle (those ``keep`` accepts, plus the idle)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no idle for {msg_id}; saw {[m['msg_type'] for m in seen]}")
        try:
            msg = kc.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            continue
        done = is_idle(msg) and msg["parent_header"].get("msg_id") == msg_id
        if done or keep is None or keep(msg):
            seen.append(msg)
        if done:
            return seen


def shell_reply(kc: Any, msg_id: str, timeout: float = 30) -> dict[str, Any]:
    content: dict[str, Any] = reply_to(kc, msg_id, timeout)["content"]
    return content


def run_cell(kc: Any, code: str, timeout: float = 60, **kwargs: Any) -> Cell:
    """Execute ``code``; everything iopub delivered up to its idle, and its reply."""
    msg_id = kc.execute(code, **kwargs)
    cell = Cell(msg_id, read_until_idle(kc, msg_id, timeout))
    cell.reply = shell_reply(kc, msg_id)
    assert cell.reply["status"] == "ok", cell.reply
    return cell


def drain_iopub(kc: Any) -> list[dict[str, Any]]:
    """Whatever iopub holds right now (after a barrier cell, nothing more is in flight)."""
    out = []
    while True:
        try:
            out.append(kc.get_iopub_msg(timeout=0.01))
        except queue.Empty:
            return out


def nanny_events(nanny: NannyProcess, name: str) -> list[tuple[int, dict[str, Any]]]:
    return [
        (r.seq, event)
        for r in history(nanny, since_seq=1, streams=[Stream.NANNY])
        if (event := parse_nanny_event(r.data))["event"] == name
    ]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", *args], capture_output=True, text=True, timeout=timeout
    )


def wait_death(kc: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """iopub messages up to and including ``status: dead``."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no status: dead; saw {[m['msg_type'] for m in seen]}"
        try:
            msg = kc.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            continue
        seen.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "dead":
            return seen


def no_delimiters(texts: Iterable[str]) -> None:
    for text in texts:
        assert "\x1b]5379" not in text, f"a delimiter reached a frontend: {text!r:.200}"


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# ------------------------------------------------------------------ attribution and idle


OUTPUT_KINDS = {
    "fd": "os.write(1, b'fd-out {tag}\\n'); os.write(2, b'fd-err {tag}\\n')",
    "libc": (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "libc.printf(b'libc-out {tag}\\n'); libc.fflush(None)"
    ),
    "system": "os.system('echo system-out {tag}; echo system-err {tag} >&2')",
    "subprocess": (
        "subprocess.run([sys.executable, '-c', "
        '\'import sys; print("sub-out {tag}"); print("sub-err {tag}", file=sys.stderr)\'])'
    ),
}
EXPECTED = {
    "fd": [("stdout", "fd-out {tag}\n"), ("stderr", "fd-err {tag}\n")],
    "libc": [("stdout", "libc-out {tag}\n")],
    "system": [("stdout", "system-out {tag}\n"), ("stderr", "system-err {tag}\n")],
    "subprocess": [("stdout", "sub-out {tag}\n"), ("stderr", "sub-err {tag}\n")],
}


@pytest.fixture(params=["plain", "delimiters"])
def capture_nanny(request, jupyter_env, nanny_factory) -> NannyProcess:
    """A capture-enabled ipykernel, without and with delimiters."""
    name = add_kernel(jupyter_env, request.param, delimiters=request.param == "delimiters")
    return nanny_factory(name, "-q")


def test_fd_c_and_subprocess_output_reaches_its_cell_before_idle(
    capture_nanny: NannyProcess,
) -> None:
    kc = capture_nanny.client()
    run_cell(kc, "import os, subprocess, sys")
    # Three rounds: without delimiters a cell's first bytes can reach the nanny before the
    # cell's `busy` does; a nanny that mishandles that race fails one round most of the time.
    for kind, code in list(OUTPUT_KINDS.items()) * 3:
        tag = f"{kind}-{os.urandom(3).hex()}"
        base = last_seq(capture_nanny)
        cell = run_cell(kc, code.format(tag=tag))
        for name, text in EXPECTED[kind]:
            # Cell.text only looks at stream messages parented to the cell, before its idle
            assert text.format(tag=tag) in cell.text(name), (kind, name, cell.streams())
        no_delimiters(m["content"]["text"] for m in cell.messages if m["msg_type"] == "stream")
        for stream in (Stream.STDOUT, Stream.STDERR):
            assert DELIMITER_PREFIX not in stored_bytes(capture_nanny, stream, base)
    proc = cli("tail", capture_nanny.kernel_id, "-n", "100")
    assert proc.returncode == 0, proc.stderr
    assert "sub-out subprocess-" in proc.stdout
    assert "\x1b]5379" not in proc.stdout


def test_each_cell_gets_only_its_own_output(capture_nanny: NannyProcess) -> None:
    kc = capture_nanny.client()
    run_cell(kc, "import os, subprocess, sys")
    code = (
        "os.write(1, b'{t} fd\\n')\n"
        "os.system('echo {t} shell')\n"
        "subprocess.run([sys.executable, '-c', 'print(\"{t} child\")'])\n"
        "os.write(2, b'{t} err\\n')\n"
    )
    # consecutive cells, three rounds (the busy/pipe race: one round may pass by luck)
    tags = [f"{name}{i}" for i in range(3) for name in ("first", "second")]
    cells = {tag: run_cell(kc, code.format(t=tag)) for tag in tags}
    everything = [m for cell in cells.values() for m in cell.messages]
    everything += run_cell(kc, "pass").messages + drain_iopub(kc)
    streams = [m for m in everything if m["msg_type"] == "stream"]
    no_delimiters(m["content"]["text"] for m in streams)
    for tag, cell in cells.items():
        assert cell.text("stdout") == f"{tag} fd\n{tag} shell\n{tag} child\n"
        assert cell.text("stderr") == f"{tag} err\n"
        for msg in streams:
            if tag in msg["content"]["text"]:
                parent = msg["parent_header"].get("msg_id")
                assert cell.mine(msg), f"{msg['content']['text']!r} went to {parent}"


# ------------------------------------------------------------------ the log FIFO and echo


def test_kernel_log_reaches_the_store_and_never_the_frontend(jupyter_env, nanny_factory) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    cell = run_cell(
        kc,
        "import os\n"
        "with open(os.environ['JUPYTER_KERNEL_LOG'], 'w') as log:\n"
        "    for i in range(5):\n"
        "        print(f'log line {i}', file=log)\n"
        "os.write(1, b'stdout line\\n')",
    )
    lines = [f"log line {i}\n".encode() for i in range(5)]
    wait_for(lambda: [r.data for r in stored(nanny, Stream.LOG)][-5:] == lines, 10, "the log lines")
    proc = cli("tail", nanny.kernel_id, "-n", "5", "--stream", "log")
    assert proc.returncode == 0, proc.stderr
    assert [line.split(maxsplit=2)[-1] for line in proc.stdout.splitlines()] == [
        f"log line {i}" for i in range(5)
    ]
    barrier = run_cell(kc, "pass")
    texts = [
        m["content"]["text"]
        for m in cell.messages + barrier.messages + drain_iopub(kc)
        if m["msg_type"] == "stream"
    ]
    assert "stdout line\n" in texts  # capture is on: stdout does go to the frontend
    assert not [t for t in texts if "log line" in t]


def test_non_capture_kernel_output_is_stored_and_echoed_not_sent(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "nocap", capture=False))
    kc = nanny.client()
    cell = run_cell(kc, "import os; os.write(1, b'echo-out 1\\n'); os.write(2, b'echo-err 2\\n')")
    wait_for(lambda: "echo-out 1\n" in nanny.stderr_lines, 10, "the stdout echo")
    wait_for(lambda: "echo-err 2\n" in nanny.stderr_lines, 10, "the stderr echo")
    assert stored_bytes(nanny, Stream.STDOUT).endswith(b"echo-out 1\n")
    assert stored_bytes(nanny, Stream.STDERR).endswith(b"echo-err 2\n")
    barrier = run_cell(kc, "pass")
    sent = [
        m["content"]["text"]
        for m in cell.messages + barrier.messages + drain_iopub(kc)
        if m["msg_type"] == "stream"
    ]
    assert not [t for t in sent if "echo-" in t], sent


def test_echo_with_a_prefix_tags_every_line_with_its_stream() -> None:
    """Under a kernel manager the echo lands in the Jupyter server's log, among other
    kernels' lines: each line then says whose it is, also when it came in pieces."""
    read_fd, write_fd = os.pipe()
    echo = EchoWriter(write_fd, prefix="[nanny-io 1234abcd {stream}] ")
    echo.write(b"part one, ", Stream.STDOUT)
    echo.write(b"a log line\n", Stream.LOG)
    echo.write(b"part two\nnext line\n", Stream.STDOUT)
    echo.write(b"no newline yet", Stream.STDERR)
    echo.close()
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        out = f.read()
    assert out == (
        b"[nanny-io 1234abcd stdout] part one, \n"
        b"[nanny-io 1234abcd log] a log line\n"
        b"[nanny-io 1234abcd stdout] part two\n"
        b"[nanny-io 1234abcd stdout] next line\n"
        b"[nanny-io 1234abcd stderr] no newline yet"
    )


def _prefixed_line_by_line(writes: list[tuple[Stream, bytes]], prefix: str) -> bytes:
    """The reference for the echo's tags: each write cut into lines, one at a time."""
    out, open_line = [], None
    for stream, data in writes:
        if not data:
            continue
        tag = prefix.format(stream=stream.value).encode()
        *whole, rest = data.split(b"\n")
        for i, line in enumerate([w + b"\n" for w in whole] + ([rest] if rest else [])):
            continuing = i == 0 and open_line is stream
            if i == 0 and open_line is not None and open_line is not stream:
                out.append(b"\n")  # another stream's line left open is ended first
            out.append(line if continuing else tag + line)
            open_line = None if line.endswith(b"\n") else stream
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([Stream.STDOUT, Stream.STDERR, Stream.LOG]),
            st.lists(st.sampled_from([b"\n", b"a", b"bc", b"\r", b"\xe2\x82"]), max_size=8).map(
                b"".join
            ),
        ),
        max_size=12,
    )
)
def test_echo_prefix_matches_tagging_line_by_line(writes: list[tuple[Stream, bytes]]) -> None:
    """The echo tags lines with one replace per write; the result is that of tagging each
    line on its own, for any writes of any streams, cut anywhere."""
    prefix = "[nanny-io 1234abcd {stream}] "
    echo = EchoWriter(os.open(os.devnull, os.O_WRONLY), prefix=prefix)
    got = b"".join(echo._prefixed(stream, data) for stream, data in writes)
    echo.close()
    assert got == _prefixed_line_by_line(writes, prefix)


# ------------------------------------------------------------------ pitfalls of the log FIFO

EARLY_OPENER = (
    "import os, sys\n"
    "f = open(os.environ['JUPYTER_KERNEL_LOG'], 'w')\n"
    "f.write('opened early\\n'); f.flush()\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', *sys.argv[1:]])"
)


def test_pitfall_1_a_kernel_opening_the_log_at_start_starts_promptly(
    jupyter_env, nanny_factory
) -> None:
    argv = [sys.executable, "-c", EARLY_OPENER, *IPYKERNEL[3:]]
    add_kernel(jupyter_env, "early", argv=argv)
    started = time.monotonic()
    nanny = nanny_factory("early", "-q")
    kc = nanny.client(timeout=20)
    took = time.monotonic() - started
    print(f"kernel that opens the log first was ready in {took:.2f} s")
    assert took < 20
    (log,) = [r for r in stored(nanny, Stream.LOG) if r.data == b"opened early\n"]
    ((started_seq, _),) = nanny_events(nanny, "kernel_started")
    assert log.seq < started_seq  # written before the kernel was ready, not after
    assert run_cell(kc, "print('ok')").text("stdout") == "ok\n"


def test_pitfall_2_open_write_close_cycles_lose_nothing_and_leave_the_nanny_idle(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    run_cell(
        kc,
        "import os\n"
        "for i in range(100):\n"
        "    with open(os.environ['JUPYTER_KERNEL_LOG'], 'w') as f:\n"
        "        f.write(f'cycle {i}\\n')",
    )
    want = [f"cycle {i}\n".encode() for i in range(100)]
    wait_for(lambda: [r.data for r in stored(nanny, Stream.LOG)] == want, 10, "100 log lines")
    # The last writer has closed: a reader without a write end of its own would now see
    # EOF/HUP on every poll, forever.
    before, t0 = cpu_seconds(nanny.proc.pid), time.monotonic()
    time.sleep(1.0)  # the measuring window, not a wait for an event
    used = (cpu_seconds(nanny.proc.pid) - before) / (time.monotonic() - t0)
    print(f"idle nanny CPU after 100 open/close cycles: {used:.3f} s per s")
    assert used < 0.2
    # ... and a writer that comes later still reaches the same reader
    run_cell(kc, "open(os.environ['JUPYTER_KERNEL_LOG'], 'w').write('later\\n')")
    wait_for(lambda: stored(nanny, Stream.LOG)[-1].data == b"later\n", 10, "a later writer")


WRITER = r"""
import os, random, sys
k = int(sys.argv[1])
rnd = random.Random(k)
fd = os.open(os.environ["JUPYTER_KERNEL_LOG"], os.O_WRONLY)
for i in range(2000):
    n = rnd.randint(32, 4096)
    head = b"w%d %04d %04d " % (k, i, n)
    line = head + bytes([97 + (k * 7 + i) % 26]) * (n - len(head) - 1) + b"\n"
    assert os.write(fd, line) == n
os.close(fd)
"""
LINE = re.compile(rb"w(\d) (\d{4}) (\d{4}) ([a-z]+)\n")


@pytest.mark.timeout(90)
def test_pitfall_3_four_writers_never_tear_a_line(jupyter_env, nanny_factory) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    base = last_seq(nanny)
    run_cell(
        kc,
        "import subprocess, sys\n"
        f"writer = {WRITER!r}\n"
        "procs = [subprocess.Popen([sys.executable, '-c', writer, str(k)]) for k in range(4)]\n"
        "assert [p.wait() for p in procs] == [0, 0, 0, 0]",
    )
    records = wait_for(
        lambda: (r := stored(nanny, Stream.LOG, base)) and len(r) >= 8000 and r,
        30,
        "8000 log lines",
        every=0.2,
    )
    assert len(records) == 8000
    seen: dict[int, list[int]] = {k: [] for k in range(4)}
    total = 0
    for rec in records:
        m = LINE.fullmatch(rec.data)
        assert m is not None and rec.flags == 0, f"torn line: {rec.data[:80]!r}"
        k, i, n = int(m[1]), int(m[2]), int(m[3])
        assert len(rec.data) == n and set(m[4]) == {97 + (k * 7 + i) % 26}, rec.data[:80]
        seen[k].append(i)
        total += n
    assert all(seen[k] == list(range(2000)) for k in range(4))  # none lost, each in order
    print(f"4 writers x 2000 lines: {total / 1e6:.1f} MB, zero torn lines")


# ------------------------------------------------------------------ pitfalls of the pipes

BULK = (
    "import os, time\n"
    "chunk = b''.join(b'%09d' % i + b'x' * 90 + b'\\n' for i in range(10485))\n"
    "t0 = time.perf_counter()\n"
    "for _ in range(100):\n"
    "    os.write(1, chunk)\n"
    "elapsed = time.perf_counter() - t0\n"
    "os.write(1, b'END-OF-BULK {tag}\\n')\n"
)


def _bulk_run(nanny: NannyProcess, kc: Any, tag: str) -> tuple[float, float, int]:
    """100 MiB to stdout: (seconds the kernel took, seconds until stored, bytes received)."""
    received = 0

    def count(msg: dict[str, Any]) -> bool:
        nonlocal received
        if msg["msg_type"] == "stream":
            received += len(msg["content"]["text"])
        return False

    t0 = time.monotonic()
    msg_id = kc.execute(BULK.format(tag=tag), user_expressions={"elapsed": "elapsed"})
    read_until_idle(kc, msg_id, timeout=120, keep=count)
    reply = shell_reply(kc, msg_id)
    assert reply["status"] == "ok", reply
    marker = f"END-OF-BULK {tag}\n".encode()
    wait_for(
        lambda: marker in [r.data for r in history(nanny, last=3, streams=[Stream.STDOUT])],
        30,
        "the last line in the store",
    )
    stored_after = time.monotonic() - t0
    elapsed = float(reply["user_expressions"]["elapsed"]["data"]["text/plain"])
    return elapsed, stored_after, received


@pytest.mark.timeout(120)
def test_pitfall_5_subscribers_that_never_read_do_not_slow_the_kernel(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q", "--no-spill")
    kc = nanny.client()
    base_kernel, base_stored, base_received = _bulk_run(nanny, kc, "baseline")
    info = load_connection_info(nanny.connection_file)
    ctx = zmq.Context()
    stuck = []
    try:
        for channel in ("iopub", "log"):  # a frontend and a log follower, both asleep
            sock = ctx.socket(zmq.SUB)
            sock.linger = 0
            sock.subscribe(b"")
            secure_client(sock, info, channel)
            sock.connect(info.url(channel))
            stuck.append(sock)
        # wait until both subscriptions have reached the nanny: it greets each new one
        for sock in stuck:
            assert sock.poll(10_000), "the nanny did not greet the subscriber"
        kernel, stored_after, received = _bulk_run(nanny, kc, "stuck")
    finally:
        for sock in stuck:
            sock.close()
        ctx.term()
    print(
        f"100 MiB through stdout: baseline kernel {base_kernel:.2f} s (stored after "
        f"{base_stored:.2f} s, frontend got {base_received / 2**20:.0f} MiB); with two "
        f"subscribers that never read: kernel {kernel:.2f} s (stored after "
        f"{stored_after:.2f} s, frontend got {received / 2**20:.0f} MiB)"
    )
    assert kernel < 3 * base_kernel + 5
    assert stored_after < 3 * base_stored + 5
    assert run_cell(kc, "print('alive')").text("stdout") == "alive\n"


NUMBERED = "import os\nfor i in range(20000):\n    os.write(1, b'numbered %05d\\n' % i)\n"


@pytest.mark.timeout(90)
def test_pitfall_6_everything_written_before_exit_is_stored_before_the_death(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    msg_id = kc.execute(NUMBERED + "os._exit(3)")
    seen = wait_death(kc)
    types = [m["msg_type"] for m in seen]
    died = seen[types.index("kernel_died")]
    assert died["content"]["exit_code"] == 3
    assert died["parent_header"]["msg_id"] == msg_id
    want = "".join(f"numbered {i:05d}\n" for i in range(20000))
    # the frontend got all of it, parented to the cell, before kernel_died
    sent = "".join(
        m["content"]["text"]
        for m in seen[: types.index("kernel_died")]
        if m["msg_type"] == "stream"
        and m["content"]["name"] == "stdout"
        and m["parent_header"].get("msg_id") == msg_id
    )
    assert sent == want
    # the store has all of it, in order, with seqs below the nanny's kernel_died event
    records = [r for r in stored(nanny, Stream.STDOUT) if r.data.startswith(b"numbered")]
    assert b"".join(r.data for r in records) == want.encode()
    assert [r.seq for r in records] == sorted(r.seq for r in records)
    ((died_seq, event),) = nanny_events(nanny, "kernel_died")
    assert records[-1].seq < died_seq
    assert event["exit_code"] == 3 and event["signal"] is None


def test_pitfall_6_a_grandchild_holding_the_pipe_does_not_delay_the_death_report(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    cell = run_cell(
        kc,
        "import os, subprocess, sys\n"
        "holders = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=s) for s in (False, True)]\n"
        "print(*(p.pid for p in holders))",
    )
    holders = [int(pid) for pid in cell.text("stdout").split()]
    stdout_inode = os.stat(f"/proc/{holders[0]}/fd/1").st_ino
    assert all(os.stat(f"/proc/{pid}/fd/1").st_ino == stdout_inode for pid in holders)
    t0 = time.monotonic()
    kc.execute("os.write(1, b'last line\\n'); os._exit(3)")
    seen = wait_death(kc, timeout=20)
    took = time.monotonic() - t0
    print(f"death reported {took:.2f} s after the fatal cell was sent (pipe still held open)")
    assert took < 5
    died = next(m for m in seen if m["msg_type"] == "kernel_died")
    assert died["content"]["exit_code"] == 3
    assert any(m["content"].get("text") == "last line\n" for m in seen if m["msg_type"] == "stream")
    assert wait_gone(holders) == []  # and the holders do not outlive the kernel


def _handshake_writes(nanny: NannyProcess, kc: Any, tmp_path: Path, pieces: list[bytes]) -> None:
    """The kernel writes each piece, then waits for the test to see it stored."""
    code = (
        "import os, time\n"
        f"for i, piece in enumerate({pieces!r}):\n"
        "    os.write(1, piece)\n"
        "    deadline = time.monotonic() + 30\n"
        f"    while not os.path.exists(os.path.join({str(tmp_path)!r}, f'ack{{i}}')):\n"
        "        assert time.monotonic() < deadline\n"
        "        time.sleep(0.005)\n"
    )
    base = last_seq(nanny)
    msg_id = kc.execute(code)
    written = b""
    worst = 0.0
    for i, piece in enumerate(pieces):
        written += piece
        t0 = time.monotonic()
        wait_for(
            lambda w=written: stored_bytes(nanny, Stream.STDOUT, base) == w,
            5,
            f"piece {i} ({piece!r}) in the store",
        )
        worst = max(worst, time.monotonic() - t0)
        (tmp_path / f"ack{i}").touch()
    read_until_idle(kc, msg_id)
    assert shell_reply(kc, msg_id)["status"] == "ok"
    print(f"slowest partial write to reach the store: {worst * 1000:.0f} ms")
    assert worst < 1.0
    records = stored(nanny, Stream.STDOUT, base)
    assert b"".join(r.data for r in records) == written
    for rec in records:
        assert bool(rec.flags & FLAG_NO_EOL) == (not rec.data.endswith(b"\n")), rec


def test_pitfall_7_partial_lines_are_stored_promptly_and_exactly(
    jupyter_env, nanny_factory, tmp_path
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    data = b"abcdefgh\nij\xc3\xa9 prompt> \x1b[32mok\x1b[0m\nno newline at the end"
    pieces = [data[i : i + 3] for i in range(0, len(data), 3)]
    _handshake_writes(nanny, kc, tmp_path, pieces)


TEXT = "naïve café — 日本語のテキスト — emoji 😀🎉👩‍🔬 — Ελληνικά — العربية — ∑∫√\n"


def _odd_pieces(data: bytes) -> list[bytes]:
    sizes = (1, 2, 3, 5, 7, 11, 13, 17)
    out, pos, i = [], 0, 0
    while pos < len(data):
        out.append(data[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    return out


def _dribble(kc: Any, pieces: list[bytes]) -> Cell:
    """The kernel writes ``pieces`` one os.write each, pausing so they arrive in many reads."""
    return run_cell(
        kc,
        "import os, time\n"
        f"for piece in {pieces!r}:\n"
        "    os.write(1, piece)\n"
        "    time.sleep(0.0005)\n",
    )


def test_pitfall_8_utf8_split_across_writes_round_trips(jupyter_env, nanny_factory) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    text = TEXT * (6000 // len(TEXT.encode()) + 1)
    data = text.encode()
    assert len(data) >= 6000
    base = last_seq(nanny)
    cell = _dribble(kc, _odd_pieces(data))
    got = cell.text("stdout")
    assert "\ufffd" not in got
    assert got == text
    print(f"{len(data)} bytes in {len(_odd_pieces(data))} writes -> {len(cell.streams())} msgs")
    assert stored_bytes(nanny, Stream.STDOUT, base) == data


def test_pitfall_9_ansi_escapes_split_across_writes_are_stored_exactly(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    data = (
        b"\x1b[1;31mred\x1b[0m plain \x1b[38;5;208morange\x1b[0m\r\x1b[2K"
        b"\x1b]0;a window title\x07\x1b]8;;https://example.org\x1b\\link\x1b]8;;\x1b\\ "
        b"\x1b]5379;nanny-io;begin;not a valid id\x07 lookalike\n"
    ) * 20
    base = last_seq(nanny)
    cell = _dribble(kc, [data[i : i + 2] for i in range(0, len(data), 2)])
    assert stored_bytes(nanny, Stream.STDOUT, base) == data
    assert cell.text("stdout") == data.decode()


def test_pitfall_11_a_killed_subprocess_loses_no_buffered_output(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    base = last_seq(nanny)
    child = "import os, signal; print('said before SIGKILL'); os.kill(os.getpid(), signal.SIGKILL)"
    cell = run_cell(
        kc,
        "import subprocess, sys\n"
        f"assert subprocess.run([sys.executable, '-c', {child!r}]).returncode == -9",
    )
    assert cell.text("stdout") == "said before SIGKILL\n"
    assert stored_bytes(nanny, Stream.STDOUT, base) == b"said before SIGKILL\n"


# ------------------------------------------------------------------ death and last words


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_kernel_died_carries_last_words_and_the_log_has_the_details(
    jupyter_env, nanny_factory, how: str
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    fatal = "os._exit(5)" if how == "exit" else "os.kill(os.getpid(), signal.SIGKILL)"
    msg_id = kc.execute(
        f"import os, signal\nos.write(2, b'fatal: the disk is on fire\\n')\n{fatal}"
    )
    seen = wait_death(kc)
    died = next(m for m in seen if m["msg_type"] == "kernel_died")
    assert died["parent_header"]["msg_id"] == msg_id
    content = died["content"]
    words = {"stream": "stderr", "text": "fatal: the disk is on fire", "priority": 4}
    assert words in content["last_words"]
    if how == "exit":
        assert (content["exit_code"], content["signal"]) == (5, None)
    else:
        assert (content["exit_code"], content["signal"]) == (None, signal.SIGKILL)
        assert content["signal_name"] == "SIGKILL"
    proc = cli("tail", nanny.kernel_id, "--json", "--stream", "nanny", "-n", "10")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line).get("event") for line in proc.stdout.splitlines()]
    (event,) = [e for e in events if e and e["event"] == "kernel_died"]
    for key in ("exit_code", "signal", "signal_name", "reason", "incarnation"):
        assert event[key] == content[key]
    assert words in event["last_words"]


def test_a_death_before_the_cells_busy_left_the_kernel_reaches_that_cell(
    jupyter_env, nanny_factory
) -> None:
    """ipykernel publishes busy and execute_input from a thread; a kernel that dies at once
    may never send them. The BEGIN delimiter names the cell all the same."""
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    # From now on nothing the kernel publishes leaves it, as if its iopub thread lagged.
    hold = kc.execute(
        "get_ipython().kernel.iopub_socket.io_thread.send_multipart = lambda *a, **k: None"
    )
    reply = kc.get_shell_msg(timeout=30)  # shell replies come from the main thread
    assert (reply["parent_header"]["msg_id"], reply["content"]["status"]) == (hold, "ok")
    msg_id = kc.execute("import os\nos._exit(7)")
    seen = wait_death(kc)
    assert not any(
        m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "execute_input"
        for m in seen
    ), "the kernel's execute_input got out: this test proves nothing"
    died = next(m for m in seen if m["msg_type"] == "kernel_died")
    assert died["parent_header"]["msg_id"] == msg_id
    notice = next(
        m for m in seen if m["msg_type"] == "stream" and "the kernel died" in m["content"]["text"]
    )
    assert notice["parent_header"]["msg_id"] == msg_id
    assert "exited with code 7" in notice["content"]["text"]


# ------------------------------------------------------------------ bounds


class PeakRSS:
    """Samples a process's RSS in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.mark.timeout(120)
def test_memory_stays_bounded_under_300_mib_of_output(jupyter_env, nanny_factory) -> None:
    nanny = nanny_factory(
        add_kernel(jupyter_env, "nocap", capture=False), "--ring-size", "32M", "--no-spill", "-q"
    )
    kc = nanny.client()
    start_rss = psutil.Process(nanny.proc.pid).memory_info().rss
    sampler = PeakRSS(nanny.proc.pid)
    t0 = time.monotonic()
    try:
        run_cell(
            kc,
            "import os\n"
            "chunk = b''.join(b'%09d' % i + b'y' * 90 + b'\\n' for i in range(10485))\n"
            "for _ in range(300):\n"
            "    os.write(1, chunk)\n"
            "os.write(1, b''.join(b'final %03d\\n' % i for i in range(100)))",
            timeout=120,
        )
        want = [b"final %03d\n" % i for i in range(100)]
        wait_for(
            lambda: [r.data for r in history(nanny, last=100, streams=[Stream.STDOUT])] == want,
            60,
            "the last 100 lines to be the newest records",
            every=0.1,
        )
    finally:
        peak = sampler.stop()
    took = time.monotonic() - t0
    oldest = history(nanny, last=1, streams=[Stream.STDOUT])
    print(
        f"300 MiB through a 32 MiB ring in {took:.1f} s ({300 / took:.0f} MiB/s); nanny RSS "
        f"{start_rss / 2**20:.0f} MiB at start, peak {peak / 2**20:.0f} MiB"
    )
    assert oldest
    assert peak < 200 * 2**20


def test_rate_limit_drops_with_a_notice_and_the_store_keeps_everything(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q", "--rate-limit", "100k")
    kc = nanny.client()
    base = last_seq(nanny)
    total = 5_000_000
    cell = run_cell(
        kc,
        "import os\n"
        "data = b''.join(b'rl %06d ' % i + b'z' * 89 + b'\\n' for i in range(50000))\n"
        f"assert len(data) == {total}\n"
        "for i in range(0, len(data), 65536):\n"
        "    os.write(1, data[i : i + 65536])",
    )
    forwarded = len(cell.text("stdout"))
    notices = re.findall(r"\[nanny-io: dropped (\d+) bytes of stdout[^\]]*\]", cell.text("stderr"))
    assert notices, f"no drop notice parented to the cell: {cell.streams('stderr')}"
    dropped = sum(map(int, notices))
    print(f"rate limit 100k: forwarded {forwarded} of {total} bytes, notices say {dropped} dropped")
    assert forwarded < total // 10
    assert forwarded + dropped == total
    records = wait_for(
        lambda: (r := stored(nanny, Stream.STDOUT, base)) and len(r) >= 50000 and r,
        20,
        "50000 stored lines",
        every=0.1,
    )
    assert b"".join(r.data for r in records).startswith(b"rl 000000 ")
    assert sum(len(r.data) for r in records) == total


# ------------------------------------------------------------------ the spill


def test_spill_is_readable_after_the_nanny_exits(jupyter_env, nanny_factory) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "nocap", capture=False), "-q")
    kc = nanny.client()
    run_cell(kc, "import os\nfor i in range(50):\n    os.write(1, b'spilled %02d\\n' % i)")
    wait_for(
        lambda: stored_bytes(nanny, Stream.STDOUT).endswith(b"spilled 49\n"), 10, "stored lines"
    )
    assert nanny.stop() == 0
    proc = cli("tail", nanny.kernel_id, "-n", "20", "--stream", "stdout")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "post-mortem" in lines[0] or "nanny is gone" in lines[0]
    assert [line.split(maxsplit=2)[-1] for line in lines[1:]] == [
        f"spilled {i:02d}" for i in range(30, 50)
    ]


def test_an_unusable_spill_location_warns_once_and_capture_goes_on(
    jupyter_env, nanny_factory
) -> None:
    kernel_id = "0123abcd-unusable"
    blocker = jupyter_env.runtime / "nanny-io" / f"spill-{kernel_id}"
    blocker.parent.mkdir(parents=True, mode=0o700)
    blocker.write_text("a file where the spill directory should be")
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q", "--kernel-id", kernel_id)
    kc = nanny.client()
    cell = run_cell(kc, "import os\nfor i in range(200):\n    os.write(1, b'memory %03d\\n' % i)")
    assert cell.text("stdout").endswith("memory 199\n")
    wait_for(
        lambda: stored_bytes(nanny, Stream.STDOUT).endswith(b"memory 199\n"), 10, "stored lines"
    )
    warnings = [line for line in nanny.stderr_lines if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert str(blocker) in warnings[0]
    assert blocker.read_text() == "a file where the spill directory should be"
    assert not gone(nanny.proc.pid)


# ------------------------------------------------------------------ text at the idle boundary


def test_a_character_split_at_idle_does_not_leak_into_the_next_cell(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    kc = nanny.client()
    first = run_cell(kc, "import os; os.write(1, b'dangling \\xc3')")
    second = run_cell(kc, "os.write(1, b'\\xa9 next\\n')")
    # specs/output-sync.md §6: the decoder is finalised when a request's idle is released
    assert first.text("stdout") == "dangling \ufffd"
    assert second.text("stdout") == "\ufffd next\n"
    assert stored_bytes(nanny, Stream.STDOUT).endswith(b"dangling \xc3\xa9 next\n")


def test_a_trailing_escape_is_released_before_idle(jupyter_env, nanny_factory) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env, "plain", delimiters=False), "-q")
    kc = nanny.client()
    cell = run_cell(kc, "import os; os.write(1, b'prompt> \\x1b')")
    # any parent: what is checked here is the timing
    before_idle = "".join(
        m["content"]["text"] for m in cell.messages[: cell.idle_index] if m["msg_type"] == "stream"
    )
    assert before_idle.endswith("prompt> \x1b")


def test_output_with_nobody_watching_is_stored_and_later_frontends_get_theirs(
    jupyter_env, nanny_factory
) -> None:
    """With no iopub subscriber (the nanny then builds no stream messages) output is still
    stored, one subscriber leaving does not stop the other's, and a frontend that subscribes
    later gets the output from its welcome on."""
    from jupyter_client.blocking.client import BlockingKernelClient

    nanny = nanny_factory(add_kernel(jupyter_env, "cap"), "-q")
    first, second = nanny.client(), nanny.client()
    first.stop_channels()  # one of two subscribers leaves: the other still gets output
    assert run_cell(second, "print('still watched')").text("stdout") == "still watched\n"
    second.stop_channels()  # the last one leaves
    shell_only = BlockingKernelClient()
    shell_only.load_connection_file(str(nanny.connection_file))
    shell_only.start_channels(iopub=False, stdin=False, hb=False, control=False)
    try:
        before = last_seq(nanny)
        code = "import os\nfor i in range(3000):\n    os.write(1, b'unwatched %04d\\n' % i)\n"
        reply = shell_reply(shell_only, shell_only.execute(code))
        assert reply["status"] == "ok", reply
        expected = b"".join(b"unwatched %04d\n" % i for i in range(3000))
        wait_for(
            lambda: stored_bytes(nanny, Stream.STDOUT, before) == expected,
            30,
            "the unwatched output in the store",
        )
    finally:
        shell_only.stop_channels()
    late = nanny.client()  # a frontend subscribing later gets its output again
    assert run_cell(late, "print('watched again')").text("stdout") == "watched again\n"
