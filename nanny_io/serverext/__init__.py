"""A jupyter_server extension that bridges the nanny's log channel to HTTP and WebSockets.

Browsers cannot speak ZeroMQ; this extension can. For kernels that the server runs under the
nanny-io provisioner it serves (docs/frontend-authors.md has the details):

- ``GET {base_url}api/nanny-io/kernels/{kernel_id}``: status, incarnation, pid, log channel,
  and every death;
- ``GET {base_url}api/nanny-io/kernels/{kernel_id}/log``: a page of the log history;
- ``WS {base_url}api/nanny-io/kernels/{kernel_id}/log/follow``: history, then live;
- a jupyter_events event (``https://events.nanny-io.org/kernel-died/v1``) for every death.

Installing the package enables it (``etc/jupyter/jupyter_server_config.d/nanny_io.json``).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Integer

from .bridge import KERNEL_DIED_SCHEMA_ID, Bridge
from .handlers import KERNEL_ID, FollowHandler, KernelHandler, LogHandler

__all__ = ["KERNEL_DIED_SCHEMA_ID", "NannyIOExtension"]


class NannyIOExtension(ExtensionApp):
    """The nanny-io server extension (configure it as ``c.NannyIOExtension.<name>``)."""

    name = "nanny_io"
    load_other_extensions = True

    log_max_records = Integer(
        10_000, config=True, help="Most records one GET .../log answers with (last=N is capped)."
    )
    log_max_bytes = Integer(
        16 << 20, config=True, help="About the most text, in bytes, one GET .../log answers with."
    )
    follow_max_records = Integer(
        10_000,
        config=True,
        help="Records a WebSocket follow may have waiting for a slow client before the "
        "newest are dropped (and reported with a gap event).",
    )
    follow_max_bytes = Integer(
        8 << 20,
        config=True,
        help="Bytes of JSON a WebSocket follow may have waiting for a slow client before the "
        "newest records are dropped (and reported with a gap event).",
    )

    bridge: Bridge | None = None

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        self.bridge = Bridge(self.serverapp.kernel_manager, self.serverapp.event_logger)
        self.bridge.register_events()
        self.settings["nanny_io_bridge"] = self.bridge
        self.settings["nanny_io_limits"] = {
            "log_max_records": self.log_max_records,
            "log_max_bytes": self.log_max_bytes,
            "follow_max_records": self.follow_max_records,
            "follow_max_bytes": self.follow_max_bytes,
        }

    def initialize_handlers(self) -> None:
        base = "/api/nanny-io/kernels/" + KERNEL_ID
        self.handlers.extend(
            [
                (base, KernelHandler),
                (base + "/log", LogHandler),
                (base + "/log/follow", FollowHandler),
            ]
        )

    async def stop_extension(self) -> None:
        """Close every follow and watcher, and the ZeroMQ context, before kernels stop."""
        if self.bridge is not None:
            await self.bridge.stop()


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "nanny_io.serverext", "app": NannyIOExtension}]
