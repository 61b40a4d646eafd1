"""Tests for nanny_io_proto.priorities: ``<N>`` prefixes at line starts, names, defaults."""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.control import KernelDied, LastWords
from nanny_io_proto.errors import LocalProtocolError, MalformedMessage
from nanny_io_proto.lines import LineAssembler, LineBlock
from nanny_io_proto.logrecords import LogRecord, pack_records, unpack_records
from nanny_io_proto.priorities import (
    DEFAULT_PRIORITY,
    PRIORITY_NAMES,
    PriorityLines,
    parse_priority,
    priority_flags,
    priority_of,
)
from nanny_io_proto.streams import FLAG_NO_EOL, FLAG_PRIORITY, PRIORITY_MASK, Stream

Record = tuple[bytes, int]
_PREFIX = re.compile(rb"<([0-7])>")


def run(
    chunks: Sequence[bytes],
    max_line: int = 65536,
    flush_after: Sequence[int] = (),
    blocks: bool = False,
) -> list[Record]:
    """The records of ``chunks``; with ``blocks``, through ``feed_block`` (blocks expanded)."""
    lines = PriorityLines(LineAssembler(max_line))
    out: list[Record] = []
    for i, chunk in enumerate(chunks):
        got = lines.feed_block(chunk) if blocks else lines.feed(chunk)
        out.extend(got.records() if isinstance(got, LineBlock) else got)
        if i in flush_after:
            out.extend(lines.flush())
    out.extend(lines.flush())
    return out


def expected(data: bytes) -> list[tuple[bytes, int | None]]:
    """Reference: each line of ``data`` (with its newline) without its prefix, and its priority."""
    result: list[tuple[bytes, int | None]] = []
    for line in _split_nl(data):
        m = _PREFIX.match(line)
        if m and len(line) == 3:
            continue  # "<N>" alone at the end: no text, no record
        result.append((line[3:], int(m.group(1))) if m else (line, None))
    return result


def _split_nl(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def lines_of(records: Sequence[Record]) -> list[tuple[bytes, int | None]]:
    """Join FLAG_NO_EOL pieces into lines; check every piece of a line has the same flags."""
    out: list[tuple[bytes, int | None]] = []
    pieces: list[bytes] = []
    prio: set[int] = set()
    for data, flags in records:
        pieces.append(data)
        prio.add(flags & (FLAG_PRIORITY | PRIORITY_MASK))
        if not flags & FLAG_NO_EOL:
            assert len(prio) == 1, "every piece of a line carries the line's priority"
            p = prio.pop()
            out.append((b"".join(pieces), priority_of(Stream.LOG, p) if p else None))
            pieces = []
    if pieces:
        assert len(prio) == 1
        p = prio.pop()
        out.append((b"".join(pieces), priority_of(Stream.LOG, p) if p else None))
    return out


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- the prefix ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(8))
def test_each_priority_is_read_and_stripped(n: int) -> None:
    assert run([f"<{n}>hello\n".encode()]) == [(b"hello\n", priority_flags(n))]
    assert priority_of(Stream.STDOUT, priority_flags(n)) == n


@pytest.mark.parametrize(
    "line",
    [
        b"<8>x\n",
        b"<9>x\n",
        b"<>x\n",
        b"<-1>x\n",
        b"<10>x\n",
        b"<a>x\n",
        b" <3>x\n",
        b"<3 x\n",
        b"<\n",
    ],
)
def test_lt_without_a_valid_number_is_text(line: bytes) -> None:
    assert run([line]) == [(line, 0)]


def test_prefix_only_at_line_start() -> None:
    assert run([b"a <3> b\n<4>c\n"]) == [(b"a <3> b\n", 0), (b"c\n", priority_flags(4))]


def test_only_the_first_prefix_is_taken() -> None:
    assert run([b"<3><4>x\n"]) == [(b"<4>x\n", priority_flags(3))]


def test_prefix_split_across_reads() -> None:
    assert run([b"<", b"3", b">oops", b"\n"]) == [(b"oops\n", priority_flags(3))]


def test_partial_line_and_its_continuation_keep_the_priority() -> None:
    out = run([b"<2>progress 10%", b" 20%\n", b"next\n"], flush_after=[0])
    assert out == [
        (b"progress 10%", priority_flags(2) | FLAG_NO_EOL),
        (b" 20%\n", priority_flags(2)),
        (b"next\n", 0),
    ]


def test_continuation_starting_with_lt_is_text() -> None:
    out = run([b"<5>a", b"<3>b\n"], flush_after=[0])
    assert out == [(b"a", priority_flags(5) | FLAG_NO_EOL), (b"<3>b\n", priority_flags(5))]


def test_long_line_pieces_keep_the_priority() -> None:
    out = run([b"<1>" + b"x" * 20 + b"\n"], max_line=8)
    assert b"".join(d for d, _ in out) == b"x" * 20 + b"\n"
    assert all(f & ~FLAG_NO_EOL == priority_flags(1) for _, f in out)
    assert [f & FLAG_NO_EOL for _, f in out] == [1] * (len(out) - 1) + [0]


def test_prefix_alone_flushed_gives_no_empty_record() -> None:
    out = run([b"<3>", b"text\n"], flush_after=[0])
    assert out == [(b"text\n", priority_flags(3))]


