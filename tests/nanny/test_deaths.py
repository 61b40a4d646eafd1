"""Why a kernel died, with real kernels: out of memory in a child cgroup, a segfault, an exit
code, an external SIGKILL, a death while no cell runs, and the last words that say something
(specs/protocol.md §9.2)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import IPYKERNEL, NannyProcess, history, iopub_until, wait_for

from nanny_io.cgroups import memory_cgroups
from nanny_io_proto.streams import FLAG_IOPUB, Stream

pytestmark = pytest.mark.timeout(120)

LIMIT = 160 << 20  # a kernel with ipykernel loaded uses about 60 MiB


def _wait_died(kc: Any) -> dict[str, Any]:
    seen = iopub_until(kc, lambda m: m["msg_type"] == "kernel_died", timeout=60)
    return seen[-1]


def _run_until(kc: Any, code: str, text: str, flag_dir: Path, then: str) -> str:
    """Run a cell that runs ``code``, waits for the test (which waits until ``text`` came
    out on iopub), then runs ``then``; returns the cell's msg_id."""
    flag = flag_dir / f"go-{time.monotonic_ns()}"
    msg_id: str = kc.execute(
        f"{code}\nimport os, time\n"
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.01)\n{then}"
    )
    iopub_until(
        kc,
        lambda m: (
            m["msg_type"] == "stream"
            and m["parent_header"].get("msg_id") == msg_id
            and text in m["content"]["text"]
        ),
    )
    flag.touch()
    return msg_id


# ------------------------------------------------------------------ out of memory


def _v1_or_v2_child(base: Path, version: int, name: str, limit: int | None) -> Path:
    path = base / name
    path.mkdir()
    if limit is not None:
        (path / ("memory.limit_in_bytes" if version == 1 else "memory.max")).write_text(str(limit))
    return path


@pytest.fixture
def child_cgroup() -> Iterator[tuple[Path, Path, int]]:
    """A memory cgroup below this process's own, limited to LIMIT, with an unlimited child:
    ``(limited, unlimited child, version)``. Removed afterwards."""
    levels = memory_cgroups()
    if not levels:
        pytest.skip("no memory cgroup is visible to this process")
    base, version = levels[0].directory, levels[0].version
    if version == 2 and "memory" not in (base / "cgroup.subtree_control").read_text().split():
        pytest.skip(f"the memory controller is not enabled below {base}")
    name = f"nanny-io-test-{uuid.uuid4().hex[:8]}"
    try:
        limited = _v1_or_v2_child(base, version, name, LIMIT)
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup under {base}: {exc.strerror}")
    try:
        if version == 2:
            (limited / "cgroup.subtree_control").write_text("+memory")
        inner = _v1_or_v2_child(limited, version, "inner", None)
    except OSError as exc:
        limited.rmdir()
        pytest.skip(f"cannot make a nested memory cgroup under {limited}: {exc.strerror}")
    yield limited, inner, version
    for path in (inner, limited):
        deadline = time.monotonic() + 10
        while path.exists():
            try:
                path.rmdir()
            except OSError:  # the dead kernel may take a moment to leave it
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _kernel_in(jupyter_env: Any, name: str, cgroup: Path) -> str:
    """A kernelspec whose kernel moves itself into ``cgroup`` before it starts."""
    procs = cgroup / "cgroup.procs"
    script = (
        f"echo $$ > {shlex.quote(str(procs))} && "
        f"exec {shlex.quote(sys.executable)} -m ipykernel_launcher -f {{connection_file}}"
    )
    jupyter_env.add_kernelspec(name, ["/bin/sh", "-c", script])
    return name


@pytest.mark.parametrize("where", ["kernel", "parent"])
def test_an_out_of_memory_kill_says_which_limit_and_the_cell(
    jupyter_env, nanny_factory, child_cgroup, where: str
) -> None:
    limited, inner, _ = child_cgroup
    spec = _kernel_in(jupyter_env, "oom", limited if where == "kernel" else inner)
    nanny = nanny_factory(spec)
    kc = nanny.client()
    code = "blocks = []\nwhile True: blocks.append(b'x' * (1 << 20))"
    msg_id = kc.execute(code)
    died = _wait_died(kc)
    content = died["content"]
    assert died["parent_header"]["msg_id"] == msg_id
    assert content["signal_name"] == "SIGKILL"
    assert content["cause"] == "killed by the out-of-memory killer"
    oom = content["oom"]
    assert oom["certain"] is True
    assert oom["scope"] == where
    assert oom["limit"] == LIMIT
    assert oom["cgroup"].endswith(limited.name)
    peak = content["peak_memory"]
    # RSS counts shared library pages that other cgroups were charged for.
    assert 0.5 * LIMIT < peak["kernel"] < 1.5 * LIMIT
    assert peak["tree"] >= peak["kernel"]
    assert content["cell"]["execution_count"] == 1
    assert content["cell"]["code"] == "blocks = []\nwhile True: blocks.append(b'x' * (1 << 20))"
    limit_text = "cgroup limit 160 MiB" if where == "kernel" else "enclosing cgroup's limit 160 MiB"
    assert content["reason"].startswith(
        f"killed by the out-of-memory killer ({limit_text}, kernel peak "
    )
    assert "while running cell [1] `blocks = []…` (started " in content["reason"]
    state = nanny.wait_status("dead")
    assert state["exit_reason"] == content["reason"]
    assert state["deaths"][-1]["oom"]["scope"] == where


