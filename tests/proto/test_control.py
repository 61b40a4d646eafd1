"""Content schemas of the nanny's control replies and iopub broadcasts."""

from __future__ import annotations

import json
import signal as signal_module
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.control import (
    LAST_WORDS_MAX_CHARS,
    LAST_WORDS_MAX_LINES,
    NANNY_CONTROL_TYPES,
    KernelDied,
    KernelRestarted,
    KernelStarted,
    LastWords,
    ShutdownRequest,
    dead_status_content,
    describe_exit,
    error_reply_content,
    exit_details,
    interrupt_reply_content,
    parse_shutdown_request,
    parse_signal_request,
    shutdown_reply_content,
    signal_name,
    signal_reply_content,
)
from nanny_io_proto.deaths import (
    CELL_CODE_MAX_CHARS,
    OOM_SCOPES,
    OomKill,
    PeakMemory,
    RunningCell,
)
from nanny_io_proto.errors import LocalProtocolError, MalformedMessage, RemoteProtocolError

# A fixed table keeps the tests platform independent; the real one comes from the signal module.
SIGNALS = {"SIGHUP": 1, "SIGINT": 2, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGTERM": 15}
NUMBERS = {v: k for k, v in SIGNALS.items()}
#: The keys of a kernel_died message's content.
_DIED_FIELDS = [
    "exit_code",
    "signal",
    "signal_name",
    "incarnation",
    "reason",
    "last_words",
    "cause",
    "oom",
    "peak_memory",
    "cell",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _content_like(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects that mostly use the schema's keys with arbitrary values."""
    return st.dictionaries(
        st.sampled_from(keys) | st.text(max_size=6), json_values, max_size=len(keys) + 1
    )


# --- signal_request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "expected"),
    [
        (2, 2),
        ("SIGINT", 2),
        ("INT", 2),
        ("sigusr1", 10),
        ("usr1", 10),
        ("Term", 15),
        ("9", 9),
    ],
)
def test_signal_request_accepts_names_and_numbers(signum: Any, expected: int) -> None:
    assert parse_signal_request({"signum": signum}, SIGNALS) == expected


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({}, "lacks 'signum'"),
        ({"signum": "SIGFOO"}, "unknown signal name 'SIGFOO'"),
        ({"signum": 64}, "unknown signal number 64"),
        ({"signum": "64"}, "unknown signal number 64"),
        ({"signum": -9}, "unknown signal number -9"),
        ({"signum": "-9"}, "invalid signal '-9'"),
        ({"signum": True}, "must be a signal name or number"),
        ({"signum": 2.0}, "must be a signal name or number"),
        ({"signum": None}, "must be a signal name or number"),
        ({"signum": ""}, "invalid signal ''"),
        ({"signum": "SIG INT"}, "invalid signal"),
        ({"signum": "\u0131nt"}, "invalid signal"),  # dotless i upper-cases to "INT"
        ({"signum": "9" * 5000}, "invalid signal"),
    ],
)
def test_signal_request_rejects_with_a_reason(content: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_signal_request(content, SIGNALS)


def test_signal_request_with_the_real_signal_table() -> None:
    table = {s.name: s.value for s in signal_module.Signals}
    assert parse_signal_request({"signum": "SIGINT"}, table) == signal_module.SIGINT
    assert (
        parse_signal_request({"signum": int(signal_module.SIGTERM)}, table) == signal_module.SIGTERM
    )


@settings(max_examples=200, deadline=None)
@given(content=_content_like(["signum"]) | json_values)
def test_signal_request_any_content_is_a_signal_or_malformed(content: Any) -> None:
    try:
        signum = parse_signal_request(content, SIGNALS)
    except MalformedMessage:
        return
    assert signum in SIGNALS.values()


@given(name=st.sampled_from(sorted(SIGNALS)), lower=st.booleans(), short=st.booleans())
def test_every_spelling_of_a_name_gives_its_number(name: str, lower: bool, short: bool) -> None:
    spelled = name.removeprefix("SIG") if short else name
    spelled = spelled.lower() if lower else spelled
    assert parse_signal_request({"signum": spelled}, SIGNALS) == SIGNALS[name]


def test_signal_reply_content() -> None:
    assert signal_reply_content(10, "SIGUSR1") == {
        "status": "ok",
        "signum": 10,
        "signal_name": "SIGUSR1",
    }
    assert signal_name(10, SIGNALS) == "SIGUSR1"
    assert signal_name(99, SIGNALS) == "signal 99"
    with pytest.raises(LocalProtocolError):
        signal_reply_content(0, "SIGNONE")
    with pytest.raises(LocalProtocolError):
        signal_reply_content(True, "SIGHUP")
    with pytest.raises(LocalProtocolError):
        signal_reply_content(1, "")


def test_simple_replies() -> None:
    assert interrupt_reply_content() == {"status": "ok"}
    assert error_reply_content("UnknownSignal", "no SIGFOO here") == {
        "status": "error",
        "ename": "UnknownSignal",
        "evalue": "no SIGFOO here",
        "traceback": [],
    }
    assert dead_status_content() == {"execution_state": "dead"}
    assert {
        "interrupt_request",
        "signal_request",
        "shutdown_request",
        "launch_request",
    } == NANNY_CONTROL_TYPES
    for content in (
        interrupt_reply_content(),
        signal_reply_content(2, "SIGINT"),
        dead_status_content(),
    ):
        json.dumps(content, allow_nan=False)


# --- shutdown ------------------------------------------------------------------------------


def test_shutdown_request() -> None:
    assert parse_shutdown_request({}) == ShutdownRequest(restart=False)
    assert parse_shutdown_request({"restart": True}) == ShutdownRequest(restart=True)
    assert parse_shutdown_request({"restart": False, "extra": 1}) == ShutdownRequest(False)
    bad: object
    for bad in (1, "true", None, []):
        with pytest.raises(MalformedMessage, match="restart"):
            parse_shutdown_request({"restart": bad})
    with pytest.raises(LocalProtocolError):
        ShutdownRequest(restart=1)  # type: ignore[arg-type]
    assert shutdown_reply_content(True) == {"status": "ok", "restart": True}


@settings(max_examples=150, deadline=None)
@given(content=_content_like(["restart"]) | json_values)
def test_shutdown_request_any_content(content: Any) -> None:
    try:
        request = parse_shutdown_request(content)
    except MalformedMessage:
        return
    assert request.restart is bool(isinstance(content, dict) and content.get("restart"))


# --- kernel_died ---------------------------------------------------------------------------

sizes = st.none() | st.integers(min_value=0, max_value=2**63)
last_words = st.lists(
    st.tuples(st.sampled_from(["stdout", "stderr", "log"]), st.text(max_size=40)), max_size=5
).map(tuple)


@st.composite
def deaths(draw: st.DrawFn) -> KernelDied:
    by_signal = draw(st.booleans())
    if by_signal:
        signum = draw(st.integers(min_value=1, max_value=64))
        exit_code, name = None, draw(st.none() | st.sampled_from(sorted(SIGNALS)))
    else:
        signum, name = None, None
        exit_code = draw(st.none() | st.integers(min_value=-(2**31), max_value=2**32))
    return KernelDied(
        exit_code=exit_code,
        signal=signum,
        signal_name=name,
        incarnation=draw(st.integers(min_value=1, max_value=2**31)),
        reason=describe_exit(exit_code, signum, name),
        last_words=draw(last_words),
        cause=draw(st.none() | st.text(max_size=40)),
        oom=draw(
            st.none()
            | st.builds(
                OomKill,
                st.booleans(),
                st.sampled_from(sorted(OOM_SCOPES)),
                st.none() | st.integers(min_value=0, max_value=2**63),
                st.none() | st.text(max_size=40),
            )
        ),
        peak_memory=draw(st.none() | st.builds(PeakMemory, sizes, sizes)),
        cell=draw(
            st.none()
            | st.builds(
                RunningCell,
                st.text(max_size=40),
                st.none() | st.integers(min_value=0, max_value=2**31),
                st.text(max_size=CELL_CODE_MAX_CHARS),
                st.none() | st.floats(min_value=0, max_value=2e9),
                st.none() | st.floats(min_value=0, max_value=1e6),
            )
        ),
    )


@settings(max_examples=100, deadline=None)
@given(died=deaths())
def test_kernel_died_round_trip_through_json(died: KernelDied) -> None:
    wire = json.loads(json.dumps(died.to_content(), allow_nan=False))
    assert KernelDied.from_content(wire) == died


def test_kernel_died_content_example() -> None:
    died = KernelDied(
        exit_code=None,
        signal=9,
        signal_name="SIGKILL",
        incarnation=2,
        reason=describe_exit(None, 9, "SIGKILL"),
        last_words=(("stderr", "MemoryError\n"),),
    )
    assert died.to_content() == {
        "exit_code": None,
        "signal": 9,
        "signal_name": "SIGKILL",
        "incarnation": 2,
        "reason": "killed by SIGKILL (possibly out of memory)",
        "last_words": [{"stream": "stderr", "text": "MemoryError\n"}],
        "cause": None,
        "oom": None,
        "peak_memory": None,
        "cell": None,
    }


@settings(max_examples=300, deadline=None)
@given(
    content=_content_like(_DIED_FIELDS)
    | json_values
)
def test_kernel_died_any_content_is_parsed_or_malformed(content: Any) -> None:
    try:
        died = KernelDied.from_content(content)
    except MalformedMessage:
        return
    assert KernelDied.from_content(died.to_content()) == died


@settings(max_examples=100, deadline=None)
@given(
    died=deaths(),
    key=st.sampled_from(_DIED_FIELDS),
    value=json_values,
)
def test_kernel_died_with_one_field_garbled(died: KernelDied, key: str, value: Any) -> None:
    content = died.to_content()
    content[key] = value
    try:
        KernelDied.from_content(content)
    except RemoteProtocolError as exc:
        assert isinstance(exc, MalformedMessage)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exit_code": 1, "signal": 9},
        {"signal": 0},
        {"signal_name": "SIGKILL"},
        {"incarnation": 0},
        {"exit_code": True},
        {"last_words": (("stdin", "x"),)},
        {"last_words": (("stderr",),)},
        {"last_words": [("stderr", "x")]},
        {"last_words": (("stderr", "x"),) * (LAST_WORDS_MAX_LINES + 1)},
        {"last_words": (("stderr", "x" * (LAST_WORDS_MAX_CHARS + 1)),)},
    ],
)
def test_kernel_died_invalid_construction(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "exit_code": None,
        "signal": None,
        "signal_name": None,
        "incarnation": 1,
        "reason": "gone",
    }
    with pytest.raises(LocalProtocolError):
        KernelDied(**{**base, **kwargs})
    # The same content from outside is MalformedMessage, never LocalProtocolError.
    content = {**base, **kwargs}
    content["last_words"] = [{"stream": w[0], "text": w[-1]} for w in content.get("last_words", ())]
    if kwargs.get("last_words") in ([("stderr", "x")], (("stderr",),)):
        return  # not expressible in the wire form (a list of {"stream", "text"} objects)
    with pytest.raises(MalformedMessage):
        KernelDied.from_content(content)


