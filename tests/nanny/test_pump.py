"""Pump: a plain zmq socket drained into a function from the loop's reader callback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq

from nanny_io.pump import Pump, recv_frames, send_frames

pytestmark = pytest.mark.timeout(30)


def _pair(ctx: zmq.Context[Any]) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    a = ctx.socket(zmq.PAIR)
    a.linger = 0
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b = ctx.socket(zmq.PAIR)
    b.linger = 0
    b.connect(f"tcp://127.0.0.1:{port}")
    return a, b


async def _stop(tasks: list[asyncio.Task[Any]], ctx: zmq.Context[Any]) -> None:
    """Cancel the pumps' tasks, let them end, close every socket."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ctx.destroy(linger=0)


def test_order_is_kept_while_a_handler_finishes_asynchronously() -> None:
    """A message whose handling must await holds back every later one, none is lost."""

    async def main() -> list[str]:
        ctx: zmq.Context[Any] = zmq.Context()
        inside, outside = _pair(ctx)
        seen: list[str] = []
        done = asyncio.Event()
        gate = asyncio.Event()
        waiting = asyncio.Event()

        async def finish(text: str) -> None:
            waiting.set()
            await gate.wait()
            seen.append(text)

        def handle(frames: list[bytes]) -> Any:
            text = frames[0].decode()
            if text == "slow":
                return finish(text)
            seen.append(text)
            if text == "last":
                done.set()
            return None

        pump = Pump(inside, handle)
        task = asyncio.create_task(pump.run())
        try:
            for text in ("one", "slow", "two", "three", "last"):
                outside.send(text.encode())
            await asyncio.wait_for(waiting.wait(), 10)  # the slow one waits for its gate
            await asyncio.sleep(0.05)  # time for a pump that did not wait to handle the rest
            assert seen == ["one"]
            gate.set()
            await asyncio.wait_for(done.wait(), 10)
            return seen
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            ctx.destroy(linger=0)

    assert asyncio.run(main()) == ["one", "slow", "two", "three", "last"]


def test_replies_sent_from_the_handler_keep_flowing() -> None:
    """Request/reply through two pumps that send on each other's sockets (and kick the
    other pump, as the nanny's control hop does): every round trip completes."""

    async def main() -> int:
        ctx: zmq.Context[Any] = zmq.Context()
        front, client = _pair(ctx)
        back, echo = _pair(ctx)
        pumps: dict[str, Pump] = {}

        def to_back(frames: list[bytes]) -> None:
            back.send_multipart(frames, zmq.NOBLOCK)
            pumps["back"].kick()

        def to_front(frames: list[bytes]) -> None:
            front.send_multipart(frames, zmq.NOBLOCK)
            pumps["front"].kick()

        pumps["front"] = Pump(front, to_back)
        pumps["back"] = Pump(back, to_front)
        tasks = [asyncio.create_task(p.run()) for p in pumps.values()]
        loop = asyncio.get_running_loop()

        def echo_loop() -> int:
            count = 0
            poller = zmq.Poller()
            poller.register(echo, zmq.POLLIN)
            while count < 500 and poller.poll(5000):
                echo.send_multipart(echo.recv_multipart())
                count += 1
            return count

        def client_loop() -> int:
            answered = 0
            poller = zmq.Poller()
            poller.register(client, zmq.POLLIN)
            for i in range(500):
                client.send(b"%d" % i)
                if not poller.poll(5000):
                    break
                assert client.recv() == b"%d" % i
                answered += 1
            return answered

        try:
            echoed = loop.run_in_executor(None, echo_loop)
            answered = await loop.run_in_executor(None, client_loop)
            assert await echoed == 500
            return answered
        finally:
            await _stop(tasks, ctx)

    assert asyncio.run(main()) == 500


def test_a_failing_handler_ends_the_pump_with_its_error() -> None:
    """As an awaited receive loop would: the owning task fails (and the nanny stops)."""

    async def main() -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        inside, outside = _pair(ctx)

        def handle(frames: list[bytes]) -> None:
            raise ValueError(f"cannot handle {frames[0]!r}")

        try:
            outside.send(b"bad")
            with pytest.raises(ValueError, match="cannot handle b'bad'"):
                await asyncio.wait_for(Pump(inside, handle).run(), 10)
        finally:
            ctx.destroy(linger=0)

    asyncio.run(main())


def test_frames_leave_and_arrive_whole() -> None:
    """send_frames / recv_frames keep every frame of a multipart message, empty and large
    ones included, and its boundaries: two messages sent are two messages received."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        a, b = _pair(ctx)
        a.send(b"connected?")  # blocks until the pair is connected (send_frames never waits)
        assert b.recv() == b"connected?"
        first = [b"id", b"", b"<IDS|MSG>", b"x" * 300_000, b"{}", b"\xff" * 7]
        second = [b"alone"]
        send_frames(a, first)
        send_frames(a, second)
        assert b.poll(10_000, zmq.POLLIN)
        assert recv_frames(b) == first
        assert b.poll(10_000, zmq.POLLIN)
        assert recv_frames(b) == second
        assert not b.poll(0, zmq.POLLIN)
    finally:
        ctx.destroy(linger=0)


def test_send_frames_raises_again_when_it_cannot_queue() -> None:
    """A DEALER with no peer cannot queue: nothing is sent and the caller is told, as
    ``send_multipart(frames, zmq.NOBLOCK)`` would."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        with pytest.raises(zmq.Again):
            send_frames(dealer, [b"one", b"two"])
    finally:
        ctx.destroy(linger=0)


def test_read_now_handles_another_sockets_messages_inside_a_handler() -> None:
    """A handler of one pump can have another pump's waiting messages handled on the spot
    (a control reply must not wait behind iopub bookkeeping): in order, each once."""

    async def main() -> list[str]:
        ctx: zmq.Context[Any] = zmq.Context()
        first_in, first_out = _pair(ctx)
        second_in, second_out = _pair(ctx)
        seen: list[str] = []
        done = asyncio.Event()
        pumps: dict[str, Pump] = {}

        def on_first(frames: list[bytes]) -> None:
            seen.append("first:" + frames[0].decode())
            second_out.send(b"a")
            second_out.send(b"b")
            while len(seen) < 3:  # both arrived, then both handled right here
                assert second_in.poll(10_000, zmq.POLLIN)
                pumps["second"].read_now()
            seen.append("first done")
            done.set()

        def on_second(frames: list[bytes]) -> None:
            seen.append("second:" + frames[0].decode())

        pumps["first"] = Pump(first_in, on_first)
        pumps["second"] = Pump(second_in, on_second)
        pumps["second"].read_now()  # not running yet: nothing happens
        tasks = [asyncio.create_task(p.run()) for p in pumps.values()]
        await asyncio.sleep(0)
        first_out.send(b"x")
        try:
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.sleep(0.05)  # anything handled twice would show up now
            return seen
        finally:
            await _stop(tasks, ctx)

    assert asyncio.run(main()) == ["first:x", "second:a", "second:b", "first done"]