# ------------------------------------------------------------------ other deaths


def test_a_segfault_names_the_cell_and_its_last_words(nanny: NannyProcess, tmp_path) -> None:
    kc = nanny.client()
    kc.execute_interactive("x = 1", timeout=30)
    msg_id = _run_until(
        kc,
        "print('about to crash', flush=True)",
        "about to crash",
        tmp_path,
        "import ctypes\nctypes.string_at(0)",
    )
    died = _wait_died(kc)
    content = died["content"]
    assert died["parent_header"]["msg_id"] == msg_id
    assert content["cause"] == "killed by SIGSEGV (segmentation fault)"
    assert content["oom"] is None
    assert content["cell"]["execution_count"] == 2
    assert content["cell"]["code"].startswith("print('about to crash', flush=True)\nimport os")
    assert content["reason"].startswith(
        "killed by SIGSEGV (segmentation fault) while running cell [2] "
        "`print('about to crash', flush=True)…` (started "
    )
    # print() went through iopub, never through fd 1: it is in the last words all the same.
    assert {"stream": "stdout", "text": "about to crash", "priority": 6} in content["last_words"]
    assert content["peak_memory"]["kernel"] > 10 << 20


def test_an_exit_code_and_only_this_cells_output(nanny: NannyProcess, tmp_path) -> None:
    kc = nanny.client()
    kc.execute_interactive("print('an older cell')", timeout=30)
    _run_until(kc, "print('this cell', flush=True)", "this cell", tmp_path, "os._exit(3)")
    content = _wait_died(kc)["content"]
    assert content["exit_code"] == 3
    assert content["cause"] == "exited with code 3"
    assert (
        "exited with code 3 while running cell [2] `print('this cell', flush=True)…`"
        in (content["reason"])
    )
    texts = [w["text"] for w in content["last_words"]]
    assert texts == ["this cell"], "the last words are this cell's, not older output"

    # `nanny-io status` shows the death, from the nanny and, once it is gone, from its log.
    nanny.wait_status("dead")
    live = _status(nanny.kernel_id)
    assert (live["nanny"], live["status"]) == ("running", "dead")
    (death,) = live["deaths"]
    assert death["reason"] == content["reason"] and death["cell"] == content["cell"]
    assert death["last_words"] == content["last_words"]
    human = _cli("status", nanny.kernel_id)
    assert f"reason:       {content['reason']}" in human and "stdout this cell" in human
    nanny.stop()
    gone = _status(nanny.kernel_id)
    assert (gone["nanny"], gone["status"]) == ("gone", "stopped")
    assert [d["reason"] for d in gone["deaths"]] == [content["reason"]]
    assert gone["deaths"][0]["peak_memory"] == content["peak_memory"]
    post_mortem = _cli("tail", nanny.kernel_id, "-n", "1")
    assert f"-- the kernel died at {gone['deaths'][0]['time']}: {content['reason']} --" in (
        post_mortem
    )


def _cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", *args], check=True, capture_output=True, text=True
    ).stdout


