"""nanny_io.testing, the helper that tests and benchmarks start nannies with."""

from __future__ import annotations

import pytest

from nanny_io.errors import NannyIOError
from nanny_io.testing import NannyProcess, NannyStartFailed, spawn_nanny


def test_a_nanny_that_cannot_start_is_one_clear_error(jupyter_env: object) -> None:
    with pytest.raises(NannyStartFailed, match="no-such-kernel") as caught:
        spawn_nanny("no-such-kernel")
    assert "exit status 1" in str(caught.value)  # the CLI's error, in its own words:
    assert "its stderr ends:\n  nanny-io: error: no kernel named" in str(caught.value)
    assert isinstance(caught.value, NannyIOError)


def test_announcement_stderr_and_stop(nanny: NannyProcess) -> None:
    assert nanny.connection_file.exists() and nanny.kernel_id in nanny.connection_file.name
    assert nanny.connection_info()["kernel_name"] == "python3"
    nanny.client()
    assert nanny.wait_status("running")["kernel_id"] == nanny.kernel_id
    assert nanny.cpu_seconds() > 0 and nanny.rss() > 0
    assert nanny.stop() == 0
    assert nanny.stderr == "".join(nanny.stderr_lines)  # still readable after the stop


def test_before_the_announcement_there_is_no_kernel_id(jupyter_env: object) -> None:
    nanny = NannyProcess("python3", "-q")
    try:
        with pytest.raises(NannyIOError, match="wait_announced"):
            _ = nanny.kernel_id
        nanny.wait_announced(timeout=30)
        assert nanny.kernel_id
    finally:
        nanny.stop()
