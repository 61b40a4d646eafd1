"""The extension asks jupyter_server's authorizer for ``read`` on ``kernels``, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from jupyter_server.auth.authorizer import Authorizer
from server_helpers import http_status, ws_status

pytestmark = pytest.mark.timeout(60)

UNKNOWN = "00000000-0000-0000-0000-000000000000"


class RecordingAuthorizer(Authorizer):
    """Allows what ``allowed`` says and records every question."""

    allowed: set[tuple[str, str]] = set()
    asked: list[tuple[str, str]] = []

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        self.asked.append((action, resource))
        return (action, resource) in self.allowed


@pytest.fixture
def jp_server_config(jp_server_config: Any) -> Any:
    jp_server_config.ServerApp.authorizer_class = RecordingAuthorizer
    return jp_server_config


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [(set(), 403), ({("read", "kernels")}, 404), ({("execute", "kernels")}, 403)],
)
async def test_the_authorizer_is_asked_for_read_on_kernels(
    jp_fetch, jp_ws_fetch, allowed, expected
) -> None:
    """With the read permission on kernels the request gets through (to a 404 for an unknown
    kernel); without it, 403 whatever else is allowed."""
    RecordingAuthorizer.allowed = allowed
    RecordingAuthorizer.asked = []
    for parts in [(UNKNOWN,), (UNKNOWN, "log")]:
        assert await http_status(jp_fetch, "api", "nanny-io", "kernels", *parts) == expected
    ws = ("api", "nanny-io", "kernels", UNKNOWN, "log", "follow")
    assert await ws_status(jp_ws_fetch, *ws) == expected
    assert set(RecordingAuthorizer.asked) == {("read", "kernels")}
    assert len(RecordingAuthorizer.asked) == 3
