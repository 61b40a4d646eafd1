"""Tests for nanny_io.kernelside: delimiters written by a real process into real pipes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

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
