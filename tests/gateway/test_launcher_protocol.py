"""The pure launcher protocol (nanny_io_proto.gateway), checked against gateway_provisioners'
own decoder (ResponseManager._decode_payload) and the requests its provisioners send."""

from __future__ import annotations

import base64
import json
import logging
import os
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.errors import LocalProtocolError, RemoteProtocolError
from nanny_io_proto.gateway import (
    LAUNCHER_VERSION,
    MAX_COMM_REQUEST,
    BadCommRequest,
    BadLauncherArgument,
    BadLauncherResponse,
    CommRequest,
    CommRequestReader,
    decode_comm_request,
    decrypt_connection_info,
    encode_comm_request,
    encrypt_connection_info,
    launcher_connection_info,
    parse_port_range,
    parse_response_address,
    parse_transport_encryption,
    public_key_der,
)

Crypto = pytest.importorskip("Cryptodome", reason="the gateway extra is not installed")
from Cryptodome.PublicKey import RSA  # noqa: E402

EXAMPLES = settings(max_examples=150, deadline=None)

FRONTEND = NannyConnectionInfo(
    transport="tcp",
    ip="0.0.0.0",
    shell_port=40001,
    iopub_port=40002,
    stdin_port=40003,
    control_port=40004,
    hb_port=40005,
    key="a0436f6c-1916-498b-8eb9-e81ab9368e84",
    kernel_name="python3",
    kernel_id="6f0b5c2e-8a6d-4a53-9f43-0d2b8f1d0c11",
    log_port=40006,
    log_replay_port=40007,
)


@pytest.fixture(scope="module")
def server_key() -> Any:
    """An RSA key pair as gateway_provisioners' ResponseManager makes it (1024 bits)."""
    return RSA.generate(1024)


def _public_key_text(key: Any) -> str:
    """The public key as the provisioner passes it: PEM without header, footer or newlines
    (ResponseManager.public_key)."""
    pem = key.publickey().export_key("PEM").decode()
    return (
        pem.replace("-----BEGIN PUBLIC KEY-----", "")
        .replace("-----END PUBLIC KEY-----", "")
        .replace("\n", "")
    )


def _their_decoder(key: Any, payload: bytes) -> dict[str, Any]:
    """gateway_provisioners' own ResponseManager._decode_payload, on data as it receives it
    (it accumulates the bytes as str)."""
    from gateway_provisioners.response_manager import ResponseManager

    fake = SimpleNamespace(
        _private_key=key, log=logging.getLogger("test-response-manager"), _response_registry={}
    )
    return ResponseManager._decode_payload(fake, payload.decode("utf-8"))


# --- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, (0, 0)), ("", (0, 0)), ("0..0", (0, 0)), ("40000..41000", (40000, 41000))],
)
def test_port_range(text: str | None, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["40000", "41000..40000", "80..2000", "40000..70000", "a..b"])
def test_bad_port_range(text: str) -> None:
    with pytest.raises(BadLauncherArgument):
        parse_port_range(text)


def test_response_address() -> None:
    assert parse_response_address("10.0.0.5:8877") == ("10.0.0.5", 8877)
    assert parse_response_address("[::1]:8877") == ("::1", 8877)
    for bad in (None, "", "10.0.0.5", "10.0.0.5:0", "host:port", ":8877"):
        with pytest.raises(BadLauncherArgument):
            parse_response_address(bad)


def test_transport_encryption() -> None:
    assert parse_transport_encryption("Auto") == "auto"
    assert parse_transport_encryption("required") == "required"
    for off in (None, "", "disabled", "{transport_encryption}"):
        assert parse_transport_encryption(off) is None
    with pytest.raises(BadLauncherArgument):
        parse_transport_encryption("maybe")


def test_public_key_accepts_both_forms(server_key: Any) -> None:
    der = server_key.publickey().export_key("DER")
    assert public_key_der(_public_key_text(server_key)) == der
    assert public_key_der(server_key.publickey().export_key("PEM").decode()) == der
    for bad in (None, "", "not base64!"):
        with pytest.raises(BadLauncherArgument):
            public_key_der(bad)


# --- the response --------------------------------------------------------------------------


def test_connection_info_carries_what_the_provisioners_read() -> None:
    info = launcher_connection_info(FRONTEND, pid=4242, pgid=4242, comm_port=40008)
    assert info["pid"] == 4242 and info["pgid"] == 4242 and info["comm_port"] == 40008
    assert info["kernel_id"] == FRONTEND.kernel_id
    assert info["log_port"] == 40006 and info["log_replay_port"] == 40007
    assert {k: info[k] for k in FRONTEND.to_dict()} == FRONTEND.to_dict()
    with pytest.raises(LocalProtocolError):
        launcher_connection_info(FRONTEND, pid=0, pgid=1, comm_port=40008)


def test_gateway_provisioners_decodes_our_response(server_key: Any) -> None:
    info = launcher_connection_info(FRONTEND, pid=4242, pgid=4242, comm_port=40008)
    payload = encrypt_connection_info(
        info, _public_key_text(server_key), aes_key=os.urandom(16), randfunc=os.urandom
    )
    decoded = _their_decoder(server_key, payload)
    assert decoded["key"] == FRONTEND.key.encode()  # the ResponseManager makes it bytes
    assert {k: v for k, v in decoded.items() if k != "key"} == {
        k: v for k, v in info.items() if k != "key"
    }
    envelope = json.loads(base64.b64decode(payload))
    assert envelope["version"] == LAUNCHER_VERSION == 1
    assert set(envelope) == {"version", "key", "conn_info"}


