"""The facts behind a death report, on fake /proc and cgroup trees (cgroup v1 and v2, which
this machine cannot both have) and a real log store."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import pytest
from helpers import wait_for

from nanny_io.cgroups import OomWatch, memory_cgroups, read_limit
from nanny_io.deathwatch import CellWatch, last_words, tree_rss
from nanny_io.store import LogStore
from nanny_io_proto.deaths import OomKill
from nanny_io_proto.streams import FLAG_IOPUB, Stream

V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTINFO = (
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def _proc(tmp_path: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "42").mkdir()
    (proc / "self" / "mountinfo").write_text(mountinfo.replace("/sys/fs", str(tmp_path / "sys")))
    (proc / "42" / "cgroup").write_text(cgroup)
    (proc / "vmstat").write_text("nr_free_pages 1\noom_kill 7\n")
    return proc


def _v2(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "sys" / "cgroup"
    pod = root / "kubepods" / "pod1"
    kernel = pod / "kernel"
    kernel.mkdir(parents=True)
    for d, limit in ((root, None), (root / "kubepods", None), (pod, 2 << 30), (kernel, None)):
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
        (d / "memory.events.local").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
        (d / "memory.max").write_text("max\n" if limit is None else f"{limit}\n")
    return root, pod, kernel


def test_v2_an_enclosing_limit(tmp_path: Path) -> None:
    _, pod, kernel = _v2(tmp_path)
    proc = _proc(tmp_path, V2_MOUNTINFO, "0::/kubepods/pod1/kernel\n")
    levels = memory_cgroups(42, proc)
    assert [lv.name for lv in levels] == [
        "/kubepods/pod1/kernel",
        "/kubepods/pod1",
        "/kubepods",
        "/",
    ]
    assert levels[0].directory == kernel and levels[0].version == 2
    assert read_limit(levels[0]) is None and read_limit(levels[1]) == 2 << 30
    watch = OomWatch(levels, proc)
    assert watch.checkable and watch.check() is None
    # The pod's limit was hit; the kill is counted in the kernel's cgroup and above.
    (pod / "memory.events.local").write_text("oom 1\noom_kill 0\n")
    for d in (kernel, pod):
        (d / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert watch.check() == OomKill(True, "parent", 2 << 30, "/kubepods/pod1")


def test_v2_its_own_limit(tmp_path: Path) -> None:
    _, _, kernel = _v2(tmp_path)
    (kernel / "memory.max").write_text("268435456\n")
    proc = _proc(tmp_path, V2_MOUNTINFO, "0::/kubepods/pod1/kernel\n")
    watch = OomWatch(memory_cgroups(42, proc), proc)
    (kernel / "memory.events.local").write_text("oom 3\n")
    (kernel / "memory.events").write_text("oom 3\noom_kill 1\n")
    assert watch.check() == OomKill(True, "kernel", 256 << 20, "/kubepods/pod1/kernel")


def test_v1_in_a_namespace_and_no_limit_anywhere(tmp_path: Path) -> None:
    base = tmp_path / "sys" / "cgroup" / "memory"
    kernel = base / "jobs" / "k"
    kernel.mkdir(parents=True)
    for d in (base, base / "jobs", kernel):
        (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
        (d / "memory.failcnt").write_text("0\n")
        (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc = _proc(tmp_path, V1_MOUNTINFO, "9:pids:/\n4:memory:/jobs/k\n0::/\n")
    levels = memory_cgroups(42, proc)
    assert [lv.name for lv in levels] == ["/jobs/k", "/jobs", "/"]
    assert levels[0].version == 1
    watch = OomWatch(levels, proc)
    (kernel / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert watch.check() == OomKill(True, "host")


def test_without_cgroups_the_machine_wide_counter_says_probably(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "", "0::/\n")
    watch = OomWatch.of(42, proc)
    assert watch.levels == [] and watch.checkable
    assert watch.check() is None
    (proc / "vmstat").write_text("oom_kill 8\n")
    assert watch.check() == OomKill(False, "host")
    (proc / "vmstat").unlink()
    assert not OomWatch.of(42, proc).checkable


def test_a_gone_process_has_no_cgroups(tmp_path: Path) -> None:
    proc = _proc(tmp_path, V2_MOUNTINFO, "0::/\n")
    assert memory_cgroups(4242, proc) == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _put(store: LogStore, clock: Clock, stream: Stream, text: bytes, flags: int = 0) -> None:
    store.append(stream, 1, int(clock.now * 1e9), [(text, flags)])


def test_a_cell_owns_what_it_wrote_before_its_busy_arrived_but_not_older_output() -> None:
    store = LogStore(epoch="e1")
    clock = Clock()
    cells = CellWatch(store, clock)
    _put(store, clock, Stream.STDOUT, b"banner\n")
    cells.quiet()  # ready
    clock.now += 100
    _put(store, clock, Stream.STDOUT, b"previous cell\n", FLAG_IOPUB)
    cells.quiet()  # its idle
    clock.now += 100
    _put(store, clock, Stream.STDERR, b"background noise, long ago\n")
    clock.now += 100
    _put(store, clock, Stream.STDERR, b"first bytes of the cell\n")  # before its busy
    clock.now += 0.2
    cells.started("m1")
    cells.execute_input("m1", {"execution_count": 5, "code": "run()\n"})
    _put(store, clock, Stream.STDOUT, b"printed\n", FLAG_IOPUB)
    clock.now += 3
    running = cells.running("m1")
    assert running is not None
    cell, since = running
    assert (cell.execution_count, cell.code, cell.duration) == (5, "run()", pytest.approx(3.0))
    words = last_words(store, 1, since)
    assert words.lines == (
        ("stderr", "first bytes of the cell", 4),
        ("stdout", "printed", 6),
    )
    assert cells.running("unknown") is None and cells.running(None) is None
    idle = last_words(store, 1, None)
    assert idle.lines[0][:2] == ("stdout", "banner") and idle.lines[-1][:2] == ("stdout", "printed")


def test_the_tree_memory_is_what_psutil_sees_for_the_same_processes() -> None:
    child = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & wait"])  # a child and a grandchild
    try:
        wait_for(lambda: psutil.Process(child.pid).children(), 10, "the grandchild")
        procs = psutil.Process().children(recursive=True)
        assert len(procs) == 2
        assert tree_rss(os.getpid()) == sum(p.memory_info().rss for p in procs) > 0
    finally:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        child.wait()
