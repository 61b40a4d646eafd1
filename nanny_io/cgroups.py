"""Out-of-memory kills as Linux memory cgroups count them, read without privileges.

A SIGKILL says nothing about who sent it. The kernel's memory cgroup does: it counts the
processes the out-of-memory killer ended (``oom_kill`` in ``memory.events`` on cgroup v2,
in ``memory.oom_control`` on v1) and how often a limit was hit (``oom`` in
``memory.events.local`` on v2, ``memory.failcnt`` on v1). The nanny reads the counters of
the kernel's cgroup and of every cgroup above it when the kernel starts and again when it
died: a moved ``oom_kill`` means the out-of-memory killer, and the lowest cgroup whose limit
was hit says whether it was the kernel's own limit or an enclosing one (a container's, a
pod's). Where no cgroup can be read, ``/proc/vmstat`` counts kills machine-wide: a moved
counter there only makes the out-of-memory killer probable.

Every file read here is world-readable in a container; nothing is written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from nanny_io_proto.deaths import OomKill

#: cgroup v2 and v1 write "max" or a page-rounded 2**63 for "no limit".
_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class CgroupLevel:
    """One memory cgroup on the way from the kernel's up to the root."""

    directory: Path
    name: str  # the cgroup's path as /proc/PID/cgroup shows it ("/kubepods/pod1/c1")
    version: int  # 1 or 2


@dataclass(frozen=True)
class Counters:
    """A cgroup's out-of-memory counters at one moment (None: not readable)."""

    oom_kill: int | None
    limit_hit: int | None


def _mounts(mountinfo: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(root, mount point) of the v1 memory mounts and of the v2 mounts."""
    v1: list[tuple[str, str]] = []
    v2: list[tuple[str, str]] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup2":
            v2.append((root, point))
        elif fstype == "cgroup" and "memory" in options.split(","):
            v1.append((root, point))
    return v1, v2


def _under(root: str, point: str, name: str) -> Path | None:
    """Where cgroup ``name`` is under a mount of ``root`` at ``point`` (None: not in it)."""
    if root == "/":
        return Path(point + name.rstrip("/")) if name != "/" else Path(point)
    if name == root or name.startswith(root.rstrip("/") + "/"):
        return Path(point + name[len(root) :])
    return None


def memory_cgroups(pid: int | str = "self", proc: Path = Path("/proc")) -> list[CgroupLevel]:
    """The memory cgroups of process ``pid``, its own first, up to the top one visible.

    Empty when the process is gone, the system has no memory cgroups, or they are not
    mounted where this process can see them.
    """
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
        v1_mounts, v2_mounts = _mounts((proc / "self" / "mountinfo").read_text())
    except OSError:
        return []
    found: tuple[str, int, list[tuple[str, str]]] | None = None
    for line in lines:
        hid, _, rest = line.partition(":")
        controllers, _, name = rest.partition(":")
        if "memory" in controllers.split(",") and v1_mounts:
            found = (name, 1, v1_mounts)
            break
        if hid == "0" and controllers == "" and v2_mounts:
            found = (name, 2, v2_mounts)  # keep looking: a v1 memory controller wins
    if found is None:
        return []
    name, version, mounts = found
    for root, point in mounts:
        directory = _under(root, point, name)
        if directory is None or not directory.is_dir():
            continue
        if version == 2 and not (directory / "memory.events").exists() and directory != Path(point):
            continue  # the memory controller is not enabled there
        levels = []
        top = Path(point)
        while True:
            levels.append(CgroupLevel(directory, name or "/", version))
            if directory == top or directory.parent == directory:
                break
            directory = directory.parent
            name = name.rsplit("/", 1)[0] or "/"
        return levels
    return []


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_counters(level: CgroupLevel) -> Counters:
    """The out-of-memory counters of one cgroup."""
    d = level.directory
    if level.version == 1:
        return Counters(
            _keyed(d / "memory.oom_control").get("oom_kill"), _number(d / "memory.failcnt")
        )
    events = _keyed(d / "memory.events")
    local = _keyed(d / "memory.events.local")
    return Counters(events.get("oom_kill"), local.get("oom", events.get("oom")))


def read_limit(level: CgroupLevel) -> int | None:
    """The cgroup's memory limit in bytes; None when it has none."""
    name = "memory.limit_in_bytes" if level.version == 1 else "memory.max"
    limit = _number(level.directory / name)
    return None if limit is None or limit >= _NO_LIMIT else limit


def read_vmstat_oom_kills(proc: Path = Path("/proc")) -> int | None:
    """Processes the out-of-memory killer ended on this machine since boot (Linux >= 4.13)."""
    return _keyed(proc / "vmstat").get("oom_kill")


class OomWatch:
    """Out-of-memory counters of one kernel process, read before and after its death."""

    def __init__(self, levels: list[CgroupLevel], proc: Path = Path("/proc")) -> None:
        self.levels = levels
        self.proc = proc
        self.before = [read_counters(level) for level in levels]
        self.vmstat_before = read_vmstat_oom_kills(proc)

    @classmethod
    def of(cls, pid: int, proc: Path = Path("/proc")) -> OomWatch:
        """Watch ``pid``'s cgroups (the nanny's own when the process's cannot be read)."""
        levels = memory_cgroups(pid, proc) or memory_cgroups("self", proc)
        return cls(levels, proc)

    @property
    def checkable(self) -> bool:
        """Whether a death can be told from an out-of-memory kill at all."""
        return any(c.oom_kill is not None for c in self.before) or self.vmstat_before is not None

    def check(self) -> OomKill | None:
        """The out-of-memory kill that happened since the watch began, if one did."""
        after = [read_counters(level) for level in self.levels]
        readable = [
            (level, b, a)
            for level, b, a in zip(self.levels, self.before, after, strict=True)
            if b.oom_kill is not None and a.oom_kill is not None
        ]
        if readable:
            if not any(a.oom_kill > b.oom_kill for _, b, a in readable):  # type: ignore[operator]
                return None
            return self._which_limit(after)
        vm_after = read_vmstat_oom_kills(self.proc)
        if (
            self.vmstat_before is not None
            and vm_after is not None
            and vm_after > self.vmstat_before
        ):
            return OomKill(certain=False, scope="host")
        return None

    def _which_limit(self, after: list[Counters]) -> OomKill:
        """The lowest cgroup whose limit was hit; else the lowest one with a limit."""
        for i, (level, b, a) in enumerate(zip(self.levels, self.before, after, strict=True)):
            if b.limit_hit is not None and a.limit_hit is not None and a.limit_hit > b.limit_hit:
                limit = read_limit(level)
                if limit is not None:
                    return OomKill(True, "kernel" if i == 0 else "parent", limit, level.name)
        for i, level in enumerate(self.levels):
            limit = read_limit(level)
            if limit is not None:
                return OomKill(True, "kernel" if i == 0 else "parent", limit, level.name)
        return OomKill(True, "host")