def test_last_words_from_tail_keeps_the_newest_within_bounds() -> None:
    lines = [("stdout", f"line {i}\n") for i in range(500)]
    words = LastWords.from_tail(lines)
    assert len(words.lines) == LAST_WORDS_MAX_LINES
    assert words.lines[-1] == ("stdout", "line 499\n")
    small = LastWords.from_tail(lines, max_lines=3, max_chars=15)
    assert small.lines == (("stdout", "e 498\n"), ("stdout", "line 499\n"))
    huge = LastWords.from_tail([("stderr", "a" * 10 + "b" * LAST_WORDS_MAX_CHARS)])
    assert huge.lines == (("stderr", "b" * LAST_WORDS_MAX_CHARS),)
    assert LastWords.from_tail(lines, max_lines=0).lines == ()
    with pytest.raises(LocalProtocolError):
        LastWords.from_tail([("stdin", "x")])


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(["stdout", "stderr", "log"]), st.text(max_size=30)), max_size=30
    ),
    max_lines=st.integers(min_value=0, max_value=200),
    max_chars=st.integers(min_value=0, max_value=200),
)
def test_last_words_from_tail_is_a_bounded_suffix(
    lines: list[tuple[str, str]], max_lines: int, max_chars: int
) -> None:
    kept = LastWords.from_tail(lines, max_lines=max_lines, max_chars=max_chars).lines
    assert len(kept) <= max_lines
    assert sum(len(t) for _, t in kept) <= max_chars
    if kept:
        # Whole lines from the end, except that the oldest kept one may be cut at its start.
        n = len(kept)
        assert list(kept[1:]) == lines[len(lines) - n + 1 :]
        assert lines[len(lines) - n][1].endswith(kept[0][1])


