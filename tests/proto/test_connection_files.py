"""Connection files are plain Jupyter connection files that unmodified clients load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from nanny_io_proto.connection_files import (
    STANDARD_KEYS,
    ConnectionInfo,
    NannyConnectionInfo,
    decode_connection_file,
    encode_connection_file,
    kernel_facing,
)
from nanny_io_proto.errors import ConnectionFileError, LocalProtocolError
from nanny_io_proto.messages import decode_message, encode_message, make_message
from nanny_io_proto.version import PROTOCOL_VERSION

PUBLIC, SECRET = (k.decode("ascii") for k in zmq.curve_keypair())


def _frontend(**overrides: Any) -> NannyConnectionInfo:
    fields: dict[str, Any] = {
        "transport": "tcp",
        "ip": "127.0.0.1",
        "shell_port": 50001,
        "iopub_port": 50002,
        "stdin_port": 50003,
        "control_port": 50004,
        "hb_port": 50005,
        "key": "a0436f6c-1916-498b-8eb9-e81ab9368e84",
        "kernel_name": "python3",
        "kernel_id": "6f0b5c2e-8a6d-4a53-9f43-0d2b8f1d0c11",
        "log_port": 50006,
        "log_replay_port": 50007,
    }
    fields.update(overrides)
    return NannyConnectionInfo(**fields)


def _client(path: Path) -> BlockingKernelClient:
    client = BlockingKernelClient()
    client.load_connection_file(str(path))
    return client


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
@pytest.mark.parametrize("curve", [False, True])
def test_unmodified_jupyter_client_loads_the_frontend_file(
    tmp_path: Path, transport: str, curve: bool
) -> None:
    ip = "127.0.0.1" if transport == "tcp" else str(tmp_path / "kernel")
    keys = {"curve_publickey": PUBLIC, "curve_secretkey": SECRET} if curve else {}
    info = _frontend(transport=transport, ip=ip, **keys)
    path = tmp_path / "kernel-x.json"
    path.write_bytes(encode_connection_file(info))

    client = _client(path)
    assert client.transport == transport
    assert client.ip == ip
    for channel in ("shell", "iopub", "stdin", "control", "hb"):
        assert getattr(client, f"{channel}_port") == getattr(info, f"{channel}_port")
        assert client._make_url(channel) == info.url(channel)
    assert client.session.key == info.key.encode()
    assert client.session.signature_scheme == "hmac-sha256"
    if curve:
        assert client.curve_publickey == PUBLIC.encode()
        assert client.curve_secretkey == SECRET.encode()
    else:
        assert client.curve_publickey is None
    # The session built from the file and ours sign alike.
    msg = make_message(
        "kernel_info_request", {}, parent=None, msg_id="m", session="s", date="2024-01-01T00:00:00Z"
    )
    assert client.session.deserialize(encode_message(msg, info.make_signer())[1:])["msg_id"] == "m"


def test_jupyter_client_written_files_decode(tmp_path: Path) -> None:
    path, cfg = write_connection_file(
        str(tmp_path / "k.json"), ip="127.0.0.1", key=b"secret", kernel_name="python3"
    )
    info = decode_connection_file(Path(path).read_bytes())
    assert type(info) is ConnectionInfo
    assert info.to_dict() == {k: cfg[k] for k in STANDARD_KEYS}  # type: ignore[literal-required]
    curve_path, _ = write_connection_file(
        str(tmp_path / "c.json"),
        key=b"k",
        curve_publickey=PUBLIC.encode(),
        curve_secretkey=SECRET.encode(),
    )
    curved = decode_connection_file(Path(curve_path).read_bytes())
    assert (curved.curve_publickey, curved.curve_secretkey) == (PUBLIC, SECRET)


def test_frontend_file_layout() -> None:
    data = encode_connection_file(_frontend())
    assert data.endswith(b"}\n")
    assert data.startswith(b'{\n "control_port": 50004,\n')
    obj = json.loads(data)
    assert list(obj) == sorted(obj)
    assert set(obj) == {
        *STANDARD_KEYS,
        "kernel_id",
        "log_port",
        "log_replay_port",
        "nanny_protocol_version",
    }
    assert obj["nanny_protocol_version"] == PROTOCOL_VERSION
    assert obj["signature_scheme"] == "hmac-sha256"


infos = st.builds(
    NannyConnectionInfo,
    transport=st.just("tcp"),
    ip=st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "kernel.example.org"]),
    shell_port=st.integers(0, 65535),
    iopub_port=st.integers(0, 65535),
    stdin_port=st.integers(0, 65535),
    control_port=st.integers(0, 65535),
    hb_port=st.integers(0, 65535),
    key=st.text(max_size=40),
    signature_scheme=st.sampled_from(["hmac-sha256", "hmac-sha512"]),
    kernel_name=st.text(max_size=20),
    kernel_id=st.text(max_size=40),
    log_port=st.integers(0, 65535),
    log_replay_port=st.integers(0, 65535),
)


@settings(max_examples=100, deadline=None)
@given(info=infos, plain=st.booleans(), curve=st.booleans())
def test_round_trip(info: NannyConnectionInfo, plain: bool, curve: bool) -> None:
    if curve:
        info = dataclasses.replace(info, curve_publickey=PUBLIC, curve_secretkey=SECRET)
    chosen: ConnectionInfo = info.standard() if plain else info
    decoded = decode_connection_file(encode_connection_file(chosen))
    assert decoded == chosen
    assert type(decoded) is type(chosen)


garbage_objects = st.dictionaries(
    st.sampled_from(
        [
            *STANDARD_KEYS,
            "kernel_id",
            "log_port",
            "log_replay_port",
            "nanny_protocol_version",
            "curve_publickey",
            "curve_secretkey",
        ]
    ),
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2),
    max_size=14,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200)
    | garbage_objects.map(lambda d: json.dumps(d).encode())
    | infos.map(lambda i: encode_connection_file(i))
)
def test_any_bytes_decode_or_raise_connection_file_error(data: bytes) -> None:
    try:
        info = decode_connection_file(data)
    except ConnectionFileError:
        return
    assert decode_connection_file(encode_connection_file(info)) == info


@settings(max_examples=150, deadline=None)
@given(
    info=infos,
    key=st.sampled_from([*STANDARD_KEYS, "kernel_id", "log_port", "nanny_protocol_version"]),
    value=st.none()
    | st.booleans()
    | st.text(max_size=5)
    | st.floats(allow_nan=False)
    | st.integers(),
)
def test_one_garbled_value_is_a_connection_file_error_or_valid(
    info: NannyConnectionInfo, key: str, value: Any
) -> None:
    d = info.to_dict()
    d[key] = value
    try:
        decoded = decode_connection_file(json.dumps(d).encode())
    except ConnectionFileError:
        return
    assert getattr(decoded, key) == value


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"shell_port": None}, "lacks 'shell_port'"),
        ({"key": None}, "lacks 'key'"),
        ({"shell_port": "50001"}, "shell_port must be a tcp port"),
        ({"shell_port": True}, "shell_port must be a tcp port"),
        ({"shell_port": 70000}, "shell_port must be a tcp port"),
        ({"transport": "udp"}, "transport must be"),
        ({"ip": ""}, "ip must be"),
        ({"signature_scheme": "rot13"}, "unsupported signature_scheme"),
        ({"signature_scheme": "hmac-nope"}, "unsupported signature_scheme"),
        ({"curve_publickey": PUBLIC}, "given together"),
        ({"curve_publickey": "short", "curve_secretkey": SECRET}, "40-character Z85"),
        ({"nanny_protocol_version": "2.0"}, "unsupported nanny_protocol_version '2.0'"),
        ({"nanny_protocol_version": 1}, "must look like '1.0'"),
        ({"log_port": -1}, "log_port must be a tcp port"),
        ({"kernel_id": 5}, "kernel_id must be a string"),
    ],
)
def test_invalid_files_say_why(change: dict[str, Any], reason: str) -> None:
    d = _frontend().to_dict()
    for key, value in change.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    with pytest.raises(ConnectionFileError, match=reason):
        decode_connection_file(json.dumps(d).encode())


def test_secrets_are_not_echoed_in_errors() -> None:
    d = _frontend().to_dict()
    d["curve_publickey"], d["curve_secretkey"] = PUBLIC, SECRET + "x"
    with pytest.raises(ConnectionFileError) as info:
        decode_connection_file(json.dumps(d).encode())
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"\xff\xfe",
        b"{",
        b'"x"',
        b"[" * 100_000,
        b'{"shell_port": 1' + b"0" * 5000 + b"}",
    ],
)
def test_non_object_files_are_connection_file_errors(data: bytes) -> None:
    with pytest.raises(ConnectionFileError):
        decode_connection_file(data)


def test_plain_file_defaults_and_bom() -> None:
    d = {k: v for k, v in _frontend().to_dict().items() if k in STANDARD_KEYS}
    del d["signature_scheme"], d["kernel_name"]
    info = decode_connection_file(b"\xef\xbb\xbf" + json.dumps(d).encode())
    assert type(info) is ConnectionInfo
    assert info.signature_scheme == "hmac-sha256"
    assert info.kernel_name == ""


def test_urls_match_jupyter_client() -> None:
    info = _frontend()
    assert info.url("shell") == "tcp://127.0.0.1:50001"
    assert info.url("log") == "tcp://127.0.0.1:50006"
    assert info.url("log_replay") == "tcp://127.0.0.1:50007"
    assert _frontend(transport="ipc", ip="/run/k").url("hb") == "ipc:///run/k-50005"
    with pytest.raises(LocalProtocolError, match="unknown channel 'log'"):
        info.standard().url("log")


def test_local_construction_errors_are_local() -> None:
    with pytest.raises(LocalProtocolError):
        _frontend(shell_port=-1)
    with pytest.raises(LocalProtocolError):
        _frontend(nanny_protocol_version="9.0")
    with pytest.raises(LocalProtocolError):
        encode_connection_file({"shell_port": 1})  # type: ignore[arg-type]


# --- the kernel-facing file ------------------------------------------------------------------


def test_kernel_facing_file(tmp_path: Path) -> None:
    frontend = _frontend(curve_publickey=PUBLIC, curve_secretkey=SECRET)
    kernel = kernel_facing(
        frontend, ip="127.0.0.1", control_port=40001, iopub_port=40002, hb_port=40003
    )
    assert type(kernel) is ConnectionInfo
    assert (kernel.shell_port, kernel.stdin_port) == (frontend.shell_port, frontend.stdin_port)
    assert (kernel.control_port, kernel.iopub_port, kernel.hb_port) == (40001, 40002, 40003)
    assert (kernel.key, kernel.signature_scheme, kernel.kernel_name) == (
        frontend.key,
        frontend.signature_scheme,
        frontend.kernel_name,
    )
    assert (kernel.curve_publickey, kernel.curve_secretkey) == (PUBLIC, SECRET)
    data = encode_connection_file(kernel)
    assert b"log_port" not in data and b"kernel_id" not in data
    # An unmodified kernel (or client) reads it as a plain connection file.
    path = tmp_path / "kernel-facing.json"
    path.write_bytes(data)
    client = _client(path)
    assert (client.control_port, client.iopub_port, client.hb_port) == (40001, 40002, 40003)
    assert client.shell_port == frontend.shell_port


def test_kernel_facing_wildcard_ip() -> None:
    frontend = _frontend(ip="10.0.0.5")
    assert (
        kernel_facing(frontend, ip="0.0.0.0", control_port=1, iopub_port=2, hb_port=3).ip
        == "0.0.0.0"
    )
    with pytest.raises(LocalProtocolError, match="frontends reach"):
        kernel_facing(frontend, ip="127.0.0.1", control_port=1, iopub_port=2, hb_port=3)


def test_kernel_facing_rejects_unusable_layouts() -> None:
    frontend = _frontend()
    with pytest.raises(LocalProtocolError, match="transport"):
        kernel_facing(
            frontend, ip="127.0.0.1", control_port=1, iopub_port=2, hb_port=3, transport="ipc"
        )
    with pytest.raises(LocalProtocolError, match="distinct"):
        kernel_facing(frontend, ip="127.0.0.1", control_port=1, iopub_port=1, hb_port=3)
    with pytest.raises(LocalProtocolError, match="not frontend-facing"):
        kernel_facing(frontend, ip="127.0.0.1", control_port=50004, iopub_port=2, hb_port=3)
    with pytest.raises(LocalProtocolError, match="not frontend-facing"):
        kernel_facing(frontend, ip="127.0.0.1", control_port=1, iopub_port=50006, hb_port=3)


def test_make_signer_matches_jupyter_client_for_non_ascii_keys(tmp_path: Path) -> None:
    info = _frontend(key="clé-ß")
    path = tmp_path / "k.json"
    path.write_bytes(encode_connection_file(info))
    client = _client(path)
    msg = make_message("x", {}, parent=None, msg_id="m", session="s", date="2024-01-01T00:00:00Z")
    frames = client.session.serialize(
        {"header": msg.header, "parent_header": {}, "metadata": {}, "content": {}}
    )
    assert decode_message(frames, info.make_signer()).msg_id == "m"
