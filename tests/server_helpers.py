"""Helpers for the server extension's tests (tests/server): JSON bodies, waiting, WebSockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any


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
