"""Signing matches jupyter_client's Session and refuses forgeries and replays."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanny_io_proto.errors import BadSignature, DuplicateSignature, LocalProtocolError
from nanny_io_proto.signing import DigestHistory, Signer

frames_st = st.lists(st.binary(max_size=64), max_size=6)


@given(key=st.binary(min_size=1, max_size=64), frames=frames_st)
def test_signature_is_hmac_hex_of_frames_in_order(key: bytes, frames: list[bytes]) -> None:
    expected = hmac.new(key, b"".join(frames), hashlib.sha256).hexdigest().encode()
    assert Signer(key).sign(frames) == expected


@given(key=st.binary(min_size=1, max_size=32), frames=frames_st, bad=st.binary(max_size=80))
def test_only_the_right_signature_verifies(key: bytes, frames: list[bytes], bad: bytes) -> None:
    signer = Signer(key)
    signer.verify(signer.sign(frames), frames)
    if bad != signer.sign(frames):
        with pytest.raises(BadSignature):
            signer.verify(bad, frames)


def test_empty_key_disables_signing() -> None:
    signer = Signer(b"")
    assert not signer.enabled
    assert signer.sign([b"x"]) == b""
    signer.verify(b"anything", [b"x"])


def test_unsigned_message_is_refused_when_a_key_is_set() -> None:
    with pytest.raises(BadSignature, match="unsigned"):
        Signer(b"k").verify(b"", [b"x"])


def test_unknown_scheme_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="hmac-sha256"):
        Signer(b"k", "rsa-sha1")


def test_digest_history_refuses_replays_and_forgets_oldest() -> None:
    history = DigestHistory(maxsize=2)
    history.check(b"a")
    with pytest.raises(DuplicateSignature):
        history.check(b"a")
    history.check(b"b")
    history.check(b"c")  # evicts b"a"
    history.check(b"a")
    assert len(history) == 2
    history.check(b"")  # unsigned messages are never remembered
    assert len(history) == 2
