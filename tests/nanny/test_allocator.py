"""The nanny's malloc tuning: megabyte buffers are reused, not mapped and faulted in each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

# Page faults (minor) while building 50 fresh 1 MiB bytes objects, in a clean interpreter.
FAULTS = """
import resource, sys
from nanny_io.allocator import keep_large_buffers
tuned = sys.argv[1] == "tuned" and keep_large_buffers()
data = b"x" * (1 << 20)
for _ in range(3):
    b'"' + data + b'"'
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    b'"' + data + b'"'
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_large_buffers_stay_in_the_heap_once_tuned() -> None:
    tuned, with_tuning = faults("tuned")
    if tuned != "True":
        pytest.skip("not glibc: mallopt is not available")
    _, default = faults("default")
    # glibc's defaults map and fault in every 1 MiB buffer (256 pages each); tuned, the same
    # memory is reused from the heap
    assert default > 50 * 100, default
    assert with_tuning < 50 * 10, with_tuning
