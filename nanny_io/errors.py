"""The root of every error nanny-io raises on its own account.

One root lets a caller (the CLI, the provisioner, a program embedding the nanny) tell "nanny-io
said no, with a message for the user" from a bug anywhere else with one ``except``.
"""

from __future__ import annotations


class NannyIOError(Exception):
    """Something nanny-io cannot do, with a message that says why and what to do."""
