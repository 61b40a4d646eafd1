"""The one root of the exceptions nanny_io raises on purpose.

Every error the nanny, the CLI and the client helpers raise for a condition they recognise
(a kernel that cannot be found or started, a kernelspec that cannot be used, a control
request that got no reply, a user mistake on the command line) derives from
:class:`NannyIOError`. A caller that embeds nanny-io (a kernel manager, a test harness) can
then catch "anything nanny-io refused" in one clause, without also catching the bugs
(``TypeError``, ``KeyError``) that must still surface as tracebacks.

The protocol library ``nanny_io_proto`` keeps its own root, ``ProtocolError``: it is
usable without this package, and its errors say who broke the protocol, not what failed.
"""

from __future__ import annotations

__all__ = ["NannyIOError"]


class NannyIOError(Exception):
    """Base class of every error nanny_io raises on purpose."""