# --- describe_exit / exit_details -----------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "signum", "name", "text"),
    [
        (0, None, None, "exited normally (code 0)"),
        (7, None, None, "exited with code 7"),
        (
            137,
            None,
            None,
            "exited with code 137 (128 + SIGKILL: a wrapped process was killed, "
            "possibly out of memory)",
        ),
        (None, 9, "SIGKILL", "killed by SIGKILL (possibly out of memory)"),
        (None, 11, "SIGSEGV", "killed by SIGSEGV (segmentation fault)"),
        (None, 6, "SIGABRT", "killed by SIGABRT (aborted)"),
        (None, 15, "SIGTERM", "killed by SIGTERM"),
        (None, 42, None, "killed by signal 42"),
        (None, None, None, "exited with unknown status"),
    ],
)
def test_describe_exit(
    exit_code: int | None, signum: int | None, name: str | None, text: str
) -> None:
    assert describe_exit(exit_code, signum, name) == text


def test_exit_details() -> None:
    assert exit_details(0, NUMBERS) == (0, None, None)
    assert exit_details(3, NUMBERS) == (3, None, None)
    assert exit_details(-9, NUMBERS) == (None, 9, "SIGKILL")
    assert exit_details(-42, NUMBERS) == (None, 42, None)
    with pytest.raises(LocalProtocolError):
        exit_details(None, NUMBERS)  # type: ignore[arg-type]


