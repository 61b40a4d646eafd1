"""The proxy recognises the status messages of jupyter_client-packed kernels as bytes.

ipykernel sends its status messages through jupyter_client's Session, which packs JSON with
the standard library or, when orjson is installed in the kernel's environment, with orjson
(compact: no spaces). Both spellings must take the fast path; anything else is parsed.
"""

from __future__ import annotations

import pytest
from jupyter_client.session import Session, has_orjson

from nanny_io.proxy import _STATES, _STATUS_HEADERS

PACKERS = [
    "json",
    pytest.param(
        "orjson", marks=pytest.mark.skipif(not has_orjson, reason="orjson is not installed")
    ),
]


@pytest.mark.parametrize("packer", PACKERS)
@pytest.mark.parametrize("state", ["busy", "idle", "starting"])
def test_a_status_packed_by_jupyter_client_is_recognised_without_parsing(
    packer: str, state: str
) -> None:
    session = Session(key=b"k", packer=packer, unpacker=packer)
    msg = session.msg("status", {"execution_state": state}, parent={"msg_id": "p"})
    frames = session.serialize(msg)
    header, content = frames[2], frames[5]
    assert any(spelling in header for spelling in _STATUS_HEADERS)
    assert _STATES[content] == state


@pytest.mark.parametrize("packer", PACKERS)
def test_other_messages_do_not_look_like_a_status(packer: str) -> None:
    session = Session(key=b"k", packer=packer, unpacker=packer)
    frames = session.serialize(session.msg("stream", {"name": "stdout", "text": '"status"'}))
    assert not any(spelling in frames[2] for spelling in _STATUS_HEADERS)
