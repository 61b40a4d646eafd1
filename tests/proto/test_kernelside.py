"""Tests for nanny_io.kernelside: delimiters written by a real process into real pipes."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanny_io import kernelside
from nanny_io_proto.delimiters import (
    ENV_VAR,
    Begin,
    DelimiterScanner,
    End,
    Event,
    Output,
    begin_marker,
    end_marker,
)
from nanny_io_proto.lines import LineAssembler
from nanny_io_proto.priorities import PriorityLines, priority_of
from nanny_io_proto.streams import Stream


def run_kernel(code: str, **env: str) -> tuple[list[Event], list[Event]]:
    """Run ``code`` with stdout and stderr on pipes; scan what each pipe carried."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,  # stdout and stderr are real pipes
        env={**os.environ, **env},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return scan(proc.stdout), scan(proc.stderr)


def scan(data: bytes) -> list[Event]:
    scanner = DelimiterScanner()
    return scanner.feed(data) + scanner.flush()


def test_delimited_block_in_real_pipes() -> None:
    out, err = run_kernel(
        """
        import ctypes, os, sys
        from nanny_io.kernelside import delimited
        print("before")                      # block-buffered: stdout is a pipe
        sys.stderr.write("err before\\n")
        with delimited("req-1"):
            print("py inside")               # still in Python's buffer at END time
            os.write(1, b"fd inside\\n")
            sys.stderr.write("err inside\\n")
            libc = ctypes.CDLL(None)
            libc.printf(b"c inside\\n")      # in libc's buffer until fflush
        print("after")
        """
    )
    assert out[0] == Output(b"before\n")
    assert out[1] == Begin("req-1")
    assert isinstance(out[2], Output)
    assert sorted(out[2].data.splitlines()) == [b"c inside", b"fd inside", b"py inside"]
    assert out[3:] == [End("req-1"), Output(b"after\n")]
    assert err == [Output(b"err before\n"), Begin("req-1"), Output(b"err inside\n"), End("req-1")]


def test_end_is_written_when_user_code_raises() -> None:
    out, err = run_kernel(
        """
        from nanny_io.kernelside import delimited
        try:
            with delimited("r.2"):
                print("boom coming")
                raise RuntimeError("x")
        except RuntimeError:
            pass
        """
    )
    assert out == [Begin("r.2"), Output(b"boom coming\n"), End("r.2")]
    assert err == [Begin("r.2"), End("r.2")]


def test_requested_reads_the_environment() -> None:
    code = """
        from nanny_io.kernelside import emit_begin, emit_end, requested
        if requested():
            emit_begin("m")
        print("x")
        if requested():
            emit_end("m")
        """
    assert run_kernel(code, **{ENV_VAR: "1"})[0] == [Begin("m"), Output(b"x\n"), End("m")]
    assert run_kernel(code, **{ENV_VAR: "0"})[0] == [Output(b"x\n")]


def test_closed_fds_do_not_break_the_kernel() -> None:
    out, _ = run_kernel(
        """
        import os, sys
        from nanny_io.kernelside import emit_begin, emit_end
        saved = os.dup(1)
        os.close(1)
        emit_begin("gone")
        emit_end("gone")
        os.dup2(saved, 1)
        os.write(1, b"still alive\\n")
        """
    )
    assert out == [Output(b"still alive\n")]


def test_each_marker_is_one_write_per_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[tuple[int, bytes]] = []

    def fake_write(fd: int, data: bytes) -> int:
        writes.append((fd, bytes(data)))
        return len(data)

    monkeypatch.setattr(os, "write", fake_write)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert kernelside.emit_begin("abc")
    assert kernelside.emit_end("abc")
    assert writes == [
        (1, begin_marker("abc")),
        (2, begin_marker("abc")),
        (1, end_marker("abc")),
        (2, end_marker("abc")),
    ]


def test_unusable_msg_id_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []

    def fake_write(fd: int, data: bytes) -> int:
        writes.append(fd)
        return len(data)

    monkeypatch.setattr(os, "write", fake_write)
    assert kernelside.emit_begin("has space") is False
    assert kernelside.emit_end("x" * 200) is False
    with kernelside.delimited(""):
        pass
    assert writes == []


# --- KernelLogHandler ---------------------------------------------------------------------


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"kernelside-test-{id(handler)}")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def _fifo_reader(tmp_path: Path) -> tuple[str, int]:
    path = str(tmp_path / "kernel.log")
    os.mkfifo(path)
    return path, os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so writers can open


def test_syslog_priority_of_logging_levels() -> None:
    levels = [logging.CRITICAL, logging.ERROR, logging.WARNING, 25, logging.INFO, logging.DEBUG, 0]
    assert [kernelside.syslog_priority(n) for n in levels] == [2, 3, 4, 5, 6, 7, 7]


def test_handler_writes_prefixed_lines_to_the_fifo(tmp_path: Path) -> None:
    path, reader = _fifo_reader(tmp_path)
    handler = kernelside.KernelLogHandler(path=path)
    assert handler.to_kernel_log
    log = _logger(handler)
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    handler.close()
    data = os.read(reader, 65536)
    os.close(reader)
    lines = PriorityLines(LineAssembler())
    records = [(d, priority_of(Stream.LOG, f)) for d, f in lines.feed(data)]
    assert records[:5] == [(b"d\n", 7), (b"i\n", 6), (b"w\n", 4), (b"e\n", 3), (b"c\n", 2)]
    traceback = records[5:]
    assert traceback[0] == (b"failed\n", 3) and traceback[-1] == (b"ValueError: boom\n", 3)
    assert {p for _, p in traceback} == {3}  # every line of the traceback is an error


def test_handler_without_the_variable_writes_plain_lines_to_stderr() -> None:
    code = """
        import logging, os
        os.environ.pop("JUPYTER_KERNEL_LOG", None)
        from nanny_io.kernelside import KernelLogHandler
        handler = KernelLogHandler()
        assert not handler.to_kernel_log
        log = logging.getLogger("k"); log.addHandler(handler); log.setLevel(logging.INFO)
        log.error("plain error")
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"plain error\n"


def test_handler_falls_back_to_stderr_when_the_reader_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, reader = _fifo_reader(tmp_path)
    handler = kernelside.KernelLogHandler(path=path)
    log = _logger(handler)
    os.close(reader)  # the nanny died: writes fail with EPIPE
    log.warning("still here")
    log.error("and here")
    handler.close()
    assert not handler.to_kernel_log
    assert capsys.readouterr().err == "still here\nand here\n"
