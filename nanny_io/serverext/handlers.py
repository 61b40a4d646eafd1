"""HTTP and WebSocket handlers: ``{base_url}api/nanny-io/kernels/{kernel_id}[/log[/follow]]``.

Authentication and authorization are jupyter_server's, as for its own kernel API: the same
base classes (``APIHandler``; ``WebSocketMixin`` + ``JupyterHandler`` for the WebSocket), token
and cookie login, origin checks, and the authorizer asked for ``read`` on ``kernels``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from nanny_io_proto.streams import Stream

from .bridge import Bridge, KernelUnavailable, NannyKernel, log
from .follow import Follow, FollowLimits, LogQuery

AUTH_RESOURCE = "kernels"
#: The kernel id pattern of jupyter_server's own kernel API.
KERNEL_ID = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"
_STREAM_NAMES = ", ".join(s.value for s in Stream)


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    """KernelUnavailable as the HTTP error it names."""
    try:
        yield
    except KernelUnavailable as exc:
        raise web.HTTPError(exc.status, exc.message) from None


def parse_query(handler: web.RequestHandler) -> LogQuery:
    """``last``, ``since`` and ``stream`` (repeatable, or comma-separated); 400 when invalid."""

    def number(name: str, minimum: int) -> int | None:
        raw = handler.get_argument(name, None)
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError:
            raise web.HTTPError(400, f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise web.HTTPError(400, f"{name} must be at least {minimum}, got {value}")
        return value

    since, last = number("since", 1), number("last", 0)
    if since is not None and last is not None:
        raise web.HTTPError(400, "give since or last, not both")
    names = [n.strip() for raw in handler.get_arguments("stream") for n in raw.split(",")]
    streams: list[Stream] = []
    for name in filter(None, names):
        try:
            streams.append(Stream(name))
        except ValueError:
            raise web.HTTPError(400, f"unknown stream {name!r}; use {_STREAM_NAMES}") from None
    wanted = tuple(dict.fromkeys(streams)) or None
    return LogQuery(streams=wanted, since=since, last=last)


class NannyAPIHandler(APIHandler):
    """Common ground of the two REST endpoints."""

    auth_resource = AUTH_RESOURCE

    @property
    def bridge(self) -> Bridge:
        bridge: Bridge = self.settings["nanny_io_bridge"]
        return bridge

    @property
    def limits(self) -> dict[str, int]:
        limits: dict[str, int] = self.settings["nanny_io_limits"]
        return limits

    async def nanny_kernel(self, kernel_id: str) -> NannyKernel:
        with _http_errors():
            kernel = self.bridge.lookup(kernel_id)
            kernel.start_watching()
            await kernel.info()
        return kernel


class KernelHandler(NannyAPIHandler):
    """``GET .../kernels/{id}``: the nanny's view of the kernel, with its deaths."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        kernel = await self.nanny_kernel(kernel_id)
        with _http_errors():
            model = await kernel.describe()
        self.finish(json.dumps(model))


class LogHandler(NannyAPIHandler):
    """``GET .../kernels/{id}/log``: a page of the kernel's log history."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        query = parse_query(self)
        kernel = await self.nanny_kernel(kernel_id)
        with _http_errors():
            page = await kernel.read_log(
                streams=query.streams,
                since=query.since,
                last=query.last,
                max_records=self.limits["log_max_records"],
                max_bytes=self.limits["log_max_bytes"],
            )
        self.finish(
            json.dumps(
                {
                    "kernel_id": kernel_id,
                    "records": page.records,
                    "first_seq": page.first_seq,
                    "last_seq": page.last_seq,
                    "truncated": page.truncated,
                },
                ensure_ascii=False,
            )
        )


class FollowHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):  # type: ignore[misc]
    """``WS .../kernels/{id}/log/follow``: history, then live, as JSON text frames."""

    auth_resource = AUTH_RESOURCE
    follow: Follow | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def bridge(self) -> Bridge:
        bridge: Bridge = self.settings["nanny_io_bridge"]
        return bridge

    def set_default_headers(self) -> None:
        """Undo JupyterHandler's headers, which make no sense for WebSockets (as jupyter_server's
        kernel WebSocket does)."""

    def get_compression_options(self) -> dict[str, Any] | None:
        options: dict[str, Any] | None = self.settings.get("websocket_compression_options")
        return options

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors before the upgrade as JSON, like the REST endpoints."""
        APIHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]

    @ws_authenticated
    async def get(self, kernel_id: str) -> None:
        user = self.current_user
        allowed = await ensure_async(self.authorizer.is_authorized(self, user, "read", "kernels"))
        if not allowed:
            raise web.HTTPError(403, "User is not authorized to read on resource: kernels.")
        query = parse_query(self)
        with _http_errors():
            kernel = self.bridge.lookup(kernel_id)
            kernel.start_watching()
            await kernel.info()
        limits = self.settings["nanny_io_limits"]
        self.follow = Follow(
            kernel,
            query,
            self._send,
            FollowLimits(
                max_records=limits["follow_max_records"], max_bytes=limits["follow_max_bytes"]
            ),
        )
        await super().get(kernel_id=kernel_id)

    async def open(self, kernel_id: str) -> None:  # type: ignore[override]
        super().open()
        assert self.follow is not None
        self._task = self.bridge.spawn(self._run(self.follow), f"nanny-io follow {kernel_id}")

    async def _send(self, frame: str) -> None:
        # Awaiting the write is the back-pressure: the outbox holds what the client has not
        # taken yet, not the socket's buffer.
        await self.write_message(frame)

    async def _run(self, follow: Follow) -> None:
        try:
            await follow.run()
        except WebSocketClosedError:
            return  # the client left
        except Exception:
            log.exception("nanny-io: the log follow of kernel %s failed", follow.kernel.kernel_id)
            code, reason = 1011, "the server could not go on following the log"
        else:
            code, reason = 1000, "the kernel was shut down"
        if self.ws_connection is not None:
            self.close(code, reason)

    def on_message(self, message: str | bytes) -> None:
        """Nothing is expected from the client; what it sends is ignored."""

    def on_close(self) -> None:
        if self._task is not None:
            self._task.cancel()
