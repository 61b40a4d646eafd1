"""nanny-io's own log lines on stderr, ``[nanny-io LEVEL] message``, set up when needed.

The CLI chooses the verbosity first; ``logging`` itself is imported at the first use. For
``nanny-io start`` that is after the kernel's spawn (or at a warning before it), so the
import is not one more thing the kernel waits for.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

_verbose = False
_configured = False


def choose_verbosity(verbose: bool) -> None:
    """Debugging detail or not, for when the log is set up."""
    global _verbose
    _verbose = verbose


def setup_logging(verbose: bool) -> None:
    """Set stderr up now, with or without debugging detail."""
    choose_verbosity(verbose)
    _configure()


def nanny_log() -> logging.Logger:
    """The ``nanny_io`` logger; stderr is set up first if it was not yet."""
    import logging

    if not _configured:
        _configure()
    return logging.getLogger("nanny_io")


def _configure() -> None:
    global _configured
    import logging

    _configured = True
    logging.basicConfig(
        level=logging.DEBUG if _verbose else logging.INFO,
        format="[nanny-io %(levelname)s] %(message)s",
        stream=sys.stderr,
    )
    if not _verbose:  # other libraries' chatter is not ours to print
        for name in ("watchfiles", "traitlets"):
            logging.getLogger(name).setLevel(logging.WARNING)
