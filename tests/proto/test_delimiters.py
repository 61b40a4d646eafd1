"""Tests for nanny_io_proto.delimiters: markers, events and the incremental scanner."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.delimiters import (
    MAX_DELIMITER_LEN,
    Begin,
    DelimiterScanner,
    End,
    Event,
    Output,
    begin_marker,
    end_marker,
    is_valid_msg_id,
)
from nanny_io_proto.errors import LocalProtocolError

# An independent statement of the grammar, used as the oracle for whole inputs.
ORACLE = re.compile(rb"\x1b\]5379;nanny-io;(begin|end);([A-Za-z0-9._:@\-]{1,128})\x07")
HOLD_BOUND = MAX_DELIMITER_LEN - 1

LOOKALIKES = [
    b"\x1b]5379;nanny-io;begin;bad id\x07",  # space in msg_id
    b"\x1b]5379;nanny-io;begin;\x07",  # empty msg_id
    b"\x1b]5379;nanny-io;begin;" + b"a" * 129 + b"\x07",  # msg_id too long
    b"\x1b]5379;nanny-io;begin;abc",  # missing BEL (then more output)
    b"\x1b]5379;nanny-io;begin;abc\x1b\\",  # ST instead of BEL
    b"\x1b]5379;nanny-io;start;abc\x07",  # unknown kind
    b"\x1b]5379;other;begin;abc\x07",  # other namespace
    b"\x1b]5378;nanny-io;begin;abc\x07",  # other OSC number
    b"\x1b]5379;nanny-io;BEGIN;abc\x07",  # kinds are lowercase
    b"\x1b]5379;nanny-io;end;caf\xc3\xa9\x07",  # non-ASCII msg_id
    b"\x1b[31mred\x1b[0m",  # ordinary ANSI colour
    b"\x1b]0;window title\x07",  # ordinary OSC
    b"\x1b\x1b]5379;nanny-io",  # truncated, then released
]

SAMPLE = (
    b"hello\n"
    + begin_marker("m-1")
    + b"\x1b[1mbold\x1b[0m\n"
    + b"\x1b]5379;nanny-io;end;bad id\x07"
    + end_marker("m-1")
    + end_marker("m-1")
    + b"tail\x1b"
)


def merge(events: Iterable[Event]) -> list[Event]:
    """Events with adjacent Output pieces joined (how chunking may legitimately differ)."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, Output) and out and isinstance(out[-1], Output):
            out[-1] = Output(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def oracle(data: bytes) -> list[Event]:
    events: list[Event] = []
    pos = 0
    for m in ORACLE.finditer(data):
        events.append(Output(data[pos : m.start()]))
        msg_id = m.group(2).decode()
        events.append(Begin(msg_id) if m.group(1) == b"begin" else End(msg_id))
        pos = m.end()
    events.append(Output(data[pos:]))
    return merge(ev for ev in events if not (isinstance(ev, Output) and not ev.data))


def scan(chunks: Iterable[bytes]) -> list[Event]:
    """Feed chunks one by one, checking per-feed invariants; flush at the end."""
    scanner = DelimiterScanner()
    events: list[Event] = []
    for chunk in chunks:
        got = scanner.feed(chunk)
        assert got == merge(got), "adjacent Output within one feed"
        assert all(not (isinstance(e, Output) and not e.data) for e in got)
        assert 0 <= scanner.pending <= HOLD_BOUND
        events.extend(got)
    events.extend(scanner.flush())
    assert scanner.pending == 0
    return merge(events)


def rebuild(events: Iterable[Event]) -> bytes:
    parts = []
    for ev in events:
        if isinstance(ev, Output):
            parts.append(ev.data)
        elif isinstance(ev, Begin):
            parts.append(begin_marker(ev.msg_id))
        else:
            parts.append(end_marker(ev.msg_id))
    return b"".join(parts)


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- markers and events -------------------------------------------------------------------


def test_marker_bytes() -> None:
    assert begin_marker("abc") == b"\x1b]5379;nanny-io;begin;abc\x07"
    assert end_marker("a.b_c:d@e-F9") == b"\x1b]5379;nanny-io;end;a.b_c:d@e-F9\x07"
    longest = begin_marker("x" * 128)
    assert len(longest) == MAX_DELIMITER_LEN == 151
    assert len(longest) <= 512  # well under PIPE_BUF on every platform: one atomic write


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "caf\u00e9", "a\x07", "a;b", "a\n"])
def test_bad_msg_id_is_refused(bad: str) -> None:
    assert not is_valid_msg_id(bad)
    with pytest.raises(LocalProtocolError):
        begin_marker(bad)
    with pytest.raises(LocalProtocolError):
        end_marker(bad)
    with pytest.raises(LocalProtocolError):
        Begin(bad)
    with pytest.raises(LocalProtocolError):
        End(bad)


