"""A careless operator and a hostile neighbour: killed guardians, silent nannies, full disks,
bad input on the command line, a runtime dir others can write, and `install` defaults.

Real nannies, kernels and CLI processes; every wait polls for a condition with a deadline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability.support import cli

# ------------------------------------------------------------------ bad input: one line, no files

BAD_KERNEL_IDS = {
    "slash": "a/b",
    "dotdot": "..",
    "long": "x" * 300,
}


def _one_line_error(proc, *words: str) -> None:
    """A failed CLI call that printed exactly one error line (no traceback) naming ``words``."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nanny-io: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.timeout(60)
def test_a_kernel_json_that_is_not_json_is_one_line_and_leaves_nothing(jupyter_env) -> None:
    path = jupyter_env.data / "kernels" / "broken"
    path.mkdir(parents=True)
    (path / "kernel.json").write_text("{not json")
    for verb in (("start", "broken"), ("install", "broken", "--prefix", str(jupyter_env.root))):
        _one_line_error(cli(*verb), "broken", "not JSON" if verb[0] == "start" else "kernel.json")
    assert _files(jupyter_env.runtime) == []
    assert not (jupyter_env.root / "share").exists()


@pytest.mark.timeout(60)
def test_an_empty_argv_is_one_line_and_leaves_nothing(jupyter_env) -> None:
    jupyter_env.add_kernelspec("empty", [])
    for verb in (("start", "empty"), ("install", "empty", "--prefix", str(jupyter_env.root))):
        _one_line_error(cli(*verb), "'empty'", "'argv' is empty")
    assert _files(jupyter_env.runtime) == []
    assert not (jupyter_env.root / "share").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", list(BAD_KERNEL_IDS))
def test_a_kernel_id_that_cannot_name_files_is_refused_in_one_line(jupyter_env, bad: str) -> None:
    from reliability.support import add_kernel

    kernel_id = BAD_KERNEL_IDS[bad]
    add_kernel(jupyter_env)
    _one_line_error(cli("start", "rel", "--kernel-id", kernel_id), "kernel id", "not usable")
    assert _files(jupyter_env.runtime) == []
    for verb in ("shutdown", "interrupt", "tail"):
        proc = cli(verb, kernel_id)
        _one_line_error(proc)
        assert "nanny-io list" in proc.stderr or "connection file" in proc.stderr


# ------------------------------------------------------------ install keeps the source's choice


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("flag", "expected"), [((), True), (("--no-capture",), False)])
def test_install_without_a_flag_keeps_the_sources_capture_choice(
    jupyter_env, flag: tuple[str, ...], expected: bool
) -> None:
    from reliability.support import add_kernel

    add_kernel(jupyter_env, "optin", capture=True)
    proc = cli("install", "optin", "--prefix", str(jupyter_env.root), *flag)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(
        (jupyter_env.root / "share/jupyter/kernels/optin-nanny/kernel.json").read_text()
    )
    assert spec["metadata"]["capture_stdstreams"] is expected


# ------------------------------------------------------------------ the guardian alone is killed

#: The kernel starts a child in a session of its own (out of the kernel's process group) and a
#: grandchild in its group; both must end with the kernel.
DETACHED_CHILDREN = """
import subprocess, sys
procs = [
    subprocess.Popen(
        [sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True
    ),
    subprocess.Popen(['sh', '-c', 'sleep 600 & wait']),
]
"""