@EXAMPLES
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda k: k not in FRONTEND.to_dict()),
        st.integers() | st.text(max_size=30) | st.booleans() | st.none(),
        max_size=5,
    ),
    aes_key=st.binary(min_size=16, max_size=16),
)
def test_decrypt_inverts_encrypt(server_key: Any, extra: dict[str, Any], aes_key: bytes) -> None:
    info = launcher_connection_info(FRONTEND, pid=7, pgid=7, comm_port=40008, extra=extra)
    payload = encrypt_connection_info(
        info, _public_key_text(server_key), aes_key=aes_key, randfunc=os.urandom
    )
    assert decrypt_connection_info(payload, server_key.export_key("DER")) == json.loads(
        json.dumps(info)
    )


@EXAMPLES
@given(data=st.binary(max_size=400))
def test_any_bytes_decrypt_or_raise_a_remote_error(server_key: Any, data: bytes) -> None:
    try:
        info = decrypt_connection_info(data, server_key.export_key("DER"))
    except RemoteProtocolError:
        return
    assert isinstance(info, dict)


def test_a_response_for_another_server_is_refused(server_key: Any) -> None:
    other = RSA.generate(1024)
    payload = encrypt_connection_info(
        {"kernel_id": "x"}, _public_key_text(other), aes_key=os.urandom(16), randfunc=os.urandom
    )
    with pytest.raises(BadLauncherResponse):
        decrypt_connection_info(payload, server_key.export_key("DER"))


def test_encrypt_refuses_what_is_not_a_key() -> None:
    with pytest.raises(BadLauncherArgument):
        encrypt_connection_info({}, "AAAA", aes_key=os.urandom(16), randfunc=os.urandom)
    with pytest.raises(LocalProtocolError):
        encrypt_connection_info({}, "AAAA", aes_key=b"short", randfunc=os.urandom)


# --- the communication port ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"signum": 0}', CommRequest(signum=0)),
        (b'{"signum": 2}', CommRequest(signum=2)),
        (b'{"signum": "15"}', CommRequest(signum=15)),
        (b'{"shutdown": 1}', CommRequest(shutdown=True)),
        (b'{"shutdown": 0}', CommRequest()),
        (b'{"signum": 9, "shutdown": 1}', CommRequest(signum=9, shutdown=True)),
        (b'{"hello": "world"}', CommRequest()),
        (b"", CommRequest()),  # a TCP health check: connect, then close
    ],
)
def test_comm_requests(data: bytes, expected: CommRequest) -> None:
    assert decode_comm_request(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        b"[2]",
        b'{"signum": -1}',
        b'{"signum": 1e3}',
        b'{"signum": true}',
        b'{"signum": 99999}',
        b'{"signum": "SIGINT"}',
        b'{"shutdown": "yes"}',
        b"\xff\xfe",
        b"[" * 100000,
        b'{"signum": 2}' + b" " * MAX_COMM_REQUEST,
    ],
)
def test_bad_comm_requests(data: bytes) -> None:
    with pytest.raises(BadCommRequest):
        decode_comm_request(data)


def test_what_the_provisioners_send_decodes() -> None:
    """The exact bytes of RemoteProvisionerBase._send_listener_request."""
    for request in ({"signum": 0}, {"signum": 2}, {"signum": 15}, {"shutdown": 1}):
        sent = json.dumps(request).encode(encoding="utf-8")
        decoded = decode_comm_request(sent)
        assert decoded.signum == request.get("signum")
        assert decoded.shutdown == bool(request.get("shutdown"))
        assert encode_comm_request(decoded) == sent


requests = st.builds(
    CommRequest, st.none() | st.integers(min_value=0, max_value=255), st.booleans()
)


@EXAMPLES
@given(request=requests)
def test_decode_inverts_encode(request: CommRequest) -> None:
    assert decode_comm_request(encode_comm_request(request)) == request


def _read(chunks: list[bytes]) -> CommRequest | type[RemoteProtocolError]:
    reader = CommRequestReader()
    try:
        for chunk in chunks:
            reader.feed(chunk)
        return reader.finish()
    except RemoteProtocolError:
        return RemoteProtocolError


comm_like = st.one_of(
    st.binary(max_size=60),
    requests.map(encode_comm_request),
    st.dictionaries(
        st.sampled_from(["signum", "shutdown", "x"]),
        st.none() | st.integers(-3, 300) | st.text(max_size=4) | st.booleans(),
        max_size=3,
    ).map(lambda d: json.dumps(d).encode()),
)


@EXAMPLES
@given(data=comm_like)
def test_any_bytes_give_a_request_or_a_remote_error(data: bytes) -> None:
    result = _read([data])
    assert result is RemoteProtocolError or isinstance(result, CommRequest)


@EXAMPLES
@given(data=comm_like)
def test_whole_or_byte_by_byte_is_the_same(data: bytes) -> None:
    assert _read([data]) == _read([data[i : i + 1] for i in range(len(data))])


def test_reader_stops_an_endless_sender_early() -> None:
    reader = CommRequestReader()
    reader.feed(b" " * MAX_COMM_REQUEST)
    with pytest.raises(BadCommRequest):
        reader.feed(b" ")
