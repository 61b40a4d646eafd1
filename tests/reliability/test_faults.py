"""Faults: kernels and nannies that die, stop or lose their disk, with real processes and pipes.

Every test polls for what it waits for, with a deadline; none sleeps in place of an event.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
import zmq
from helpers import NannyProcess, gone, history, iopub_until, stored, wait_for, wait_gone
from reliability.support import (
    add_kernel,
    cli,
    hb_ping,
    is_dead,
    nanny_events,
    run,
    shell_reply,
)

from nanny_io.discovery import load_connection_info
from nanny_io.store import read_spill
from nanny_io_proto.streams import Stream

# ------------------------------------------------------------------ the kernel dies mid-output

#: Subprocesses that write short (atomic) lines to the kernel's stdout and stderr until killed,
#: in bursts (about 20 000 lines a second each) so that the ring keeps the kernel's lines.
STORM = (
    "import os, sys, time\n"
    "k = int(sys.argv[1])\n"
    "i = 0\n"
    "while True:\n"
    "    os.write(1 + i % 2, b'storm %d %09d\\n' % (k, i))\n"
    "    i += 1\n"
    "    if i % 20 == 0:\n"
    "        time.sleep(0.001)\n"
)

#: The kernel numbers its lines on stdout and on the log FIFO, and after both writes returned
#: records the number in a counter file (pwrite: it survives the process). ``{die}`` ends it.
NUMBERED = """
import ctypes, os, subprocess, sys
storm = [subprocess.Popen([sys.executable, '-c', {storm!r}, str(k)]) for k in range(4)]
log = os.open(os.environ['JUPYTER_KERNEL_LOG'], os.O_WRONLY)
counter = os.open({counter!r}, os.O_RDWR | os.O_CREAT, 0o600)
i = 0
while True:
    line = b'kernel %09d\\n' % i
    os.write(1, line)
    os.write(log, line)
    os.pwrite(counter, b'%09d' % i, 0)
    if i == {die_at}:
        {die}
    i += 1
