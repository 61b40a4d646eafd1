"""Which cell an output belongs to, decided from delimiters and iopub statuses alone (the
pipes and the kernel are played by the test; the forwarder and the echo are the real ones)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from nanny_io.attribution import LIMBO_DELAY, Attribution
from nanny_io.capture import EchoWriter
from nanny_io.forwarding import OutputForwarder
from nanny_io_proto.delimiters import Begin, End
from nanny_io_proto.streams import Stream

A = {"msg_id": "a", "msg_type": "execute_request", "session": "s"}
B = {"msg_id": "b", "msg_type": "execute_request", "session": "s"}


class Frontend:
    """What frontends were sent: (stream name, text, parent msg_id)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []

    def send(self, name: str, text: bytes, parent: dict[str, Any]) -> None:
        self.sent.append((name, text.decode(), parent.get("msg_id")))


def make(
    echo: EchoWriter | None = None, end_wait: float = 0.2
) -> tuple[Attribution, Frontend, list[tuple[Stream, str]]]:
    frontend = Frontend()
    timeouts: list[tuple[Stream, str]] = []
    attribution = Attribution(
        OutputForwarder(frontend.send, delay=0),
        echo,
        end_wait=end_wait,
        drain=lambda: None,
        release_held=lambda stream: None,
        on_delimiter_timeout=lambda stream, msg_id: timeouts.append((stream, msg_id)),
    )
    return attribution, frontend, timeouts


def run(test: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return await test()

    return asyncio.run(main())


def test_an_open_begin_delimiter_wins_over_the_request_seen_busy() -> None:
    async def test() -> None:
        attribution, frontend, _ = make()
        attribution.track_status(A, "busy")
        attribution.on_marker(Stream.STDOUT, Begin("b"))
        attribution.on_output(Stream.STDOUT, b"from b\n")
        attribution.on_output(Stream.STDERR, b"from a\n")  # no delimiter open on stderr
        attribution.forwarder.flush()
        assert sorted(frontend.sent) == [("stderr", "from a\n", "a"), ("stdout", "from b\n", "b")]
        assert attribution.running_parent()["msg_id"] == "b"
        attribution.on_marker(Stream.STDOUT, End("b"))
        assert attribution.running_parent()["msg_id"] == "a"

    run(test)


def test_output_before_its_busy_waits_in_limbo_for_it() -> None:
    async def test() -> None:
        attribution, frontend, _ = make()
        attribution.track_status(A, "busy")
        attribution.track_status(A, "idle")
        attribution.on_output(Stream.STDOUT, b"early\n")  # b's busy is still on its way
        assert frontend.sent == []
        attribution.track_status(B, "busy")
        attribution.forwarder.flush()
        assert frontend.sent == [("stdout", "early\n", "b")]

    run(test)


def test_limbo_with_no_busy_goes_to_the_last_request() -> None:
    async def test() -> None:
        attribution, frontend, _ = make()
        attribution.track_status(A, "busy")
        attribution.track_status(A, "idle")
        attribution.on_output(Stream.STDOUT, b"late\n")  # a background thread of cell a
        await asyncio.sleep(LIMBO_DELAY * 3)
        attribution.forwarder.flush()
        assert frontend.sent == [("stdout", "late\n", "a")]

    run(test)


def test_output_of_no_request_goes_to_the_echo_not_to_frontends() -> None:
    read_fd, write_fd = os.pipe()

    async def test() -> None:
        echo = EchoWriter(write_fd)
        attribution, frontend, _ = make(echo)
        attribution.new_incarnation()
        attribution.on_output(Stream.STDOUT, b"kernel banner\n")
        await asyncio.sleep(LIMBO_DELAY * 3)
        attribution.forwarder.flush()
        echo.close()
        assert frontend.sent == []

    run(test)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        assert f.read() == b"kernel banner\n"


def test_idle_waits_for_the_end_delimiter_and_gives_up_after_end_wait() -> None:
    async def test() -> None:
        attribution, frontend, timeouts = make(end_wait=0.2)
        attribution.track_status(A, "busy")
        attribution.on_marker(Stream.STDOUT, Begin("a"))
        attribution.on_output(Stream.STDOUT, b"part 1\n")

        async def end_soon() -> None:
            await asyncio.sleep(0.05)
            attribution.on_output(Stream.STDOUT, b"part 2\n")
            attribution.on_marker(Stream.STDOUT, End("a"))

        ender = asyncio.ensure_future(end_soon())
        await attribution.drain_before_idle(A)
        await ender
        assert "".join(t for _, t, _ in frontend.sent) == "part 1\npart 2\n"
        assert timeouts == []
        # A kernel that never writes END: idle is released after end_wait, and said so.
        attribution.track_status(B, "busy")
        attribution.on_marker(Stream.STDERR, Begin("b"))
        await attribution.drain_before_idle(B)
        assert timeouts == [(Stream.STDERR, "b")]
        assert Stream.STDERR not in attribution.open_markers

    run(test)


def test_a_death_goes_to_the_request_opened_by_a_delimiter_even_without_its_busy() -> None:
    async def test() -> None:
        attribution, frontend, _ = make()
        attribution.track_status(A, "busy")
        attribution.track_status(A, "idle")
        attribution.on_marker(Stream.STDOUT, Begin("b"))  # b's busy never left the kernel
        attribution.on_output(Stream.STDOUT, b"last words\n")
        parent = attribution.flush_for_death()
        assert parent["msg_id"] == "b"
        assert frontend.sent == [("stdout", "last words\n", "b")]
        attribution.forget_request()
        assert attribution.running_parent() == {}

    run(test)


def test_large_output_goes_out_in_messages_of_at_most_max_message_ending_lines() -> None:
    frontend = Frontend()
    forwarder = OutputForwarder(frontend.send, delay=0, max_message=100)
    data = b"".join(b"%03d" % i + b"x" * 26 + b"\n" for i in range(40))  # 40 lines of 30
    data += b"y" * 250  # a long partial line: cut at the limit
    forwarder.add(Stream.STDOUT, data, A)
    forwarder.flush()
    texts = [text for _, text, _ in frontend.sent]
    assert "".join(texts) == data.decode()
    assert all(len(text) <= 100 for text in texts)
    assert [len(text) for text in texts[:13]] == [90] * 13  # three whole lines each
    assert texts[13:] == ["039" + "x" * 26 + "\n", "y" * 100, "y" * 100, "y" * 50]
    assert {parent for _, _, parent in frontend.sent} == {"a"}


def test_long_lines_of_non_ascii_text_are_cut_between_characters() -> None:
    frontend = Frontend()
    forwarder = OutputForwarder(frontend.send, delay=0, max_message=100)
    text = "é€😀" * 60 + "\n" + "€" * 40  # no newline in the first 100 bytes
    forwarder.add(Stream.STDOUT, text.encode(), A)
    forwarder.flush()
    texts = [sent for _, sent, _ in frontend.sent]  # each decoded strictly by Frontend.send
    assert "".join(texts) == text
    assert all(len(sent.encode()) <= 100 for sent in texts)
    assert len(texts[0].encode()) >= 97  # cut at most 3 bytes before the limit


def test_a_limit_shorter_than_a_character_still_cuts_between_characters() -> None:
    frontend = Frontend()
    forwarder = OutputForwarder(frontend.send, delay=0, max_message=2)
    forwarder.add(Stream.STDOUT, "a😀€b".encode(), A)
    forwarder.flush()
    assert [sent for _, sent, _ in frontend.sent] == ["a", "😀", "€", "b"]