def test_unprefixed_open_line_stays_default() -> None:
    out = run([b"abc", b"<3>def\n<3>g\n"], flush_after=[0])
    assert out == [(b"abc", FLAG_NO_EOL), (b"<3>def\n", 0), (b"g\n", priority_flags(3))]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=12),
            st.sampled_from([b"<", b">", b"\n", b"<3>", b"\n<7>", b"<8>", b"3>", b"\n<"]),
        ),
        max_size=20,
    ).map(b"".join),
    st.lists(st.integers(0, 200), max_size=8),
)
def test_any_bytes_any_chunking(data: bytes, cuts: list[int]) -> None:
    """Every byte sequence: prefixes at line starts become priorities, everything else is text,
    and how the input was chunked changes nothing."""
    cuts = [c for c in cuts if c <= len(data)]
    whole = run([data])
    assert run(split_at(data, cuts)) == whole
    assert run([bytes([b]) for b in data]) == whole
    assert run(split_at(data, cuts), flush_after=cuts[:2], blocks=True) == run(
        split_at(data, cuts), flush_after=cuts[:2]
    )
    assert lines_of(whole) == expected(data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"<", b"4", b">", b"x", b"\n", b"\xc3\xa9", b"<6>"]), max_size=40
    ).map(b"".join),
    st.integers(4, 9),
)
def test_long_lines_any_max_line(data: bytes, max_line: int) -> None:
    out = run([data], max_line=max_line)
    assert run([bytes([b]) for b in data], max_line=max_line) == out
    assert lines_of(out) == expected(data)
    assert all(len(d) <= max_line for d, _ in out)


def test_fast_path_leaves_records_alone() -> None:
    lines = PriorityLines(LineAssembler())
    plain = LineAssembler()
    chunk = b"x" * 50 + b"\n" + b"a < b\n" * 3 + b"tail"
    assert lines.feed(chunk) == plain.feed(chunk)
    assert lines.flush() == plain.flush()
    block = lines.feed_block(chunk)  # no prefix possible: a block, as the assembler's
    assert isinstance(block, LineBlock) and block.records() == plain.feed(chunk)
    assert not isinstance(lines.feed_block(b"\n<3>x\n"), LineBlock)  # a prefix: marked


# --- names and defaults -------------------------------------------------------------------


def test_names_and_numbers() -> None:
    for n, name in enumerate(PRIORITY_NAMES):
        assert parse_priority(name) == n
        assert parse_priority(name.upper()) == n
        assert parse_priority(str(n)) == n
    assert parse_priority("error") == 3
    assert parse_priority("warn") == 4
    for bad in ("8", "-1", "fatal", "", "33"):
        with pytest.raises(LocalProtocolError, match="unknown priority"):
            parse_priority(bad)


def test_defaults_per_stream() -> None:
    assert [priority_of(s, 0) for s in Stream] == [DEFAULT_PRIORITY[s] for s in Stream]
    assert priority_of(Stream.STDOUT, 0) == 6
    assert priority_of(Stream.LOG, FLAG_NO_EOL) == 6
    assert priority_of(Stream.STDERR, 0) == 4
    assert priority_of(Stream.STDERR, priority_flags(0)) == 0


def test_an_old_client_reads_prioritised_records_unchanged() -> None:
    """The body layout is the same: a client that only knows FLAG_NO_EOL (and ignores the
    reserved bits, as the spec requires) reads the same records, lines joined the same way."""
    records = [
        LogRecord(1, 10, 1, Stream.LOG, b"lost the ", priority_flags(3) | FLAG_NO_EOL),
        LogRecord(2, 11, 1, Stream.LOG, b"connection\n", priority_flags(3)),
        LogRecord(3, 12, 1, Stream.STDOUT, b"plain\n", 0),
    ]
    body = pack_records(records)
    assert len(body) == 4 + 26 * 3 + sum(len(r.data) for r in records)
    (count,) = struct.unpack_from("<I", body)
    heads = list(struct.iter_unpack("<QQIBBI", body[4 : 4 + 26 * count]))
    old_view = [(seq, flags & 1) for seq, _, _, _, flags, _ in heads]  # FLAG_NO_EOL only
    assert old_view == [(1, 1), (2, 0), (3, 0)]
    assert unpack_records(body) == records
    # the records as text, the way any renderer joins them: the priority does not get in
    text = b"".join(r.data for r in records if r.stream is Stream.LOG)
    assert text == b"lost the connection\n"


def test_last_words_with_and_without_priorities() -> None:
    new = KernelDied(None, 9, "SIGKILL", 1, "r", (("stderr", "a", 3), ("log", "b")))
    content = new.to_content()
    assert content["last_words"] == [
        {"stream": "stderr", "text": "a", "priority": 3},
        {"stream": "log", "text": "b"},
    ]
    assert KernelDied.from_content(content) == new
    old = {"incarnation": 1, "reason": "r", "last_words": [{"stream": "stderr", "text": "a"}]}
    assert KernelDied.from_content(old).last_words == (("stderr", "a"),)
    for bad in (8, -1, "3", None, True):
        words = [{"stream": "stderr", "text": "a", "priority": bad}]
        with pytest.raises(MalformedMessage, match="priority"):
            KernelDied.from_content({**old, "last_words": words})
    kept = LastWords.from_tail([("stderr", "x" * 10, 2), ("log", "y", 6)], max_chars=5)
    assert kept.lines == (("stderr", "xxxx", 2), ("log", "y", 6))
