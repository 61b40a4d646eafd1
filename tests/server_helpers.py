"""Helpers for the server extension's tests (tests/server): JSON bodies, waiting, WebSockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError


def body(response: Any) -> Any:
    return json.loads(response.body.decode())


async def settle(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Await ``condition()`` becoming truthy (checked on every event-loop turn, then less often)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


async def execute(kc: Any, code: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``code`` in the kernel and return its execute_reply content."""
    msg_id = kc.execute(code)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await kc.get_shell_msg(timeout=max(0.1, deadline - loop.time()))
        if reply["parent_header"].get("msg_id") == msg_id:
            content: dict[str, Any] = reply["content"]
            return content


class Follower:
    """The client side of a ``.../log/follow`` WebSocket: every frame, records and events."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.closed = False

    async def next(self, timeout: float = 30) -> dict[str, Any] | None:
        """The next frame, or None when the server closed the socket."""
        message = await asyncio.wait_for(self.ws.read_message(), timeout)
        if message is None:
            self.closed = True
            return None
        frame: dict[str, Any] = json.loads(message)
        self.frames.append(frame)
        if "records" in frame:
            self.records.extend(frame["records"])
        else:
            self.events.append(frame)
        return frame

    async def until(
        self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = 30
    ) -> dict[str, Any]:
        """Read frames until one satisfies ``predicate``; return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.next(timeout=max(0.01, deadline - loop.time()))
            if frame is None:
                raise AssertionError(f"the server closed the follow before {what}")
            if predicate(frame):
                return frame

    async def until_text(self, text: str, timeout: float = 30) -> dict[str, Any]:
        """Read until a record with exactly this text arrived; return the record."""
        found = [r for r in self.records if r["text"] == text]
        if not found:
            await self.until(
                lambda f: any(r["text"] == text for r in f.get("records", ())), repr(text), timeout
            )
        return next(r for r in self.records if r["text"] == text)

    def event(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def close(self) -> None:
        self.ws.close()


def in_order_without_gaps(records: list[dict[str, Any]]) -> bool:
    """Seqs strictly increasing and consecutive (a follow of every stream sees every seq)."""
    seqs = [r["seq"] for r in records]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def fetch_json(jp_fetch: Any, *parts: str, **params: Any) -> Any:
    return body(await jp_fetch("api", "nanny-io", "kernels", *parts, params=params))


async def fetch_error(jp_fetch: Any, *parts: str, **params: Any) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("api", "nanny-io", "kernels", *parts, params=params)
    return info.value.code, body(info.value.response)["message"]


async def logged(jp_fetch: Any, kernel_id: str, text: str) -> list[dict[str, Any]]:
    """The whole log once a record with ``text`` is in it (the nanny stores pipe output a
    moment after the kernel wrote it)."""

    async def poll() -> list[dict[str, Any]] | None:
        page = await fetch_json(jp_fetch, kernel_id, "log", since="1")
        return page["records"] if any(r["text"] == text for r in page["records"]) else None

    result: list[dict[str, Any]] | None = None
    while result is None:
        result = await asyncio.wait_for(poll(), 10)
        if result is None:
            await asyncio.sleep(0.05)
    return result


async def follow(jp_ws_fetch: Any, kernel_id: str, **params: Any) -> Follower:
    query = [(k, str(v)) for k, values in params.items() for v in _listify(values)]
    ws = await jp_ws_fetch("api", "nanny-io", "kernels", kernel_id, "log", "follow", params=query)
    return Follower(ws)


def _listify(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


async def http_status(jp_fetch: Any, *parts: str, **kwargs: Any) -> int:
    try:
        response = await jp_fetch(*parts, **kwargs)
    except HTTPClientError as exc:
        return exc.code
    return int(response.code)


async def ws_status(jp_ws_fetch: Any, *parts: str, **kwargs: Any) -> int:
    try:
        ws = await jp_ws_fetch(*parts, **kwargs)
    except HTTPClientError as exc:
        return exc.code
    ws.close()
    return 101


async def last_record(jp_fetch: Any, kernel_id: str, text: str) -> int:
    """The seq of the newest record once it has ``text``."""
    while True:
        page = await fetch_json(jp_fetch, kernel_id, "log", last="1")
        if page["records"] and page["records"][-1]["text"] == text:
            return int(page["last_seq"])
        await asyncio.sleep(0.05)