@pytest.mark.timeout(90)
def test_killing_the_guardian_alone_ends_the_kernel_tree_and_fails(
    jupyter_env, nanny_factory
) -> None:
    import os
    import signal

    import psutil
    from helpers import wait_for, wait_gone
    from reliability.support import add_kernel, run

    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    run(kc, DETACHED_CHILDREN)
    kernel_pid = nanny.state()["kernel_pid"]
    wait_for(lambda: len(psutil.Process(kernel_pid).children(recursive=True)) >= 3, 30, "children")
    tree = nanny.tree_pids()
    (guardian,) = psutil.Process(nanny.pid).children()
    # ps tells them apart: the guardian says what it is
    nanny_cmd = " ".join(psutil.Process(nanny.pid).cmdline())
    guardian_cmd = " ".join(guardian.cmdline())
    assert guardian_cmd != nanny_cmd
    assert guardian_cmd.startswith(f"nanny-io-guardian {nanny.kernel_id[:8]}"), guardian_cmd
    assert "guardian" in guardian.name()
    private_dirs = [p for p in jupyter_env.runtime.glob("nanny-io-*") if p.is_dir()]
    assert private_dirs

    os.kill(guardian.pid, signal.SIGKILL)
    assert nanny.proc.wait(timeout=30) == 70, (nanny.proc.returncode, nanny.log_tail())
    assert not wait_gone(tree, 10), "the kernel tree outlived its guardian and nanny"
    assert "guardian" in nanny.stderr and "killed" in nanny.stderr
    assert not nanny.connection_file.exists()
    assert not [p for p in jupyter_env.runtime.glob("nanny-io-*") if p.is_dir()]
    assert not list((jupyter_env.runtime / "nanny-io").glob("nanny-*.json"))
    assert cli("list").stdout.strip() == "no kernels are running under nanny-io"


# ------------------------------------------------------------------ tail -f across silence


class _Lines:
    """A process's stdout lines, read by a thread; ``expect`` waits for one that matches."""

    def __init__(self, proc) -> None:
        import queue
        import threading

        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            for line in proc.stdout:
                self.queue.put(line)
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def expect(self, predicate, timeout: float, what: str) -> dict:
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout} s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"tail ended before {what}; saw {self.seen}")
            self.seen.append(line)
            obj = json.loads(line)
            if predicate(obj):
                return obj


