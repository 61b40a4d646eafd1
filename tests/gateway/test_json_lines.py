"""Records as JSON lines for cluster log collectors: every line parses and fits under the
container runtime's 16 KiB split, and the pieces of a record give back its text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.errors import LocalProtocolError
from nanny_io_proto.jsonlines import RUNTIME_LINE_LIMIT, record_json_lines
from nanny_io_proto.logrecords import LogRecord, nanny_event_data
from nanny_io_proto.priorities import priority_flags
from nanny_io_proto.streams import FLAG_IOPUB, FLAG_NO_EOL, Stream

EXAMPLES = settings(max_examples=200, deadline=None)
TIME = "2024-05-01T12:00:00.000+00:00"
KID = "6f0b5c2e-8a6d-4a53-9f43-0d2b8f1d0c11"


def _record(data: bytes, stream: Stream = Stream.STDOUT, flags: int = 0) -> LogRecord:
    return LogRecord(seq=7, time_ns=1, incarnation=1, stream=stream, data=data, flags=flags)


def test_a_line_is_one_object_with_the_documented_keys() -> None:
    (line,) = record_json_lines(_record(b"hello\n"), time=TIME, kernel_id=KID)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert list(obj) == [
        "time",
        "seq",
        "stream",
        "source",
        "text",
        "incarnation",
        "kernel_id",
        "priority",
    ]
    assert obj == {
        "time": TIME,
        "seq": 7,
        "stream": "stdout",
        "source": "fd",
        "text": "hello",
        "incarnation": 1,
        "kernel_id": KID,
        "priority": 6,
    }


def test_the_priority_is_the_records_or_its_streams_default() -> None:
    (line,) = record_json_lines(
        _record(b"x\n", flags=priority_flags(2) | FLAG_NO_EOL), time=TIME, kernel_id=KID
    )
    assert json.loads(line)["priority"] == 2
    (line,) = record_json_lines(_record(b"x\n", Stream.STDERR), time=TIME, kernel_id=KID)
    assert json.loads(line)["priority"] == 4


def test_the_source_tells_fd_output_from_iopub_output_and_nanny_events() -> None:
    def source(stream: Stream, flags: int = 0) -> str:
        data = nanny_event_data("x", "t") if stream is Stream.NANNY else b"x\n"
        (line,) = record_json_lines(_record(data, stream, flags), time=TIME, kernel_id=KID)
        return str(json.loads(line)["source"])

    assert source(Stream.STDOUT) == "fd"
    assert source(Stream.LOG) == "fd"
    assert source(Stream.STDERR, FLAG_IOPUB | priority_flags(3)) == "iopub"
    assert source(Stream.NANNY) == "nanny"


def test_a_partial_line_says_so() -> None:
    (line,) = record_json_lines(_record(b"50%", flags=FLAG_NO_EOL), time=TIME, kernel_id=KID)
    assert json.loads(line)["partial"] is True


def test_a_nanny_event_carries_its_details_but_not_its_bulk() -> None:
    words = [{"stream": "stderr", "text": "x" * 1000 + "\n"}] * 30
    data = nanny_event_data(
        "kernel_died", "kernel died: killed by SIGKILL", signal=9, reason="r", last_words=words
    )
    lines = record_json_lines(_record(data, Stream.NANNY), time=TIME, kernel_id=KID)
    assert len(lines) == 1 and len(lines[0]) <= RUNTIME_LINE_LIMIT
    obj = json.loads(lines[0])
    assert obj["text"] == "kernel died: killed by SIGKILL"
    assert obj["event"] == {"event": "kernel_died", "signal": 9, "reason": "r"}
    small = nanny_event_data("kernel_started", "kernel started (pid 5)", pid=5)
    (line,) = record_json_lines(_record(small, Stream.NANNY), time=TIME, kernel_id=KID)
    assert json.loads(line)["event"] == {"event": "kernel_started", "pid": 5}


def test_a_long_line_is_cut_under_the_limit() -> None:
    data = ("é\x01" * 20000 + "\n").encode()  # 6-byte escapes and 2-byte characters
    lines = record_json_lines(_record(data), time=TIME, kernel_id=KID)
    assert len(lines) > 1
    assert all(len(line) <= RUNTIME_LINE_LIMIT for line in lines)
    objs = [json.loads(line) for line in lines]
    assert [o.get("partial", False) for o in objs] == [True] * (len(objs) - 1) + [False]
    assert "".join(o["text"] for o in objs) == data.decode()[:-1]
    assert {o["seq"] for o in objs} == {7}


def test_a_limit_too_small_for_the_envelope_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        record_json_lines(_record(b"x" * 100 + b"\n"), time=TIME, kernel_id=KID, limit=80)


@EXAMPLES
@given(
    data=st.binary(max_size=3000) | st.text(max_size=1500).map(lambda t: t.encode()),
    partial=st.booleans(),
    limit=st.integers(min_value=260, max_value=2000),
)
def test_lines_fit_parse_and_give_back_the_text(data: bytes, partial: bool, limit: int) -> None:
    flags = FLAG_NO_EOL if partial else 0
    record = _record(data if partial else data + b"\n", flags=flags)
    lines = record_json_lines(record, time=TIME, kernel_id=KID, limit=limit)
    assert lines and all(len(line) <= limit and line.endswith(b"\n") for line in lines)
    assert all(line.count(b"\n") == 1 for line in lines)
    objs = [json.loads(line) for line in lines]
    assert "".join(o["text"] for o in objs) == data.decode("utf-8", "replace")
    assert [o.get("partial", False) for o in objs[:-1]] == [True] * (len(objs) - 1)
    assert objs[-1].get("partial", False) is partial
