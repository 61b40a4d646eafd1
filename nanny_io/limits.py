"""Default sizes, in a module cheap to import (the CLI needs them before anything else)."""

from __future__ import annotations

#: The in-memory log store's bound.
DEFAULT_MAX_BYTES = 64 << 20
#: One on-disk spill segment.
DEFAULT_SEGMENT_BYTES = 8 << 20
#: All spill segments of one kernel together.
DEFAULT_SPILL_BYTES = 64 << 20
