"""Syslog priorities end to end: a real kernel writes ``<N>`` lines to its log FIFO, stdout and
stderr; the records carry the priority through the store, live publishing, replay, the spill,
``tail`` (``-p``, ``--json``) and a death's last words (specs/log-channel.md §2.3)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from helpers import NannyProcess, history, stored, wait_for

from nanny_io.discovery import spill_path
from nanny_io.spill import read_spill
from nanny_io_proto.priorities import priority_of
from nanny_io_proto.streams import FLAG_PRIORITY, Stream

pytestmark = pytest.mark.timeout(90)

NannyFactory = Callable[..., NannyProcess]

#: Each level on each kernel stream, then unprefixed lines and text that only looks like one.
WRITE_LEVELS = r"""
import os
with open(os.environ["JUPYTER_KERNEL_LOG"], "w") as log:
    for n in range(8):
        log.write(f"<{n}>log at {n}\n")
    log.write("log plain\n<8>log eight\n")
for n in range(8):
    os.write(1, f"<{n}>out at {n}\n".encode())
    os.write(2, f"<{n}>err at {n}\n".encode())
os.write(1, b"out plain\n")
os.write(2, b"err plain\n")
"""


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", *args], capture_output=True, text=True, timeout=timeout
    )


def _cell(kc: Any, code: str) -> None:
    reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", reply["content"]


def _levels(nanny: NannyProcess) -> None:
    _cell(nanny.client(), WRITE_LEVELS)
    wait_for(
        lambda: (
            {r.data for r in stored(nanny, Stream.STDERR)} >= {b"err plain\n"}
            and {r.data for r in stored(nanny, Stream.LOG)} >= {b"<8>log eight\n"}
        ),
        15,
        "the lines of every level",
    )


def _by_text(records: Any) -> dict[bytes, int]:
    return {r.data: priority_of(r.stream, r.flags) for r in records}


def test_each_level_on_each_stream(nanny_factory: NannyFactory) -> None:
    nanny = nanny_factory("python3", "-q")
    _levels(nanny)
    records = history(nanny)
    got = _by_text(records)
    for n in range(8):
        for text in (f"log at {n}\n", f"out at {n}\n", f"err at {n}\n"):
            assert got[text.encode()] == n, text
    # no prefix: the stream's default; an invalid one stays text
    assert got[b"log plain\n"] == 6
    assert got[b"out plain\n"] == 6
    assert got[b"err plain\n"] == 4
    assert got[b"<8>log eight\n"] == 6
    assert not any(
        r.data.startswith(b"<") and r.data[1:2].isdigit() and r.data[1] < 0x38
        for r in records
        if r.stream is not Stream.NANNY
    )
    unprefixed = next(r for r in records if r.data == b"out plain\n")
    assert not unprefixed.flags & FLAG_PRIORITY  # the default is not written into the flags


def test_tail_priority_filter_json_and_spill(nanny_factory: NannyFactory) -> None:
    nanny = nanny_factory("python3", "-q")
    _levels(nanny)

    def texts(*args: str) -> list[str]:
        proc = cli("tail", nanny.kernel_id, *args)
        assert proc.returncode == 0, proc.stderr
        return [re.sub(r"^\S+ \S+ +", "", line) for line in proc.stdout.splitlines()]

    def check(lines: list[str]) -> None:
        assert sorted(lines) == sorted(
            [f"{s} at {n}" for s in ("log", "out", "err") for n in range(4)]
        ), lines

    live = texts("-p", "err", "-n", "1000")
    check(live)
    assert texts("-p", "3", "-n", "1000") == live
    assert texts("-p", "err", "-n", "2") == live[-2:]
    # warning also takes stderr without a prefix (its default)
    assert "err plain" in texts("-p", "warning", "-n", "1000")
    assert "out plain" not in texts("-p", "warning", "-n", "1000")
    rows = [
        json.loads(x)
        for x in cli("tail", nanny.kernel_id, "--json", "-n", "1000").stdout.splitlines()
    ]
    by_text = {r["text"]: r["priority"] for r in rows}
    assert by_text["log at 0"] == 0 and by_text["err at 7"] == 7 and by_text["out plain"] == 6
    assert next(r for r in rows if r["stream"] == "nanny")["priority"] == 5
    # a bad level is one clear line
    proc = cli("tail", nanny.kernel_id, "-p", "loud")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "unknown priority 'loud'" in proc.stderr
    # after the nanny exits: the spill kept the flags, and tail -p reads them from it
    live_records = _by_text(r for r in history(nanny) if r.stream is not Stream.NANNY)
    assert nanny.stop() == 0
    spilled = _by_text(
        r for _, r in read_spill(spill_path(nanny.kernel_id)) if r.stream is not Stream.NANNY
    )
    assert spilled == live_records
    post = texts("-p", "err", "-n", "1000")
    assert "nanny is gone" in post[0]
    check(post[1:])


def test_follow_with_priority_prints_only_new_severe_lines(nanny_factory: NannyFactory) -> None:
    nanny = nanny_factory("python3", "-q")
    kc = nanny.client()
    _levels(nanny)
    # The newest crit-or-worse line is "out at 2" or "err at 2": stdout and stderr are two
    # pipes, so which of the two the nanny read first (and stored last) is up to the reads.
    newest = [r for r in history(nanny) if priority_of(r.stream, r.flags) <= 2][-1]
    assert newest.data in (b"out at 2\n", b"err at 2\n")
    args = [
        sys.executable,
        "-m",
        "nanny_io",
        "tail",
        nanny.kernel_id,
        "-f",
        "-p",
        "crit",
        "-n",
        "1",
    ]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.endswith(" " + newest.data.decode()), first
            _cell(kc, "import os; os.write(2, b'<6>chatter\\n<1>paged\\n')")
            second = proc.stdout.readline()
            assert second.endswith(" paged\n"), second
        finally:
            proc.terminate()


def test_last_words_carry_priorities(nanny_factory: NannyFactory) -> None:
    nanny = nanny_factory("python3", "-q")
    kc = nanny.client()
    kc.execute("import os; os.write(2, b'<2>disk gone\\nplain words\\n'); os._exit(3)")
    died = wait_for(
        lambda: next(
            (r for r in history(nanny) if r.stream is Stream.NANNY and b"kernel_died" in r.data),
            None,
        ),
        30,
        "the death record",
    )
    assert priority_of(died.stream, died.flags) == 3
    words = json.loads(died.data)["last_words"]
    assert {"stream": "stderr", "text": "disk gone", "priority": 2} in words
    assert {"stream": "stderr", "text": "plain words", "priority": 4} in words
    rows = [
        json.loads(x)
        for x in cli("tail", nanny.kernel_id, "--json", "-p", "err").stdout.splitlines()
    ]
    assert rows[-1]["event"]["event"] == "kernel_died" and rows[-1]["priority"] == 3, rows
    assert {"text": "disk gone", "priority": 2}.items() <= rows[-2].items(), rows


def test_kernel_log_handler_in_a_real_kernel(nanny_factory: NannyFactory) -> None:
    nanny = nanny_factory("python3", "-q")
    _cell(
        nanny.client(),
        """
import logging
from nanny_io.kernelside import KernelLogHandler
log = logging.getLogger("mykernel")
log.addHandler(KernelLogHandler())
log.setLevel(logging.DEBUG)
log.debug("dbg"); log.info("inf"); log.warning("wrn"); log.error("err"); log.critical("crt")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("division failed")
""",
    )
    records = wait_for(
        lambda: (
            (r := stored(nanny, Stream.LOG)) and r[-1].data.startswith(b"ZeroDivisionError") and r
        ),
        15,
        "the traceback's last line",
    )
    got = [(r.data, priority_of(r.stream, r.flags)) for r in records]
    assert got[:5] == [(b"dbg\n", 7), (b"inf\n", 6), (b"wrn\n", 4), (b"err\n", 3), (b"crt\n", 2)]
    assert got[5] == (b"division failed\n", 3)
    assert {p for _, p in got[5:]} == {3} and len(got) > 7  # the whole traceback is err