@pytest.mark.timeout(90)
def test_tail_f_waits_through_a_stopped_nanny_and_fails_when_it_is_gone(
    jupyter_env, nanny_factory
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from reliability.support import add_kernel, run

    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    tail = subprocess.Popen(
        [sys.executable, "-m", "nanny_io", "tail", "-f", "--json", "-n", "1", nanny.kernel_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _Lines(tail)
        lines.expect(lambda o: "seq" in o, 30, "a first record")
        os.kill(nanny.pid, signal.SIGSTOP)
        try:
            silent = lines.expect(lambda o: o.get("notice") == "silent", 30, "a silence notice")
            assert "stopped" in silent["text"], silent
            assert tail.poll() is None, "tail -f gave up on a stopped nanny"
        finally:
            os.kill(nanny.pid, signal.SIGCONT)
        lines.expect(lambda o: o.get("notice") == "resumed", 30, "a recovery notice")
        run(kc, "import os; os.write(1, b'after the silence\\n')")
        lines.expect(lambda o: o.get("text") == "after the silence", 30, "output after SIGCONT")
        os.kill(nanny.pid, signal.SIGKILL)
        gone = lines.expect(lambda o: o.get("notice") == "gone", 30, "a gone notice")
        assert "gone" in gone["text"]
        assert tail.wait(timeout=30) == 3, tail.stderr.read() if tail.stderr else ""
    finally:
        if tail.poll() is None:
            tail.kill()
        tail.wait()
        tail.stdout.close()  # type: ignore[union-attr]
        tail.stderr.close()  # type: ignore[union-attr]


# ------------------------------------------------------------------ a runtime dir others can write


@pytest.mark.timeout(60)
@pytest.mark.parametrize("owner", ["nobody", "me"])
def test_a_runtime_dir_others_can_write_is_refused_with_the_fix(
    jupyter_env, monkeypatch: pytest.MonkeyPatch, owner: str
) -> None:
    import os
    import pwd

    from reliability.support import add_kernel

    add_kernel(jupyter_env)
    runtime = jupyter_env.runtime
    runtime.mkdir()
    os.chmod(runtime, 0o777)
    if owner == "nobody":
        try:
            os.chown(runtime, pwd.getpwnam("nobody").pw_uid, -1)
        except (KeyError, PermissionError) as exc:
            pytest.skip(f"cannot give the runtime dir to 'nobody': {exc}")
        fix = "JUPYTER_RUNTIME_DIR"
    else:
        fix = f"chmod 700 {runtime}"
    for verb in (("start", "rel"), ("list",)):
        _one_line_error(cli(*verb), "unsafe runtime dir", fix)
    assert _files(runtime) == [], "something was written into the unsafe runtime dir"
    # jupyter_core's escape hatch turns the refusal into a warning
    monkeypatch.setenv("JUPYTER_ALLOW_INSECURE_WRITES", "1")
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    assert "unsafe runtime dir" in proc.stderr and fix in proc.stderr


@pytest.mark.timeout(60)
def test_a_group_writable_runtime_dir_of_ones_own_is_used_with_a_warning(jupyter_env) -> None:
    import os

    runtime = jupyter_env.runtime
    runtime.mkdir()
    os.chmod(runtime, 0o770)
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    assert "can be written by its group" in proc.stderr and "chmod 700" in proc.stderr


# ------------------------------------------------------------------ a full disk

#: More than the 2 MiB the runtime dir gets: the spill fills the disk part-way.
FILL_DISK = (
    "import os\nfor i in range(40000):\n    os.write(1, b'line %06d %s\\n' % (i, b'x' * 60))\n"
)


def _fill(path: Path) -> None:
    """Write to ``path`` until the disk is full."""
    import errno
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


@pytest.fixture
def small_runtime_dir(jupyter_env):
    """The runtime dir on a 2 MiB tmpfs (root only), unmounted afterwards."""
    import subprocess

    runtime = jupyter_env.runtime
    runtime.mkdir(mode=0o700)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(runtime)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    yield runtime
    if subprocess.run(["umount", str(runtime)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(runtime)], check=True)


@pytest.mark.timeout(120)
def test_a_full_disk_is_reported_by_tail_list_and_a_second_start(
    jupyter_env, small_runtime_dir: Path
) -> None:
    from helpers import spawn_nanny, wait_for
    from reliability.support import add_kernel, run

    add_kernel(jupyter_env)
    nanny = spawn_nanny("rel", "-q")
    try:
        kc = nanny.client()
        run(kc, FILL_DISK)
        wait_for(lambda: "log spill off" in nanny.stderr, 30, "the spill to give up")
        _fill(small_runtime_dir / "filler")  # whatever the spill's last chunk left free
        # the state file follows a restart although no new file fits on the disk
        first_pid = nanny.state()["kernel_pid"]
        restart = cli("shutdown", nanny.kernel_id, "--restart")
        assert restart.returncode == 0, restart.stderr
        state = nanny.wait_status("running", 30)
        assert state["incarnation"] == 2 and state["kernel_pid"] != first_pid, state
        (row,) = json.loads(cli("list", "--json").stdout)
        assert (row["incarnation"], row["kernel_pid"]) == (2, state["kernel_pid"]), row
        # a second nanny says what is wrong in one line and leaves nothing behind
        before = _files(small_runtime_dir)
        _one_line_error(
            cli("start", "rel", "--kernel-id", "second"), "No space left on device", "free"
        )
        assert _files(small_runtime_dir) == before
    finally:
        for client in nanny.clients:
            client.stop_channels()
        nanny.clients.clear()
        nanny.stop()
    # the history on disk says where it stops
    proc = cli("tail", nanny.kernel_id, "-n", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    notice = lines[-1]
    assert notice.get("notice") == "truncated", lines
    assert notice["reason"] == "ENOSPC" and "No space left on device" in notice["text"]
    assert lines[-2]["seq"] == notice["last_saved"], lines  # the notice follows the last one
    assert "line 039999" not in proc.stdout  # the end of the output was never on disk


@pytest.mark.timeout(60)
def test_a_connection_file_planted_by_another_user_is_not_adopted(jupyter_env, tmp_path) -> None:
    import os
    import pwd

    from reliability.support import add_kernel

    add_kernel(jupyter_env)
    planted = tmp_path / "shared" / "kernel.json"
    planted.parent.mkdir(mode=0o1777)
    os.chmod(planted.parent, 0o1777)  # like /tmp: anyone may create files here
    planted.write_text(json.dumps({"key": "known-to-its-author", "transport": "tcp"}))
    try:
        os.chown(planted, pwd.getpwnam("nobody").pw_uid, -1)
    except (KeyError, PermissionError) as exc:
        pytest.skip(f"cannot give a file to 'nobody': {exc}")
    _one_line_error(
        cli("start", "rel", "--connection-file", str(planted)),
        "unsafe connection file",
        "belongs to user 'nobody'",
    )
    assert _files(jupyter_env.runtime) == []
