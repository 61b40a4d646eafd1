"""Tests for nanny_io_proto.lines: line assembly and incremental UTF-8 decoding."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto import lines as lines_module
from nanny_io_proto.errors import LocalProtocolError
from nanny_io_proto.lines import FLAG_NO_EOL, LineAssembler, LineBlock

Record = tuple[bytes, int]


def assemble(chunks: Iterable[bytes], max_line: int = 65536, blocks: bool = False) -> list[Record]:
    """Feed chunks, check per-feed invariants, flush at the end.

    With ``blocks``, through ``feed_block``, whose blocks are checked and expanded.
    """
    asm = LineAssembler(max_line)
    records: list[Record] = []
    fed = 0
    for chunk in chunks:
        if blocks:
            got = asm.feed_block(chunk)
            if isinstance(got, LineBlock):
                got = check_block(got, max_line)
            records.extend(got)
        else:
            records.extend(asm.feed(chunk))
        fed += len(chunk)
        assert sum(len(d) for d, _ in records) + asm.pending == fed
        assert asm.pending <= max_line
    records.extend(asm.flush())
    assert asm.pending == 0
    return records


def check_records(records: Sequence[Record], data: bytes, max_line: int) -> None:
    assert b"".join(d for d, _ in records) == data
    for i, (d, flags) in enumerate(records):
        assert 0 < len(d) <= max_line
        if flags == 0:
            assert d.endswith(b"\n") and d.count(b"\n") == 1
        else:
            assert flags == FLAG_NO_EOL and b"\n" not in d
            # Only the final record (a flushed partial line) may be shorter than a cut piece.
            if i < len(records) - 1:
                assert len(d) >= max_line - 3


def check_block(block: LineBlock, max_line: int) -> list[Record]:
    """A block's records, after checking what it promises: whole lines without b"\\r" that
    fit, their lengths alongside."""
    records = block.records()
    assert records and b"".join(d for d, _ in records) == block.data
    assert list(block.lengths) == [len(d) for d, _ in records]
    assert b"\r" not in block.data
    for d, flags in records:
        assert flags == 0 and d.endswith(b"\n") and d.count(b"\n") == 1
        assert len(d) <= max_line
    return records


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- LineAssembler ------------------------------------------------------------------------


def test_complete_lines_and_partial() -> None:
    asm = LineAssembler()
    assert asm.feed(b"a\nbb\nc") == [(b"a\n", 0), (b"bb\n", 0)]
    assert asm.pending == 1
    assert asm.feed(b"cc") == []
    assert asm.feed(b"\n\n") == [(b"ccc\n", 0), (b"\n", 0)]
    assert asm.pending == 0
    assert asm.feed(b"") == []


def test_flush_semantics() -> None:
    asm = LineAssembler()
    assert asm.flush() == []
    asm.feed(b"done\n")
    assert asm.flush() == []
    asm.feed(b"prompt> ")
    assert asm.flush() == [(b"prompt> ", FLAG_NO_EOL)]
    assert asm.pending == 0
    assert asm.flush() == []
    # After a flush the rest of the line starts a new record.
    assert asm.feed(b"yes\n") == [(b"yes\n", 0)]


def test_crlf_and_other_line_breaks_are_not_split() -> None:
    data = b"a\r\nb\rc\x0bd\x1c\n"
    assert assemble([data]) == [(b"a\r\n", 0), (b"b\rc\x0bd\x1c\n", 0)]


def test_over_long_line_is_cut() -> None:
    data = b"0123456789" * 2 + b"abcde\n"
    assert assemble([data], max_line=10) == [
        (b"0123456789", FLAG_NO_EOL),
        (b"0123456789", FLAG_NO_EOL),
        (b"abcde\n", 0),
    ]


def test_line_of_exactly_max_line() -> None:
    assert assemble([b"123456789\n"], max_line=10) == [(b"123456789\n", 0)]
    assert assemble([b"1234567890\n"], max_line=10) == [
        (b"1234567890", FLAG_NO_EOL),
        (b"\n", 0),
    ]


def test_partial_line_is_cut_without_newline() -> None:
    asm = LineAssembler(10)
    assert asm.feed(b"x" * 10) == []  # may still fit: held
    assert asm.pending == 10
    assert asm.feed(b"y") == [(b"x" * 10, FLAG_NO_EOL)]
    assert asm.pending == 1
    assert asm.flush() == [(b"y", FLAG_NO_EOL)]


@pytest.mark.parametrize(
    ("char", "piece"),
    [("\u00e9", 10), ("\u20ac", 9), ("\U0001f600", 8)],  # 2-, 3- and 4-byte characters
)
def test_cut_backs_off_to_a_character_boundary(char: str, piece: int) -> None:
    data = (char * 20 + "\n").encode()
    records = assemble([data], max_line=10)
    for d, flags in records[:-1]:
        assert flags == FLAG_NO_EOL and len(d) == piece
        d.decode("utf-8")  # every piece is whole characters
    check_records(records, data, 10)


def test_invalid_utf8_is_cut_at_max_line() -> None:
    data = b"\x80" * 25 + b"\n"
    assert [len(d) for d, _ in assemble([data], max_line=10)] == [10, 10, 6]


def test_every_split_position() -> None:
    text = "line one\n" + "\u20ac" * 7 + "x\n\nlast \U0001f600 partial"
    data = (text + "\n" + "z" * 30 + "\n" + text).encode()
    for max_line in (12, 65536):
        expected = assemble([data], max_line)
        check_records(expected, data, max_line)
        for i in range(len(data) + 1):
            assert assemble(split_at(data, [i]), max_line) == expected, (max_line, i)


def test_byte_by_byte_long_line_is_not_quadratic() -> None:
    data = b"q" * 70000 + b"\n"
    records = assemble([data[i : i + 1] for i in range(len(data))])
    assert records == [(b"q" * 65536, FLAG_NO_EOL), (b"q" * 4464 + b"\n", 0)]


def test_max_line_validation() -> None:
    for bad in (0, 3, -1, 2.5, "10"):
        with pytest.raises(LocalProtocolError):
            LineAssembler(bad)  # type: ignore[arg-type]
    assert LineAssembler(4).max_line == 4


line_bytes = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b"\n", b"\r\n", "\u20ac".encode(), "\U0001f600".encode(), b"\x80"]),
    ),
    max_size=20,
).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(line_bytes)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    return data, split_at(data, cuts)


@settings(max_examples=300, deadline=None)
@given(chunked(), st.integers(4, 40))
def test_chunking_does_not_change_records(case: tuple[bytes, list[bytes]], max_line: int) -> None:
    data, chunks = case
    whole = assemble([data], max_line)
    check_records(whole, data, max_line)
    assert assemble(chunks, max_line) == whole
    assert assemble([bytes([b]) for b in data], max_line) == whole
    assert assemble(chunks, max_line, blocks=True) == whole


def test_whole_lines_come_as_a_block() -> None:
    asm = LineAssembler()
    block = asm.feed_block(b"ab\n" * 1000 + b"tail")
    assert isinstance(block, LineBlock)
    assert block.data == b"ab\n" * 1000 and list(block.lengths) == [3] * 1000
    assert asm.pending == 4
    block = asm.feed_block(b"\n" + b"y" * 999 + b"\n")  # long lines: lengths by find
    assert isinstance(block, LineBlock)
    assert block.records() == [(b"tail\n", 0), (b"y" * 999 + b"\n", 0)]
    # not a block: a b"\r", an overlong line, an overlong partial line
    assert asm.feed_block(b"a\rb\n") == [(b"a\rb\n", 0)]
    assert not isinstance(LineAssembler(8).feed_block(b"a\n" + b"z" * 9 + b"\n"), LineBlock)
    assert not isinstance(LineAssembler(8).feed_block(b"a\n" + b"z" * 9), LineBlock)


@pytest.mark.parametrize("max_line", [4, 5, 64, 1000, 65536])
@pytest.mark.parametrize("extra", [-2, -1, 0, 1, 2, 50])
def test_longest_line_around_max_line_in_a_large_read(max_line: int, extra: int) -> None:
    """The check that every line fits (a newline in every window of max_line // 2 bytes,
    or the longest length) agrees with the records at the boundary, wherever the long line
    sits among many short ones."""
    long_line = b"L" * (max_line + extra - 1) + b"\n"
    for before in (0, 1, 3, 200, 5000):
        data = b"s\n" * before + long_line + b"t\n" * 7
        records = assemble([data], max_line)
        assert assemble([data], max_line, blocks=True) == records
        block = LineAssembler(max_line).feed_block(data)
        assert isinstance(block, LineBlock) == (len(long_line) <= max_line)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.integers(4, 30))
def test_pieces_of_valid_text_decode_alone(text: str, max_line: int) -> None:
    data = text.encode()  # st.text() draws no lone surrogates
    records = assemble([data], max_line)
    check_records(records, data, max_line)
    for d, _ in records:
        d.decode("utf-8")


@settings(max_examples=150, deadline=None)
@given(chunked(), st.integers(4, 40))
def test_flush_midway_keeps_concatenation(case: tuple[bytes, list[bytes]], max_line: int) -> None:
    data, chunks = case
    asm = LineAssembler(max_line)
    records: list[Record] = []
    for chunk in chunks:
        records.extend(asm.feed(chunk))
        records.extend(asm.flush())  # a timer firing after every read
    assert b"".join(d for d, _ in records) == data
    assert all(0 < len(d) <= max_line for d, _ in records)


# --- the lengths of short lines: numpy's or splitlines' -----------------------------------

#: Both ways of measuring a large block of short lines: numpy's newline positions (when it
#: is installed) and ``splitlines``, which stands in for it without numpy.
LENGTHS = [
    pytest.param(
        "numpy",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("numpy") is None, reason="numpy is not installed"
        ),
    ),
    "splitlines",
]
needs_numpy = pytest.mark.skipif(
    importlib.util.find_spec("numpy") is None, reason="numpy is not installed"
)


@contextlib.contextmanager
def lengths_by(how: str) -> Iterator[list[int]]:
    """Measure short lines with ``how`` meanwhile (not a fixture: hypothesis runs many
    examples); yields the sizes of the blocks numpy measured."""
    saved_use, saved_lengths = lines_module._use_numpy, lines_module._numpy_lengths
    measured: list[int] = []

    def counted(np: ModuleType, data: bytes, max_line: int) -> array[int] | None:
        measured.append(len(data))
        return saved_lengths(np, data, max_line)

    lines_module._use_numpy = how == "numpy"
    lines_module._numpy_lengths = counted
    try:
        yield measured
    finally:
        lines_module._use_numpy, lines_module._numpy_lengths = saved_use, saved_lengths


@st.composite
def short_line_blocks(draw: st.DrawFn) -> tuple[int, bytes, list[int]]:
    """``(max_line, data, line lengths)``: whole lines of at most 253 bytes (so the block
    counts as short lines), some at and over ``max_line``, in blocks tiny to some 64 KiB."""
    max_line = draw(st.integers(4, 250))
    # with the newline: empty lines, lines at max_line and just over it, anything between
    length = st.sampled_from([1, max_line, max_line + 1]) | st.integers(1, max_line + 2)
    pattern = draw(st.lists(length, min_size=1, max_size=40))
    at_least = -(-lines_module._NUMPY_BLOCK // sum(pattern))  # the smallest large block
    repeat = draw(
        st.sampled_from([1, 2, at_least - 1, at_least, 4 * at_least]) | st.integers(1, 4 * at_least)
    )
    lengths = pattern * repeat
    if draw(st.booleans()):  # one line apart, anywhere
        lengths.insert(draw(st.integers(0, len(lengths))), draw(length))
    fill = draw(st.sampled_from([b"x", b"\0", b"\xe2", b"\x0b"]))
    return max_line, b"".join(fill * (n - 1) + b"\n" for n in lengths), lengths


@pytest.mark.parametrize("how", LENGTHS)
@settings(max_examples=200, deadline=None)
@given(short_line_blocks())
def test_lengths_of_short_lines(how: str, case: tuple[int, bytes, list[int]]) -> None:
    max_line, data, lengths = case
    with lengths_by(how) as measured:
        got = LineAssembler(max_line).feed_block(data)
    if max(lengths) <= max_line:
        assert isinstance(got, LineBlock) and got.data == data
        assert got.lengths == array("I", lengths)
    else:
        assert got == LineAssembler(max_line).feed(data)
    large = len(data) >= lines_module._NUMPY_BLOCK
    assert measured == ([len(data)] if how == "numpy" and large else [])


@needs_numpy
@pytest.mark.parametrize("max_line", [4, 100, 65536])
def test_numpy_lengths_at_the_edges(max_line: int) -> None:
    np = lines_module._numpy()
    assert np is not None
    for lengths in (
        [1],
        [1] * 5000,
        [max_line],
        [max_line + 1],
        [max_line, 1, 1],
        [1, 1, max_line + 1],
        [3, max_line + 1, 3],
        [max_line] * 50 + [max_line + 1],
    ):
        data = b"".join(b"y" * (n - 1) + b"\n" for n in lengths)
        got = lines_module._numpy_lengths(np, data, max_line)
        assert got == (array("I", lengths) if max(lengths) <= max_line else None), lengths


#: Run in a fresh interpreter: imports nanny_io_proto.lines, feeds one large block of short
#: lines, and reports what it saw.
FEED_SHORT_LINES = """
import json, os, sys
before = dict(os.environ)
from nanny_io_proto import lines
imported_early = "numpy" in sys.modules
asm = lines.LineAssembler()
blocks = [asm.feed_block((b"x" * 99 + b"\\n") * 1000) for _ in range(2)]
print(json.dumps({
    "imported_early": imported_early,
    "numpy": sys.modules.get("numpy") is not None,
    "lengths": [list(set(b.lengths)) for b in blocks if isinstance(b, lines.LineBlock)],
    "tries": lines._import_numpy.cache_info().misses,
    "changed": {k: [before.get(k), os.environ.get(k)] for k in before.keys() | os.environ.keys()
                if before.get(k) != os.environ.get(k)},
    "threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1,
}))
"""


def feed_short_lines(prelude: str = "", **env: str) -> dict[str, object]:
    root = Path(lines_module.__file__).resolve().parents[1]
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    environ |= {"PYTHONPATH": str(root), **env}
    done = subprocess.run(
        [sys.executable, "-c", prelude + FEED_SHORT_LINES],
        env=environ,
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@needs_numpy
def test_numpy_is_imported_late_and_leaves_the_environment_as_it_was() -> None:
    seen = feed_short_lines(OMP_NUM_THREADS="3")  # one set, two absent: both are restored
    assert seen["imported_early"] is False
    assert seen["numpy"] is True and seen["tries"] == 1
    assert seen["lengths"] == [[100], [100]]
    assert seen["changed"] == {}
    # OPENBLAS_NUM_THREADS=1 meanwhile: OpenBLAS started no thread (one per core without it)
    assert seen["threads"] == 1


def test_without_numpy_the_lengths_come_from_splitlines() -> None:
    seen = feed_short_lines("import sys; sys.modules['numpy'] = None\n")  # import fails
    assert seen["numpy"] is False
    assert seen["tries"] == 1  # the failure is remembered, not retried on the second block
    assert seen["lengths"] == [[100], [100]]
    assert seen["changed"] == {}
