"""How ``nanny-io tail`` renders kernel text for humans: control characters escaped, safe
colours kept on a terminal, priorities coloured, raw with ``-a`` (no kernel needed)."""

from __future__ import annotations

import io
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io.tail import Printer, escape_controls
from nanny_io_proto.logrecords import LogRecord
from nanny_io_proto.priorities import priority_flags
from nanny_io_proto.streams import Stream

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SGR = re.compile(r"\x1b\[[0-9;:]*m")

hostile = st.lists(
    st.one_of(
        st.text(max_size=8),
        st.sampled_from(
            [
                "\x1b",
                "\x1b[",
                "\x1b]0;t\x07",
                "\x1b[2J",
                "\x1b[8m",
                "\x1b[31m",
                "\x1b[38;5;1m",
                "\x1b[38;2;1;2;3m",
                "\x1b[5m",
                "\r",
                "\x07",
                "\x9b",
                "\u202e",
                "m",
                ";",
                "0",
            ]
        ),
    ),
    max_size=20,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(hostile)
def test_escaped_text_has_no_control_characters(text: str) -> None:
    assert not _UNSAFE.search(escape_controls(text).replace("\n", "").replace("\t", ""))


@settings(max_examples=300, deadline=None)
@given(hostile)
def test_with_colour_only_safe_sgr_sequences_remain(text: str) -> None:
    out = escape_controls(text, keep_sgr=True, color=True, resume="\x1b[33m")
    for seq in _SGR.findall(out):
        params = seq[2:-1].replace(":", ";").split(";")
        assert "8" not in params and "5" not in params[:1], seq
    assert not _UNSAFE.search(_SGR.sub("", out).replace("\n", "").replace("\t", ""))


def test_what_escapes_look_like() -> None:
    assert escape_controls("a\rb\x1b]0;t\x07c") == "a\\rb\\e]0;t\\ac"
    assert escape_controls("\x00\x7f\x9b\u202e") == "\\x00\\x7f\\x9b\\u202e"
    assert escape_controls("\x1b[8mhidden\x1b[0m", keep_sgr=True) == "\\e[8mhidden\x1b[0m"
    assert escape_controls("\x1b[1;31mred\x1b[0m", keep_sgr=True) == "\x1b[1;31mred\x1b[0m"
    assert escape_controls("tab\tstays") == "tab\tstays"


def _printed(rec: LogRecord, **kwargs: bool) -> str:
    out = io.StringIO()
    Printer(out, as_json=False, **kwargs).record(rec)
    return out.getvalue()


def test_priority_colours_and_raw() -> None:
    err = LogRecord(1, 0, 1, Stream.LOG, b"disk \x1b]52;c;eA==\x07full\n", priority_flags(3))
    coloured = _printed(err, color=True)
    assert "\x1b[31mdisk " in coloured and "\x1b]52" not in coloured
    assert _printed(err, color=False).endswith(" disk \\e]52;c;eA==\\afull\n")
    assert _printed(err, color=False, raw=True).endswith(" disk \x1b]52;c;eA==\x07full\n")
    warn = LogRecord(2, 0, 1, Stream.STDERR, b"careful\n", 0)  # stderr's default: warning
    assert "\x1b[33mcareful" in _printed(warn, color=True)


def test_a_record_of_several_lines_repeats_its_header() -> None:
    rec = LogRecord(3, 0, 1, Stream.STDOUT, b"one\n12:00:00.000 nanny  kernel died\n", 0)
    lines = _printed(rec, color=False).splitlines()
    assert len(lines) == 2
    head = lines[0][: lines[0].index("one")]
    assert lines[1] == head + "12:00:00.000 nanny  kernel died"