def test_event_validation() -> None:
    with pytest.raises(LocalProtocolError):
        Output("text")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Begin(123)  # type: ignore[arg-type]
    assert not is_valid_msg_id(None)  # type: ignore[arg-type]


def test_jupyter_msg_ids_are_valid() -> None:
    # jupyter_client's "<session uuid>_<pid>_<n>" and plain uuid4 forms.
    assert is_valid_msg_id("5f0c6f1e-3c1b4c33b7a5a2d7e2e5c0de_4242_17")
    assert is_valid_msg_id("9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d")


# --- scanner basics -------------------------------------------------------------------------


def test_plain_output_fast_path() -> None:
    scanner = DelimiterScanner()
    data = b"no escapes here\n" * 100
    assert scanner.feed(data) == [Output(data)]
    assert scanner.pending == 0
    assert scanner.feed(b"") == []
    assert scanner.flush() == []


def test_begin_output_end() -> None:
    scanner = DelimiterScanner()
    data = b"a" + begin_marker("r1") + b"b\n" + end_marker("r1") + b"c"
    assert scanner.feed(data) == [
        Output(b"a"),
        Begin("r1"),
        Output(b"b\n"),
        End("r1"),
        Output(b"c"),
    ]


def test_adjacent_delimiters() -> None:
    data = begin_marker("x") + end_marker("x") + begin_marker("y")
    assert DelimiterScanner().feed(data) == [Begin("x"), End("x"), Begin("y")]


def test_partial_prefix_is_held_then_released() -> None:
    scanner = DelimiterScanner()
    assert scanner.feed(b"out\x1b]53") == [Output(b"out")]
    assert scanner.pending == 4
    # The next byte makes a delimiter impossible: everything is released at once.
    assert scanner.feed(b"x") == [Output(b"\x1b]53x")]
    assert scanner.pending == 0


def test_partial_prefix_completed() -> None:
    scanner = DelimiterScanner()
    marker = end_marker("abc")
    assert scanner.feed(b"out" + marker[:20]) == [Output(b"out")]
    assert scanner.pending == 20
    assert scanner.feed(marker[20:] + b"more") == [End("abc"), Output(b"more")]
    assert scanner.pending == 0


def test_flush_releases_held_bytes() -> None:
    scanner = DelimiterScanner()
    assert scanner.feed(b"\x1b]5379;nanny-io;begin;abc") == []
    assert scanner.flush() == [Output(b"\x1b]5379;nanny-io;begin;abc")]
    assert scanner.pending == 0
    assert scanner.flush() == []


def test_hold_bound_is_reached_exactly() -> None:
    scanner = DelimiterScanner()
    almost = begin_marker("a" * 128)[:-1]
    assert scanner.feed(almost) == []
    assert scanner.pending == HOLD_BOUND == len(almost)
    # One more msg_id character makes it too long: released as output.
    assert scanner.feed(b"a") == [Output(almost + b"a")]
    assert scanner.pending == 0


def test_only_the_suffix_from_the_last_candidate_is_held() -> None:
    scanner = DelimiterScanner()
    events = scanner.feed(b"\x1b[0m\x1b]0;t\x07x\x1b]5379;")
    assert events == [Output(b"\x1b[0m\x1b]0;t\x07x")]
    assert scanner.pending == len(b"\x1b]5379;")


@pytest.mark.parametrize("lookalike", LOOKALIKES)
def test_lookalikes_are_output(lookalike: bytes) -> None:
    data = b"a" + lookalike + b"z\n"
    assert scan([data]) == [Output(data)]
    assert scan([bytes([b]) for b in data]) == [Output(data)]