"""

DEATHS = {
    # name: (how the kernel dies, exit_code, signal)
    "sigkill": (None, None, signal.SIGKILL),  # killed from outside by the test
    "segfault": ("ctypes.string_at(0)", None, signal.SIGSEGV),
    "exit": ("os._exit(7)", 7, None),
}
KERNEL_LINE = re.compile(rb"kernel (\d{9})\n")


def _numbers(records: list, stream: Stream) -> list[int]:
    out = []
    for rec in records:
        if rec.stream is stream and rec.data.startswith(b"kernel "):
            m = KERNEL_LINE.fullmatch(rec.data)
            assert m is not None, f"torn kernel line on {stream.value}: {rec.data[:60]!r}"
            out.append(int(m[1]))
    return out


@pytest.mark.timeout(90)
@pytest.mark.parametrize("death", list(DEATHS))
def test_a_dying_kernel_loses_no_record_and_its_death_is_reported(
    death: str, jupyter_env, nanny_factory, tmp_path: Path
) -> None:
    how, exit_code, signum = DEATHS[death]
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--ring-size", "256M")
    kc = nanny.client()
    counter = tmp_path / "counter"
    code = NUMBERED.format(
        storm=STORM,
        counter=str(counter),
        die_at=3000 if how else -1,
        die=how or "pass",
    )
    msg_id = kc.execute(code)
    if how is None:  # SIGKILL from outside, mid-output
        wait_for(
            lambda: (
                counter.exists()
                and counter.read_bytes()[:9].isdigit()
                and int(counter.read_bytes()[:9]) >= 3000
            ),
            30,
            "3000 numbered lines",
        )
        os.kill(nanny.state()["kernel_pid"], signal.SIGKILL)
    seen = iopub_until(kc, is_dead, timeout=30)
    reported = int(counter.read_bytes()[:9])
    died = [m for m in seen if m["msg_type"] == "kernel_died"]
    assert len(died) == 1, [m["msg_type"] for m in seen]
    content = died[0]["content"]
    assert content["exit_code"] == exit_code
    assert content["signal"] == (int(signum) if signum else None)
    assert content["signal_name"] == (signum.name if signum else None)
    assert content["incarnation"] == 1
    assert died[0]["parent_header"]["msg_id"] == msg_id
    assert seen[-1]["parent_header"]["msg_id"] == msg_id
    if how is not None:
        assert reported == 3000

    records = history(nanny, since_seq=1)
    assert records[0].seq == 1, "the ring evicted part of the log: the test needs a bigger one"
    for stream in (Stream.STDOUT, Stream.LOG):
        numbers = _numbers(records, stream)
        assert numbers[: reported + 1] == list(range(reported + 1)), (
            f"{stream.value}: {len(numbers)} numbered lines, the kernel reported writing "
            f"{reported + 1}"
        )
        assert numbers == list(range(len(numbers)))  # nothing more than a contiguous run
        assert len(numbers) <= reported + 2  # at most the line whose count was not recorded
    storm_lines = sum(1 for r in records if r.data.startswith(b"storm "))
    assert storm_lines > 0, "the storm wrote nothing: the test proves less than it says"
    events = nanny_events(records)
    (died_seq,) = [seq for seq, e in events if e["event"] == "kernel_died"]
    last_kernel_seq = max(r.seq for r in records if r.data.startswith(b"kernel "))
    assert died_seq > last_kernel_seq  # the death comes after the last words
    assert nanny.wait_status("dead")["status"] == "dead"
    if signum is not None:
        assert nanny.state()["exit_signal"] == int(signum)
    else:
        assert nanny.state()["exit_code"] == exit_code
    print(
        f"{death}: {reported + 1} numbered lines reported written, all stored in order on "
        f"stdout and the log FIFO, among {storm_lines} storm lines"
    )


# ------------------------------------------------------------------ the nanny is SIGKILLed

SPEW_WITH_CHILDREN = """
import os, subprocess, sys
stubborn = "import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(600)"
children = [
    subprocess.Popen([sys.executable, '-c', stubborn], start_new_session=True),
    subprocess.Popen([sys.executable, '-c', stubborn]),
    subprocess.Popen(['sh', '-c', 'sleep 600 & sleep 600 & wait']),
]
with open({pids!r} + '.tmp', 'w') as f:
    f.write(' '.join(str(c.pid) for c in children))
os.rename({pids!r} + '.tmp', {pids!r})
counter = os.open({counter!r}, os.O_RDWR | os.O_CREAT, 0o600)
i = 0
while True:
    os.write(1, b'spew %09d ' % i + b'.' * 100 + b'\\n')
    os.pwrite(counter, b'%09d' % i, 0)
    i += 1
