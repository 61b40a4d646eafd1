"""Protocol versions, kept apart from the package version (specs/ is the authority)."""

from __future__ import annotations

#: Version of the nanny protocol described in specs/protocol.md.
PROTOCOL_VERSION = "1.1"
#: Version of the log channel format described in specs/log-channel.md (2: only holders
#: of the key connect, replay answers link their messages with ``prev_seq``, spill chunks
#: carry checksums).
LOG_FORMAT_VERSION = 2
#: Jupyter messaging protocol version the nanny's own messages declare.
JUPYTER_PROTOCOL_VERSION = "5.4"


def is_compatible(version: str) -> bool:
    """True when a peer's ``major.minor`` protocol version shares our major version."""
    major, _, _ = version.partition(".")
    return major == PROTOCOL_VERSION.partition(".")[0]