def _status(kernel_id: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(_cli("status", kernel_id, "--json"))
    return status


def test_a_traceback_printed_just_before_death_is_in_the_last_words(
    nanny: NannyProcess, tmp_path
) -> None:
    kc = nanny.client()
    prelude = (
        "import traceback, sys\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    traceback.print_exc()\n"
        "sys.stderr.flush()"
    )
    _run_until(kc, prelude, "ZeroDivisionError", tmp_path, "os._exit(1)")
    content = _wait_died(kc)["content"]
    words = [(w["stream"], w["text"]) for w in content["last_words"]]
    assert ("stderr", "Traceback (most recent call last):") in words
    assert ("stderr", "ZeroDivisionError: division by zero") in words


def test_an_external_sigkill_is_not_taken_for_out_of_memory(nanny: NannyProcess, tmp_path) -> None:
    if not memory_cgroups() and not Path("/proc/vmstat").exists():
        pytest.skip("no out-of-memory counters to read here")
    kc = nanny.client()
    msg_id = _run_until(kc, "print('waiting', flush=True)", "waiting", tmp_path, "time.sleep(60)")
    os.kill(nanny.state()["kernel_pid"], signal.SIGKILL)
    died = _wait_died(kc)
    content = died["content"]
    assert died["parent_header"]["msg_id"] == msg_id
    assert content["oom"] is None
    assert content["cause"] == "killed by SIGKILL (not by the out-of-memory killer)"
    assert content["reason"].startswith(
        "killed by SIGKILL (not by the out-of-memory killer) while running cell [1]"
    )


def test_a_sigkill_sent_through_the_nanny_says_so(nanny: NannyProcess) -> None:
    kc = nanny.client()
    subprocess.run(
        [sys.executable, "-m", "nanny_io", "signal", nanny.kernel_id, "SIGKILL"],
        check=True,
        capture_output=True,
    )
    content = _wait_died(kc)["content"]
    assert content["cause"] == "killed by SIGKILL (sent by the nanny)"
    assert content["oom"] is None and content["cell"] is None


def test_a_death_while_no_cell_runs_gives_the_last_lines(nanny: NannyProcess) -> None:
    kc = nanny.client()
    kc.execute_interactive("print('the last thing it said')", timeout=30)
    os.kill(nanny.state()["kernel_pid"], signal.SIGTERM)
    died = _wait_died(kc)
    content = died["content"]
    assert died["parent_header"] == {}
    assert content["cell"] is None
    assert content["reason"] == "killed by SIGTERM"
    # Only what it wrote since it became ready: its start-up banner is not news.
    assert content["last_words"] == [
        {"stream": "stdout", "text": "the last thing it said", "priority": 6}
    ]
    assert history(nanny)[0].incarnation == 1, "the start-up output is still in the log"


# ------------------------------------------------------------------ iopub output in the log


def test_print_and_tracebacks_are_stored_as_iopub_records(nanny: NannyProcess) -> None:
    kc = nanny.client()
    kc.execute_interactive("print('hello from print')", timeout=30)
    kc.execute_interactive("1 / 0", timeout=30)
    records = wait_for(
        lambda: (r := history(nanny)) and any(b"ZeroDivisionError" in x.data for x in r) and r,
        10,
        "the traceback in the log",
    )
    printed = [r for r in records if r.data == b"hello from print\n"]
    assert [(r.stream, r.flags) for r in printed] == [(Stream.STDOUT, FLAG_IOPUB)]
    tb = b"".join(r.data for r in records if r.stream is Stream.STDERR and r.flags & FLAG_IOPUB)
    assert b"ZeroDivisionError: division by zero" in tb
    assert b"\x1b[" not in tb, "colours are removed"
    out = subprocess.run(
        [sys.executable, "-m", "nanny_io", "tail", nanny.kernel_id, "--json", "-n", "50"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    (hello,) = [x for x in lines if x.get("text") == "hello from print"]
    assert hello["source"] == "iopub" and hello["stream"] == "stdout"
    assert {x["source"] for x in lines if x["stream"] == "nanny"} == {"nanny"}


def test_storing_iopub_output_can_be_turned_off(jupyter_env, nanny_factory) -> None:
    nanny = nanny_factory("python3", "--no-store-iopub")
    kc = nanny.client()
    kc.execute_interactive("print('not kept'); import os; os.write(1, b'fd kept\\n')", timeout=30)
    records = wait_for(
        lambda: (r := history(nanny)) and any(b"fd kept" in x.data for x in r) and r,
        10,
        "the fd output in the log",
    )
    assert not [r for r in records if r.flags & FLAG_IOPUB]
    assert not [r for r in records if b"not kept" in r.data]


def test_captured_output_the_nanny_forwards_is_stored_once(jupyter_env, nanny_factory) -> None:
    jupyter_env.add_kernelspec(
        "cap",
        IPYKERNEL,
        metadata={"capture_stdstreams": True},
    )
    nanny = nanny_factory("cap")
    kc = nanny.client()
    outputs: list[str] = []
    kc.execute_interactive(
        "import os; os.write(1, b'from the fd\\n'); print('from print')",
        timeout=30,
        output_hook=lambda m: outputs.append(m["content"].get("text", "")),
    )
    assert "from the fd\n" in "".join(outputs), "the nanny forwarded the fd output"
    records = wait_for(
        lambda: (r := history(nanny)) and any(b"from print" in x.data for x in r) and r,
        10,
        "the printed line in the log",
    )
    fd = [r.flags for r in records if r.data == b"from the fd\n"]
    assert fd == [0], "stored once, from the pipe, not again from the nanny's own stream"
    assert [r.flags for r in records if r.data == b"from print\n"] == [FLAG_IOPUB]
