"""Default sizes, in a module cheap to import (the CLI needs them before anything else)."""

from __future__ import annotations

#: The in-memory log store's bound.
DEFAULT_MAX_BYTES = 64 << 20
#: One on-disk spill segment.
DEFAULT_SEGMENT_BYTES = 8 << 20
#: All spill segments of one kernel together.
DEFAULT_SPILL_BYTES = 64 << 20
#: How long a kernel may take to exit after shutdown_request before its tree is terminated.
DEFAULT_SHUTDOWN_GRACE = 5.0
#: How long the tree may take to exit after SIGTERM before it is killed.
DEFAULT_TERM_GRACE = 2.0
#: How long a kernel may take to answer kernel_info after it was launched.
DEFAULT_STARTUP_TIMEOUT = 60.0
