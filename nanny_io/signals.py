"""The platform's signal table, by name and by number (light: the provisioner imports it)."""

from __future__ import annotations

import signal

#: Every signal this platform has, by name (``SIGINT``), as the control protocol accepts them.
SIGNALS: dict[str, int] = {s.name: int(s.value) for s in signal.Signals}
#: The canonical name of each signal number (the first name wins for aliases).
SIGNAL_NAMES: dict[int, str] = {number: name for name, number in reversed(SIGNALS.items())}
