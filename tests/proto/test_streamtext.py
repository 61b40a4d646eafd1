"""Utf8Text: captured bytes to the UTF-8 text frontends get, however the reads are cut."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from nanny_io_proto.streamtext import Utf8Text

#: Bytes that are mostly UTF-8 with the hard cases mixed in: characters of 1-4 bytes, their
#: pieces, stray continuation bytes, encoded surrogates, U+FFFD itself.
fragments = st.sampled_from(
    [
        b"a",
        b"\n",
        "é".encode(),
        "€".encode(),
        "😀".encode(),
        "😀".encode()[:2],
        b"\x80",
        b"\xc3",
        b"\xff",
        b"\xed\xa0\x80",
        "\ufffd".encode(),
        b"\xf0\x9f",
    ]
)
streams = st.lists(fragments, max_size=40).map(b"".join) | st.binary(max_size=64)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(data=streams, points=st.lists(st.integers(min_value=0), max_size=6))
def test_any_cut_gives_the_replace_decoded_text(data: bytes, points: list[int]) -> None:
    text = Utf8Text()
    out = [text.feed(chunk) for chunk in cut(data, points)]
    out.append(text.feed(b"", final=True))
    assert b"".join(out) == data.decode("utf-8", "replace").encode()
    assert all(piece.decode() is not None for piece in out)  # every piece is valid UTF-8
    assert not text.pending


def test_ascii_and_valid_utf8_pass_through_uncopied() -> None:
    text = Utf8Text()
    ascii_read = b"x" * 1000 + b"\n"
    assert text.feed(ascii_read) is ascii_read
    utf8_read = "é€😀\n".encode() * 100
    assert text.feed(utf8_read) is utf8_read


def test_a_character_split_across_reads_stays_whole() -> None:
    text = Utf8Text()
    euro = "€".encode()
    assert text.feed(b"ab" + euro[:1]) == b"ab"
    assert text.pending
    assert text.feed(euro[1:] + b"cd") == "€cd".encode()
    assert not text.pending


def test_reset_drops_a_held_partial_character() -> None:
    text = Utf8Text()
    assert text.feed("€".encode()[:2]) == b""
    text.reset()
    assert text.feed(b"x") == b"x"
    assert text.feed(b"", final=True) == b""


def test_final_replaces_a_dangling_partial_character() -> None:
    text = Utf8Text()
    assert text.feed(b"ok\xe2\x82") == b"ok"
    assert text.feed(b"", final=True) == "\ufffd".encode()
