"""Load and churn: stuck and churning log subscribers, and many start/restart/shutdown cycles."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from typing import Any

import psutil
import pytest
import zmq
from helpers import NannyProcess, gone, history, iopub_until, wait_for, wait_gone
from reliability.support import (
    PeakRSS,
    add_kernel,
    cli,
    expression,
    fd_count,
    rss,
    run,
)

from nanny_io.discovery import load_connection_info
from nanny_io.zap import secure_client
from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.streams import Stream

MiB = 2**20

# ------------------------------------------------------------------ log subscribers under load

#: 50 MiB to stdout in 1 MiB writes; the kernel times itself.
BULK = (
    "import os, time\n"
    "chunk = b''.join(b'%09d' % i + b'z' * 92 + b'\\n' for i in range(10380))\n"
    "t0 = time.perf_counter()\n"
    "for _ in range(50):\n"
    "    os.write(1, chunk)\n"
    "elapsed = time.perf_counter() - t0\n"
    "os.write(1, b'BULK DONE %d\\n' % {n})\n"
)


def _bulk(nanny: NannyProcess, kc: Any, n: int) -> tuple[float, float]:
    """One 50 MiB write: (seconds the kernel's writes took, seconds until the store had it)."""
    t0 = time.monotonic()
    reply = run(kc, BULK.format(n=n), timeout=120, user_expressions={"elapsed": "elapsed"})
    marker = b"BULK DONE %d\n" % n
    wait_for(
        lambda: [r.data for r in history(nanny, last=1, streams=[Stream.STDOUT])] == [marker],
        60,
        f"bulk write {n} in the store",
        every=0.05,
    )
    return float(expression(reply, "elapsed")), time.monotonic() - t0


class Churn:
    """Log subscribers that connect, wait for the nanny's greeting tick, and leave."""

    def __init__(self, ctx: zmq.Context, info: NannyConnectionInfo, count: int) -> None:
        self.ctx, self.info, self.count = ctx, info, count
        self.greeted = 0
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            for i in range(self.count):
                sock = self.ctx.socket(zmq.SUB)
                sock.linger = 0
                sock.subscribe(b"" if i % 2 else b"tick")
                secure_client(sock, self.info, "log")
                sock.connect(self.info.url("log"))
                if sock.poll(10_000):
                    self.greeted += 1
                sock.close()
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.seconds = time.monotonic() - t0

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


def _stuck_and_churning_subscribers(
    jupyter_env: Any, nanny_factory: Any, stuck_count: int, churn_count: int, check: str
) -> None:
    """Baseline 50 MiB writes, then the same with stuck and churning log subscribers.

    ``check`` is what is asserted: "speed" (kernel and store timing, every subscriber
    greeted, connections released) or "memory" (the nanny's peak RSS).
    """
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--no-spill", "--ring-size", "64M")
    kc = nanny.client()
    pid = nanny.proc.pid
    info = load_connection_info(nanny.connection_file)
    fds_before = fd_count(pid)
    base_rss = PeakRSS(pid)
    base = [_bulk(nanny, kc, n) for n in range(3)]
    base_peak = base_rss.stop()
    base_kernel = statistics.median(k for k, _ in base)
    base_stored = statistics.median(s for _, s in base)

    ctx = zmq.Context()
    stuck = []
    try:
        for _ in range(stuck_count):
            sock = ctx.socket(zmq.SUB)
            sock.linger = 0
            sock.rcvhwm = 1
            sock.rcvbuf = 4096
            sock.subscribe(b"")
            secure_client(sock, info, "log")
            sock.connect(info.url("log"))
            stuck.append(sock)
        for sock in stuck:  # each subscription reached the nanny: it greets every new one
            assert sock.poll(10_000), "a subscriber was never greeted"
        load_rss = PeakRSS(pid)
        churn = Churn(ctx, info, churn_count)
        loaded = []
        writes = 8 if check == "memory" else 1  # memory: 400 MiB at least, whatever the churn
        while churn.running or len(loaded) < writes:
            loaded.append(_bulk(nanny, kc, 10 + len(loaded)))
        churn.thread.join()
        load_peak = load_rss.stop()
        assert churn.error is None, churn.error
        fds_loaded = fd_count(pid)
    finally:
        for sock in stuck:
            sock.close()
        ctx.term()
    worst_kernel = max(k for k, _ in loaded)
    worst_stored = max(s for _, s in loaded)
    print(
        f"50 MiB write, baseline: kernel {base_kernel:.2f} s, stored after {base_stored:.2f} s, "
        f"nanny peak RSS {base_peak / MiB:.0f} MiB; with {stuck_count} stuck subscribers and "
        f"{churn_count} churning ({churn.seconds:.1f} s, {churn.greeted} greeted), "
        f"{len(loaded)} writes: worst kernel {worst_kernel:.2f} s, worst stored after "
        f"{worst_stored:.2f} s, nanny peak RSS {load_peak / MiB:.0f} MiB; nanny fds "
        f"{fds_before} before, {fds_loaded} loaded"
    )
    if check == "memory":
        assert load_peak < base_peak + 128 * MiB
        return
    assert churn.greeted == churn_count  # every subscriber was served
    assert worst_kernel < 3 * base_kernel + 2
    assert worst_stored < 3 * base_stored + 5
    # every connection is let go once its subscriber has gone
    fds_after = wait_for(
        lambda: (n := fd_count(pid)) <= fds_before + 2 and n, 15, "the nanny's fds released"
    )
    print(f"nanny fds after the subscribers left: {fds_after}; RSS {rss(pid) / MiB:.0f} MiB")
    assert run(kc, "print('alive')")["status"] == "ok"


@pytest.mark.timeout(120)
def test_stuck_and_churning_log_subscribers_do_not_slow_the_kernel(
    jupyter_env, nanny_factory
) -> None:
    _stuck_and_churning_subscribers(jupyter_env, nanny_factory, 50, 200, "speed")


@pytest.mark.timeout(120)
def test_stuck_and_churning_log_subscribers_do_not_grow_the_nanny(
    jupyter_env, nanny_factory
) -> None:
    _stuck_and_churning_subscribers(jupyter_env, nanny_factory, 50, 200, "memory")


#: 300 MiB to stdout in 1 MiB writes.
FLOOD_300 = (
    "import os\n"
    "chunk = b''.join(b'%09d' % i + b'z' * 92 + b'\\n' for i in range(10380))\n"
    "for _ in range(300):\n"
    "    os.write(1, chunk)\n"
)


@pytest.mark.timeout(120)
def test_a_log_subscriber_that_never_reads_does_not_grow_the_nanny(
    jupyter_env, nanny_factory
) -> None:
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--no-spill", "--ring-size", "32M")
    kc = nanny.client()
    pid = nanny.proc.pid
    info = load_connection_info(nanny.connection_file)
    sampler = PeakRSS(pid)
    run(kc, FLOOD_300 + "os.write(1, b'FLOOD DONE 1\\n')", timeout=120)
    wait_for(
        lambda: history(nanny, last=1, streams=[Stream.STDOUT])[0].data == b"FLOOD DONE 1\n",
        60,
        "the first flood stored",
    )
    base_peak = sampler.stop()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.rcvhwm = 1
    sock.rcvbuf = 4096
    sock.subscribe(b"")
    secure_client(sock, info, "log")
    sock.connect(info.url("log"))
    try:
        assert sock.poll(10_000), "the subscriber was never greeted"
        sampler = PeakRSS(pid)
        run(kc, FLOOD_300 + "os.write(1, b'FLOOD DONE 2\\n')", timeout=120)
        wait_for(
            lambda: history(nanny, last=1, streams=[Stream.STDOUT])[0].data == b"FLOOD DONE 2\n",
            60,
            "the second flood stored",
        )
        stuck_peak = sampler.stop()
    finally:
        sock.close()
        ctx.term()
    print(
        f"300 MiB through a 32 MiB ring: nanny peak RSS {base_peak / MiB:.0f} MiB without "
        f"subscribers, {stuck_peak / MiB:.0f} MiB with one that never reads"
    )
    assert stuck_peak < base_peak + 96 * MiB


# ------------------------------------------------------------------ start/restart/shutdown cycles


def _listening(pids: set[int], ports: set[int]) -> list[Any]:
    return [
        c
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and (c.pid in pids or c.laddr.port in ports)
    ]


def _ports(nanny: NannyProcess) -> set[int]:
    info = load_connection_info(nanny.connection_file)
    return {
        info.shell_port,
        info.iopub_port,
        info.stdin_port,
        info.control_port,
        info.hb_port,
        info.log_port,
        info.log_replay_port,
    }


def _restart(nanny: NannyProcess, kc: Any, number: int) -> int:
    """Restart through the control channel; the new kernel's pid once it runs a cell."""
    msg = kc.session.msg("shutdown_request", {"restart": True})
    kc.control_channel.send(msg)
    restarted = iopub_until(kc, lambda m: m["msg_type"] == "kernel_restarted", timeout=60)[-1]
    assert restarted["content"]["incarnation"] == number
    reply = run(kc, "import os", user_expressions={"pid": "os.getpid()"})
    pid = int(expression(reply, "pid"))
    assert pid == restarted["content"]["pid"]
    return pid


def _stop(nanny: NannyProcess, kc: Any, how: str) -> None:
    """End a nanny: shutdown_request on control, SIGTERM, or ``nanny-io shutdown``."""
    if how == "control":
        kc.control_channel.send(kc.session.msg("shutdown_request", {"restart": False}))
    elif how == "sigterm":
        nanny.proc.send_signal(signal.SIGTERM)
    else:
        proc = cli("shutdown", nanny.kernel_id)
        assert proc.returncode == 0, proc.stderr
    assert nanny.proc.wait(60) == 0


def _cycles(jupyter_env: Any, nanny_factory: Any, lifetimes: int, restarts: int) -> None:
    name = add_kernel(jupyter_env)
    seen_pids: set[int] = set()
    seen_ports: set[int] = set()
    fd_trend: list[tuple[int, int]] = []
    cycles = 0
    t0 = time.monotonic()
    for life in range(lifetimes):
        nanny = nanny_factory(name, "-q", "--no-spill")
        kc = nanny.client()
        seen_pids |= {nanny.proc.pid, *nanny.tree_pids()}
        seen_ports |= _ports(nanny)
        fds = []
        for number in range(2, restarts + 2):
            previous = set(nanny.tree_pids())
            seen_pids.add(_restart(nanny, kc, number))
            seen_pids |= set(nanny.tree_pids())
            cycles += 1
            fds.append(fd_count(nanny.proc.pid))
            old_kernel = previous - set(nanny.tree_pids())
            assert wait_gone(list(old_kernel), timeout=10) == []
        fd_trend.append((fds[0], fds[-1]))
        # the fd count is stable across restarts: after the first, it never grows
        assert max(fds) <= fds[0] + 2, f"fds grow across restarts: {fds}"
        tree = nanny.tree_pids()
        _stop(nanny, kc, ("control", "sigterm", "cli")[life % 3])
        kc.stop_channels()
        nanny.clients.clear()
        cycles += 1
        assert wait_gone(tree, timeout=10) == []
        assert not nanny.connection_file.exists()
    took = time.monotonic() - t0
    alive = [p for p in seen_pids if not gone(p)]
    assert alive == [], f"leaked processes: {alive}"
    listening = wait_for(
        lambda: not _listening(seen_pids, seen_ports) or None, 10, "no LISTEN socket left"
    )
    assert listening is True
    left = list((jupyter_env.runtime / "nanny-io").glob("nanny-*.json"))
    assert left == [], left
    print(
        f"{cycles} cycles ({lifetimes} nannies x {restarts} restarts + stop) in {took:.0f} s; "
        f"{len(seen_pids)} processes, {len(seen_ports)} ports, none left; nanny fds "
        f"(first, last restart) per nanny: {fd_trend}"
    )


@pytest.mark.timeout(120)
def test_a_few_restart_and_stop_cycles_leak_nothing(jupyter_env, nanny_factory) -> None:
    _cycles(jupyter_env, nanny_factory, lifetimes=3, restarts=3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_hundred_restart_and_stop_cycles_leak_nothing(jupyter_env, nanny_factory) -> None:
    _cycles(jupyter_env, nanny_factory, lifetimes=10, restarts=9)


@pytest.mark.timeout(30)
def test_nothing_of_ours_is_listening_after_the_suite_helpers() -> None:
    """The LISTEN check itself works: a socket we hold is found, and gone once closed."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        assert _listening({os.getpid()}, set())
        assert _listening(set(), {port})
    finally:
        sock.close()
    assert not _listening({os.getpid()}, {port})
