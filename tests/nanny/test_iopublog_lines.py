"""The kernel's iopub output as line records: cut as captured output is."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nanny_io.capture import MAX_LINE
from nanny_io.iopublog import line_pieces
from nanny_io_proto.streams import FLAG_IOPUB, FLAG_NO_EOL


def test_lines_then_a_partial_last_line() -> None:
    assert line_pieces("a\nbc\nd") == [
        (b"a\n", FLAG_IOPUB),
        (b"bc\n", FLAG_IOPUB),
        (b"d", FLAG_IOPUB | FLAG_NO_EOL),
    ]


def test_an_overlong_line_is_cut_between_characters() -> None:
    text = "a" + "é" * MAX_LINE + "\n"  # 2-byte characters after one byte: a cut at
    # MAX_LINE bytes would fall inside one
    pieces = line_pieces(text)
    assert len(pieces) > 1
    for data, flags in pieces:
        data.decode("utf-8")  # every piece holds whole characters
        assert len(data) <= MAX_LINE
        assert flags & FLAG_IOPUB
    assert [flags & FLAG_NO_EOL for _, flags in pieces] == [FLAG_NO_EOL] * (len(pieces) - 1) + [0]


@given(st.text(alphabet="ab€\n\r😀", max_size=300))
def test_the_pieces_give_back_the_text(text: str) -> None:
    pieces = line_pieces(text)
    assert b"".join(data for data, _ in pieces) == text.encode()
    assert all(flags & FLAG_IOPUB for _, flags in pieces)