"""
SPEW_LINE = re.compile(rb"spew (\d{9}) \.{100}\n")


@pytest.mark.timeout(60)
def test_sigkill_of_the_nanny_mid_output_leaves_nothing_and_a_spill_prefix(
    jupyter_env, nanny_factory, tmp_path: Path
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    pids_file, counter = tmp_path / "pids", tmp_path / "counter"
    kc.execute(SPEW_WITH_CHILDREN.format(pids=str(pids_file), counter=str(counter)))
    children = [
        int(p) for p in wait_for(pids_file.exists, 30, "children") and pids_file.read_text().split()
    ]
    wait_for(
        lambda: counter.read_bytes()[:9].isdigit() and int(counter.read_bytes()[:9]) >= 50_000,
        30,
        "50 000 lines of output",
    )
    tree = nanny.tree_pids()
    assert set(children) <= set(tree)
    assert len(tree) >= 7  # guardian, kernel, 3 children, 2 sleeps of the shell
    spill_dir = Path(nanny.state()["spill_dir"])
    os.kill(nanny.proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    nanny.proc.wait(10)
    survivors = wait_gone(tree, timeout=5)
    took = time.monotonic() - t0
    assert survivors == [], f"survived their nanny: {survivors}"
    print(f"{len(tree)} processes gone {took:.2f} s after the nanny's SIGKILL")
    wait_for(lambda: not nanny.connection_file.exists(), 5, "the connection file removed")

    records = [rec for _, rec in read_spill(spill_dir)]
    seqs = [r.seq for r in records]
    assert seqs == sorted(set(seqs))
    out = b"".join(r.data for r in records if r.stream is Stream.STDOUT)
    out = out[out.index(b"spew 000000000 ") :]  # after ipykernel's start-up notes
    lines = out.split(b"\n")
    complete, partial = [line + b"\n" for line in lines[:-1]], lines[-1]
    numbers = []
    for line in complete:
        m = SPEW_LINE.fullmatch(line)
        assert m is not None, f"not a spew line: {line[:60]!r}"
        numbers.append(int(m[1]))
    assert numbers == list(range(len(numbers))), "the spill is not a contiguous prefix"
    assert len(numbers) > 1000
    assert (b"spew %09d " % len(numbers) + b"." * 100).startswith(partial)
    print(f"spill after the nanny's SIGKILL: lines 0..{len(numbers) - 1} contiguous")


# ------------------------------------------------------------------ a stopped kernel


@pytest.mark.timeout(90)
def test_a_stopped_kernel_keeps_the_nanny_serving_and_shuts_down_by_sigkill(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--shutdown-grace", "1")
    kc = nanny.client()
    run(kc, "import os\nfor i in range(10):\n    os.write(1, b'before stop %02d\\n' % i)")
    wait_for(
        lambda: [r.data for r in stored(nanny, Stream.STDOUT)][-1:] == [b"before stop 09\n"],
        10,
        "the lines in the store",
    )
    child = int(
        run(
            kc,
            "import subprocess, time\nchild = subprocess.Popen(['sleep', '600'])",
            user_expressions={"pid": "child.pid"},
        )["user_expressions"]["pid"]["data"]["text/plain"]
    )
    msg_id = kc.execute("time.sleep(120)")
    iopub_until(kc, lambda m: m["msg_type"] == "execute_input")
    kernel_pid = nanny.state()["kernel_pid"]
    info = load_connection_info(nanny.connection_file)
    ctx = zmq.Context()
    try:
        os.killpg(kernel_pid, signal.SIGSTOP)
        wait_for(lambda: psutil.Process(kernel_pid).status() == psutil.STATUS_STOPPED, 5, "stopped")
        assert hb_ping(ctx, info.url("hb")), "the heartbeat went silent with a stopped kernel"
        tail = cli("tail", nanny.kernel_id, "-n", "5", "--stream", "stdout", timeout=30)
        assert tail.returncode == 0, tail.stderr
        shown = [line.split(maxsplit=2)[-1] for line in tail.stdout.splitlines()]
        assert shown[-5:] == [f"before stop {i:02d}" for i in range(5, 10)], tail.stdout

        os.killpg(kernel_pid, signal.SIGCONT)
        interrupted = cli("interrupt", nanny.kernel_id, timeout=30)
        assert interrupted.returncode == 0, interrupted.stderr
        reply = shell_reply(kc, msg_id, timeout=15)
        assert reply["ename"] == "KeyboardInterrupt"

        tree = nanny.tree_pids()
        assert child in tree
        os.killpg(kernel_pid, signal.SIGSTOP)
        wait_for(lambda: psutil.Process(kernel_pid).status() == psutil.STATUS_STOPPED, 5, "stopped")
        t0 = time.monotonic()
        down = cli("shutdown", nanny.kernel_id, timeout=60)
        took = time.monotonic() - t0
        assert down.returncode == 0, down.stderr
        assert nanny.proc.wait(30) == 0
        assert wait_gone(tree, timeout=5) == []
        assert "terminating its process tree" in nanny.stderr
        print(f"shutdown of a stopped kernel (grace 1 s, then SIGTERM, SIGKILL): {took:.2f} s")
        assert took < 15
    finally:
        ctx.term()


# ------------------------------------------------------------------ the spill cannot be used

SPILL_WARNING = "log spill off"


def _spill_warnings(nanny: NannyProcess) -> list[str]:
    return [line for line in nanny.stderr_lines if SPILL_WARNING in line]


@pytest.mark.timeout(60)
def test_a_read_only_spill_location_means_memory_only_with_one_warning(
    jupyter_env, nanny_factory
) -> None:
    kernel_id = "5eadbeef-readonly"
    state_dir = jupyter_env.runtime / "nanny-io"
    state_dir.mkdir(parents=True, mode=0o700)
    target = Path("/proc/self/fdinfo")  # a directory nobody, root included, can write in
    (state_dir / f"spill-{kernel_id}").symlink_to(target)
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--kernel-id", kernel_id)
    kc = nanny.client()
    run(kc, "import os\nfor i in range(3000):\n    os.write(1, b'ro %04d\\n' % i)")
    want = [b"ro %04d\n" % i for i in range(3000)]
    wait_for(
        lambda: [r.data for r in stored(nanny, Stream.STDOUT)][-3000:] == want, 15, "3000 lines"
    )
    warnings = _spill_warnings(nanny)
    assert len(warnings) == 1, nanny.stderr
    assert "memory only" in warnings[0]
    assert list(read_spill(state_dir / f"spill-{kernel_id}")) == []
    assert run(kc, "print('alive')")["status"] == "ok"
    assert not gone(nanny.proc.pid)


FILL = "import os\nfor i in range(4000):\n    os.write(1, b'full %05d ' % i + b'#' * 500 + b'\\n')"
FULL_LINE = re.compile(rb"full (\d{5}) #{500}\n")


@pytest.mark.timeout(60)
def test_a_full_disk_mid_run_means_memory_only_with_one_warning(jupyter_env, nanny_factory) -> None:
    """The spill works, then writes fail (RLIMIT_FSIZE: EFBIG, as a quota or full disk)."""
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    run(kc, "import os\nos.write(1, b'first line\\n')")
    spill_dir = Path(nanny.state()["spill_dir"])
    wait_for(
        lambda: any(r.data == b"first line\n" for _, r in read_spill(spill_dir)),
        10,
        "the spill working",
    )
    limit = 256 * 1024
    psutil.Process(nanny.proc.pid).rlimit(psutil.RLIMIT_FSIZE, (limit, limit))
    run(kc, FILL)
    want = [b"full %05d " % i + b"#" * 500 + b"\n" for i in range(4000)]
    wait_for(
        lambda: [r.data for r in stored(nanny, Stream.STDOUT)][-4000:] == want,
        15,
        "4000 lines in the store",
    )
    warnings = _spill_warnings(nanny)
    assert len(warnings) == 1, nanny.stderr
    assert "memory only" in warnings[0]
    spilled = [r for _, r in read_spill(spill_dir) if r.stream is Stream.STDOUT]
    start = [r.data for r in spilled].index(b"first line\n") + 1
    numbers = [int(m[1]) for r in spilled[start:] if (m := FULL_LINE.fullmatch(r.data))]
    assert len(numbers) == len(spilled) - start, "a torn record in the spill"
    assert numbers == list(range(len(numbers)))
    assert 0 < len(numbers) < 4000
    assert all(p.stat().st_size <= limit for p in spill_dir.iterdir())
    run(kc, "os.write(1, b'after the disk filled\\n')")
    wait_for(
        lambda: stored(nanny, Stream.STDOUT)[-1].data == b"after the disk filled\n",
        10,
        "capture going on",
    )
    assert len(_spill_warnings(nanny)) == 1
    print(f"disk full after {len(numbers)} of 4000 lines: spill stopped, store complete")