def test_lookalike_followed_by_real_delimiter() -> None:
    data = b"\x1b]5379;nanny-io;begin;abc" + begin_marker("abc")
    assert scan([data]) == [Output(b"\x1b]5379;nanny-io;begin;abc"), Begin("abc")]


# --- split positions ------------------------------------------------------------------------


def test_every_split_position() -> None:
    expected = oracle(SAMPLE)
    assert Begin("m-1") in expected and expected.count(End("m-1")) == 2
    for i in range(len(SAMPLE) + 1):
        assert scan(split_at(SAMPLE, [i])) == expected, i


def test_every_two_split_combination() -> None:
    data = b"ab" + begin_marker("q") + b"\x1b]5379;x" + end_marker("q") + b"\x1b"
    expected = oracle(data)
    n = len(data)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert scan(split_at(data, [i, j])) == expected, (i, j)


def test_longest_msg_id_every_split_position() -> None:
    data = b"x" + begin_marker("i" * 128) + b"y" + end_marker("j" * 128)
    expected = [Output(b"x"), Begin("i" * 128), Output(b"y"), End("j" * 128)]
    for i in range(len(data) + 1):
        assert scan(split_at(data, [i])) == expected, i


def test_byte_by_byte_equals_whole() -> None:
    assert scan([bytes([b]) for b in SAMPLE]) == scan([SAMPLE]) == oracle(SAMPLE)


# --- properties -----------------------------------------------------------------------------

msg_ids = st.text(alphabet="abcXYZ019._:@-", min_size=1, max_size=130)
pieces = st.one_of(
    st.binary(max_size=20),
    msg_ids.map(lambda m: b"\x1b]5379;nanny-io;begin;" + m.encode() + b"\x07"),
    msg_ids.map(lambda m: b"\x1b]5379;nanny-io;end;" + m.encode() + b"\x07"),
    st.sampled_from(LOOKALIKES),
    st.sampled_from([b"\x1b", b"\x07", b"\x1b]", b"\x1b]5379;nanny-io;", b"end;", b"begin;"]),
)
streams = st.lists(pieces, max_size=12).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(streams)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    return data, split_at(data, cuts)


@settings(max_examples=300, deadline=None)
@given(chunked())
def test_random_k_splits_match_oracle(case: tuple[bytes, list[bytes]]) -> None:
    data, chunks = case
    events = scan(chunks)
    assert events == oracle(data)
    assert rebuild(events) == data


@settings(max_examples=150, deadline=None)
@given(streams)
def test_byte_by_byte_property(data: bytes) -> None:
    assert scan([bytes([b]) for b in data]) == scan([data])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_arbitrary_bytes_never_raise_and_reconstruct(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    events = scan(chunks)
    assert rebuild(events) == data
    outputs = b"".join(e.data for e in events if isinstance(e, Output))
    assert outputs == ORACLE.sub(b"", data)  # only real delimiters are removed


@settings(max_examples=200, deadline=None)
@given(st.lists(pieces, max_size=12))
def test_held_bytes_are_a_minimal_candidate(parts: list[bytes]) -> None:
    scanner = DelimiterScanner()
    fed = b""
    released = 0
    for part in parts:
        for ev in scanner.feed(part):
            released += len(rebuild([ev]))
        fed += part
        held = fed[released:]
        assert len(held) == scanner.pending <= HOLD_BOUND
        if held:
            # What is held starts with ESC and could still become a delimiter.
            assert held[:1] == b"\x1b"
            assert could_complete(held), held


def could_complete(held: bytes) -> bool:
    if ORACLE.fullmatch(held + b"\x07") or ORACLE.fullmatch(held + b"a\x07"):
        return True
    return any(m.startswith(held) for m in (begin_marker("a"), end_marker("a")))


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9._:@\-]{1,128}", fullmatch=True), st.binary(max_size=8))
def test_marker_round_trip(msg_id: str, around: bytes) -> None:
    around = around.replace(b"\x1b", b"")
    data = around + begin_marker(msg_id) + around + end_marker(msg_id) + around
    expected = merge([Output(around), Begin(msg_id), Output(around), End(msg_id), Output(around)])
    assert scan([data]) == [e for e in expected if not (isinstance(e, Output) and not e.data)]
