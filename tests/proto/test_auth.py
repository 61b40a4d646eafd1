"""The log channel's derived credentials and ZAP decisions, without sockets."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanny_io_proto.auth import (
    ANY_CLIENT,
    FRONTEND_DOMAIN,
    HEARTBEAT_DOMAIN,
    LOG_DOMAIN,
    LOG_KEY_LABEL,
    ZapPolicy,
    log_curve_secretkey,
    z85_decode,
    z85_encode,
)
from nanny_io_proto.errors import LocalProtocolError, RemoteProtocolError

CLIENT = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_z85_matches_the_rfc_example() -> None:
    raw = bytes([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B])
    assert z85_encode(raw) == "HelloWorld"
    assert z85_decode("HelloWorld") == raw
    with pytest.raises(LocalProtocolError):
        z85_encode(b"abc")
    for bad in ("Hell~", "#####", "abcd"):  # not in the alphabet, above 2**32, a short group
        with pytest.raises(RemoteProtocolError):
            z85_decode(bad)

@given(st.binary(max_size=64).map(lambda b: b[: len(b) - len(b) % 4]))
def test_z85_round_trip(data: bytes) -> None:
    assert z85_decode(z85_encode(data)) == data


def test_the_secret_key_is_an_hmac_of_the_label_and_nothing_without_a_key() -> None:
    secret = log_curve_secretkey("a0436f6c-1916-498b-8eb9-e81ab9368e84")
    assert secret is not None and len(secret) == 40
    expected = hmac.new(b"a0436f6c-1916-498b-8eb9-e81ab9368e84", LOG_KEY_LABEL, hashlib.sha256)
    assert z85_decode(secret) == expected.digest()
    assert log_curve_secretkey(b"a0436f6c-1916-498b-8eb9-e81ab9368e84") == secret
    assert log_curve_secretkey("another key") != secret
    assert log_curve_secretkey("") is None


def _request(domain: bytes, mechanism: bytes = b"CURVE", *creds: bytes) -> list[bytes]:
    return [b"1.0", b"7", domain, b"127.0.0.1", b"", mechanism, *creds]


def test_zap_admits_only_the_allowed_key_of_each_domain() -> None:
    policy = ZapPolicy(
        {LOG_DOMAIN: {CLIENT}, FRONTEND_DOMAIN: {OTHER}, HEARTBEAT_DOMAIN: ANY_CLIENT}
    )
    ok = policy.answer(_request(b"nanny-io-log", b"CURVE", CLIENT))
    assert ok.accepted and ok.frames[:3] == [b"1.0", b"7", b"200"]
    for frames, reason in [
        (_request(b"nanny-io-log", b"CURVE", OTHER), "unknown client key"),
        (_request(b"nanny-io", b"CURVE", CLIENT), "unknown client key"),
        (_request(b"nanny-io-log", b"NULL"), "NULL not allowed"),
        (_request(b"nanny-io-log", b"PLAIN", b"user", b"pass"), "PLAIN not allowed"),
        (_request(b"elsewhere", b"CURVE", CLIENT), "unknown domain"),
    ]:
        decision = policy.answer(frames)
        assert not decision.accepted and decision.reason == reason
        assert decision.frames[:3] == [b"1.0", b"7", b"400"]
    assert policy.answer(_request(b"nanny-io-hb", b"CURVE", OTHER)).accepted
    refused = policy.answer([b"2.0", b"9", b"nanny-io-log"])
    assert not refused.accepted and refused.frames[1] == b"9"


@given(st.lists(st.binary(max_size=40), max_size=9))
def test_any_request_gets_a_reply_and_only_a_known_key_is_admitted(frames: list[bytes]) -> None:
    decision = ZapPolicy({LOG_DOMAIN: {CLIENT}}).answer(frames)
    assert len(decision.frames) == 6 and decision.frames[0] == b"1.0"
    assert decision.accepted == (
        len(frames) == 7
        and frames[0] == b"1.0"
        and frames[2] == b"nanny-io-log"
        and frames[5] == b"CURVE"
        and frames[6] == CLIENT
    )