@given(returncode=st.integers(min_value=-64, max_value=255))
def test_exit_details_always_make_a_valid_death(returncode: int) -> None:
    exit_code, signum, name = exit_details(returncode, NUMBERS)
    died = KernelDied(exit_code, signum, name, 1, describe_exit(exit_code, signum, name))
    assert KernelDied.from_content(died.to_content()) == died


# --- start and restart ---------------------------------------------------------------------


@given(
    incarnation=st.integers(min_value=2, max_value=2**31),
    pid=st.integers(min_value=1, max_value=2**31),
)
def test_launch_broadcasts_round_trip(incarnation: int, pid: int) -> None:
    for cls in (KernelStarted, KernelRestarted):
        event = cls(incarnation, pid)
        assert event.to_content() == {"incarnation": incarnation, "pid": pid}
        assert cls.from_content(json.loads(json.dumps(event.to_content()))) == event


def test_launch_broadcast_rules() -> None:
    assert KernelStarted(1, 100).to_content() == {"incarnation": 1, "pid": 100}
    with pytest.raises(LocalProtocolError):
        KernelRestarted(1, 100)  # a restart is at least the second launch
    with pytest.raises(LocalProtocolError):
        KernelStarted(0, 100)
    with pytest.raises(LocalProtocolError):
        KernelStarted(1, 0)
    with pytest.raises(MalformedMessage):
        KernelRestarted.from_content({"incarnation": 1, "pid": 5})
    with pytest.raises(MalformedMessage):
        KernelStarted.from_content({"incarnation": "1", "pid": 5})


@settings(max_examples=150, deadline=None)
@given(content=_content_like(["incarnation", "pid"]) | json_values)
def test_launch_broadcasts_any_content(content: Any) -> None:
    for cls in (KernelStarted, KernelRestarted):
        try:
            event = cls.from_content(content)
        except MalformedMessage:
            continue
        assert cls.from_content(event.to_content()) == event
