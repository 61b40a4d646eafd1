"""Wire messages interoperate with jupyter_client's Session and refuse anything untrusted."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyter_client.session import Session

from nanny_io_proto import messages as messages_module
from nanny_io_proto.errors import (
    BadSignature,
    DuplicateSignature,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
)
from nanny_io_proto.messages import (
    DELIM,
    Message,
    decode_message,
    encode_message,
    encode_stream,
    json_string,
    make_header,
    make_message,
    peek_header,
    split_identities,
    stream_content,
)
from nanny_io_proto.signing import DigestHistory, Signer
from nanny_io_proto.version import JUPYTER_PROTOCOL_VERSION

KEY = b"8b3d2f1e-5c4a-4f0e-9d7b-2a6c1e0f3b9d"
DATE = "2024-05-01T12:34:56.789012Z"

# JSON values as jupyter_client's packer accepts them (no NaN, no lone surrogates).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
ids = st.text(min_size=1, max_size=40)
frames_bytes = st.lists(st.binary(max_size=16), max_size=3).map(tuple)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    header = make_header(
        draw(ids),
        msg_id=draw(ids),
        session=draw(st.text(max_size=20)),
        date=DATE,
        username=draw(st.text(max_size=10)),
    )
    header.update(draw(st.dictionaries(st.text(min_size=12, max_size=14), json_values, max_size=2)))
    parent: dict[str, Any] = draw(st.one_of(st.just({}), json_objects))
    return Message(
        header=header,
        parent_header=parent,
        metadata=draw(json_objects),
        content=draw(json_objects),
        buffers=draw(frames_bytes.filter(lambda t: DELIM not in t)),
        identities=draw(frames_bytes.filter(lambda t: DELIM not in t)),
    )


def _session(key: bytes, *, exact: bool = False) -> Session:
    """A jupyter_client Session; ``exact`` pins its stdlib JSON packer (orjson, when installed,
    writes compact JSON: different bytes, same meaning)."""
    if exact:
        return Session(key=key, username="tester", packer="json", unpacker="json")
    return Session(key=key, username="tester")


def _their_dates_as_strings(msg: dict[str, Any]) -> None:
    """jupyter_client turns ISO dates into datetimes; render them back for comparison."""
    for part in ("header", "parent_header"):
        for name, value in msg[part].items():
            if isinstance(value, datetime):
                msg[part][name] = value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- interop with jupyter_client -----------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, b""])
@pytest.mark.parametrize("identities", [[], [b"router-id"], [b"a", b"b"]])
@pytest.mark.parametrize("buffers", [[], [b"\x00\x01binary", b""]])
def test_their_serialize_our_decode(
    key: bytes, identities: list[bytes], buffers: list[bytes]
) -> None:
    session = _session(key)
    parent = session.msg("execute_request", {"code": "1+1"})
    msg = session.msg(
        "execute_reply", {"status": "ok", "text": "héllo ☃"}, parent=parent, metadata={"m": [1]}
    )
    frames = [*session.serialize(msg, ident=identities), *buffers]
    got = decode_message(frames, Signer(key))
    assert got.identities == tuple(identities)
    assert got.buffers == tuple(buffers)
    assert got.msg_type == "execute_reply"
    assert got.msg_id == msg["header"]["msg_id"]
    assert got.parent_msg_id == parent["header"]["msg_id"]
    assert got.content == {"status": "ok", "text": "héllo ☃"}
    assert got.metadata["m"] == [1]
    assert (
        datetime.fromisoformat(got.header["date"].replace("Z", "+00:00")) == msg["header"]["date"]
    )
    # With the stdlib packer, re-encoding gives back the very same bytes, signature included.
    if session.packer == "json":
        assert encode_message(got, Signer(key)) == frames


@pytest.mark.parametrize("key", [KEY, b""])
@pytest.mark.parametrize("identities", [(), (b"router-id",), (b"kernel.x.status",)])
def test_our_encode_their_deserialize(key: bytes, identities: tuple[bytes, ...]) -> None:
    parent = make_message(
        "execute_request", {"code": "x"}, parent=None, msg_id="p1", session="s", date=DATE
    )
    msg = make_message(
        "kernel_died",
        {"reason": "killed by SIGKILL", "ü": "☃"},
        parent=parent,
        msg_id="m1",
        session="nanny-session",
        date=DATE,
        identities=identities,
        metadata={"k": True},
        buffers=(b"buf\x00", b"two"),
    )
    frames = encode_message(msg, Signer(key))
    session = _session(key)
    idents, rest = session.feed_identities(frames)
    assert tuple(idents) == identities
    theirs = session.deserialize(rest)
    _their_dates_as_strings(theirs)
    assert theirs["header"] == msg.header
    assert theirs["parent_header"] == parent.header
    assert theirs["metadata"] == {"k": True}
    assert theirs["content"] == msg.content
    assert [bytes(b) for b in theirs["buffers"]] == [b"buf\x00", b"two"]
    assert theirs["header"]["version"] == JUPYTER_PROTOCOL_VERSION


@settings(max_examples=40, deadline=None)
@given(msg=messages(), signed=st.booleans())
def test_encoding_matches_jupyter_client_byte_for_byte(msg: Message, signed: bool) -> None:
    key = KEY if signed else b""
    session = _session(key, exact=True)
    theirs = session.serialize(
        {
            "header": msg.header,
            "parent_header": msg.parent_header,
            "metadata": msg.metadata,
            "content": msg.content,
        },
        ident=list(msg.identities),
    )
    assert encode_message(msg, Signer(key)) == [*theirs, *msg.buffers]


# --- round trip and robustness -------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(msg=messages(), signed=st.booleans())
def test_decode_encode_round_trip(msg: Message, signed: bool) -> None:
    signer = Signer(KEY if signed else b"")
    assert decode_message(encode_message(msg, signer), signer) == msg


frame_lists = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.just(DELIM),
        st.just(b"{}"),
        st.sampled_from([b'{"msg_id": "a", "msg_type": "b"}', b"[1]", b"nul", b"\xff{", b"1e999"]),
    ),
    max_size=9,
)


@settings(max_examples=300, deadline=None)
@given(frames=frame_lists, signed=st.booleans())
def test_any_frames_decode_or_raise_remote_error(frames: list[bytes], signed: bool) -> None:
    signer = Signer(KEY if signed else b"")
    try:
        msg = decode_message(frames, signer, history=DigestHistory())
    except RemoteProtocolError:
        return
    assert isinstance(msg, Message)


@settings(max_examples=200, deadline=None)
@given(frames=frame_lists)
def test_any_frames_peek_or_raise_remote_error(frames: list[bytes]) -> None:
    try:
        header = peek_header(frames)
    except RemoteProtocolError:
        return
    assert isinstance(header["msg_id"], str)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(json_values, min_size=4, max_size=4), signed=st.booleans())
def test_signed_garbage_json_is_malformed_not_a_crash(parts: list[Any], signed: bool) -> None:
    """Correctly signed frames with arbitrary JSON values still only raise MalformedMessage."""
    signer = Signer(KEY if signed else b"")
    packed = [json.dumps(p).encode() for p in parts]
    try:
        msg = decode_message([DELIM, signer.sign(packed), *packed], signer)
    except MalformedMessage:
        return
    assert isinstance(msg.header["msg_id"], str)


def test_deeply_nested_json_is_malformed() -> None:
    signer = Signer(KEY)
    deep = b"[" * 100_000 + b"]" * 100_000
    parts = [b'{"msg_id": "a", "msg_type": "b"}', b"{}", b"{}", deep]
    with pytest.raises(MalformedMessage):
        decode_message([DELIM, signer.sign(parts), *parts], signer)


def test_huge_integer_literal_is_malformed() -> None:
    signer = Signer(KEY)
    parts = [b'{"msg_id": "a", "msg_type": "b"}', b"{}", b"{}", b'{"n": ' + b"9" * 10_000 + b"}"]
    with pytest.raises(MalformedMessage):
        decode_message([DELIM, signer.sign(parts), *parts], signer)


def test_invalid_utf8_is_replaced_like_jupyter_client() -> None:
    signer = Signer(KEY)
    parts = [b'{"msg_id": "a", "msg_type": "b"}', b"{}", b"{}", b'{"t": "\xff"}']
    msg = decode_message([DELIM, signer.sign(parts), *parts], signer)
    assert msg.content == {"t": "\ufffd"}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"[]", "header must be an object"),
        (b'{"msg_type": "x"}', "'msg_id' must be a string"),
        (b'{"msg_id": 1, "msg_type": "x"}', "'msg_id' must be a string"),
        (b'{"msg_id": "a"}', "'msg_type' must be a string"),
    ],
)
def test_header_needs_string_id_and_type(header: bytes, reason: str) -> None:
    signer = Signer(KEY)
    parts = [header, b"{}", b"{}", b"{}"]
    with pytest.raises(MalformedMessage, match=reason):
        decode_message([DELIM, signer.sign(parts), *parts], signer)
    with pytest.raises(MalformedMessage, match=reason):
        peek_header([DELIM, b"", header])


@pytest.mark.parametrize("index", [1, 2, 3])
def test_parent_metadata_content_must_be_objects(index: int) -> None:
    signer = Signer(KEY)
    parts = [b'{"msg_id": "a", "msg_type": "b"}', b"{}", b"{}", b"{}"]
    parts[index] = b'"text"'
    with pytest.raises(MalformedMessage, match="must be a JSON object"):
        decode_message([DELIM, signer.sign(parts), *parts], signer)


def test_too_few_frames_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="5 frames"):
        decode_message([b"id", DELIM, b"sig", b"{}"], Signer(KEY))


# --- signatures ----------------------------------------------------------------------------


def _signed_frames(key: bytes = KEY) -> list[bytes]:
    msg = make_message(
        "interrupt_request", {}, parent=None, msg_id="i1", session="s", date=DATE, identities=[b"c"]
    )
    return encode_message(msg, Signer(key))


def test_wrong_key_is_bad_signature() -> None:
    with pytest.raises(BadSignature):
        decode_message(_signed_frames(b"other key"), Signer(KEY))


def test_unsigned_message_is_bad_signature_when_keyed() -> None:
    frames = _signed_frames(b"")
    with pytest.raises(BadSignature, match="unsigned"):
        decode_message(frames, Signer(KEY))


@settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=2, max_value=6), data=st.data())
def test_any_change_to_a_signed_part_is_bad_signature(index: int, data: st.DataObject) -> None:
    frames = _signed_frames()
    original = frames[index]
    changed = data.draw(st.binary(max_size=80).filter(lambda b: b != original))
    frames[index] = changed
    with pytest.raises(BadSignature):
        decode_message(frames, Signer(KEY))


def test_garbled_signature_is_bad_signature_even_with_invalid_json() -> None:
    # The signature is checked before the JSON is parsed: a forged message never reaches
    # the parser, so it is reported as a bad signature, not as malformed.
    frames = [DELIM, b"0" * 64, b"not json", b"{", b"[", b"\xff"]
    with pytest.raises(BadSignature):
        decode_message(frames, Signer(KEY))


def test_replay_is_duplicate_signature() -> None:
    frames = _signed_frames()
    history = DigestHistory()
    decode_message(frames, Signer(KEY), history=history)
    with pytest.raises(DuplicateSignature):
        decode_message(frames, Signer(KEY), history=history)
    # Without a history the same frames decode again (e.g. a peek by another component).
    decode_message(frames, Signer(KEY))


def test_forged_message_does_not_enter_the_history() -> None:
    frames = _signed_frames()
    forged = list(frames)
    forged[-1] = b'{"evil": 1}'
    history = DigestHistory()
    with pytest.raises(BadSignature):
        decode_message(forged, Signer(KEY), history=history)
    assert len(history) == 0
    decode_message(frames, Signer(KEY), history=history)


def test_unsigned_session_ignores_history() -> None:
    frames = _signed_frames(b"")
    history = DigestHistory()
    decode_message(frames, Signer(b""), history=history)
    decode_message(frames, Signer(b""), history=history)
    assert len(history) == 0


# --- construction --------------------------------------------------------------------------


def test_split_identities() -> None:
    assert split_identities([b"a", b"b", DELIM, b"s", b"h"]) == ((b"a", b"b"), [b"s", b"h"])
    assert split_identities([DELIM]) == ((), [])
    with pytest.raises(MalformedMessage, match="delimiter"):
        split_identities([b"a", b"b"])


def test_make_message_takes_the_parent_header() -> None:
    parent = make_message("execute_request", {}, parent=None, msg_id="p", session="s", date=DATE)
    child = make_message(
        "status", {"execution_state": "dead"}, parent=parent, msg_id="c", session="n", date=DATE
    )
    assert child.parent_header == parent.header
    assert child.parent_msg_id == "p"
    as_dict = {"header": parent.header, "content": {}}
    assert (
        make_message("x", {}, parent=as_dict, msg_id="c", session="n", date=DATE).parent_header
        == parent.header
    )
    assert (
        make_message(
            "x", {}, parent=parent.header, msg_id="c", session="n", date=DATE
        ).parent_msg_id
        == "p"
    )
    orphan = make_message("x", {}, parent=None, msg_id="c", session="n", date=DATE)
    assert orphan.parent_header == {}
    assert orphan.parent_msg_id is None


def test_make_header_fields() -> None:
    header = make_header("kernel_died", msg_id="m", session="s", date=DATE)
    assert header == {
        "msg_id": "m",
        "msg_type": "kernel_died",
        "username": "nanny-io",
        "session": "s",
        "date": DATE,
        "version": JUPYTER_PROTOCOL_VERSION,
    }


@pytest.mark.parametrize("date", ["yesterday", "2024-05-01", ""])
def test_make_header_needs_an_iso_date(date: str) -> None:
    with pytest.raises(LocalProtocolError, match="ISO 8601"):
        make_header("x", msg_id="m", session="s", date=date)


def test_invalid_local_messages_are_local_errors() -> None:
    header = make_header("x", msg_id="m", session="s", date=DATE)
    with pytest.raises(LocalProtocolError):
        Message(header={"msg_id": "m"})
    with pytest.raises(LocalProtocolError):
        Message(header=header, content=[])  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Message(header=header, buffers=[b"x"])  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="JSON"):
        encode_message(Message(header=header, content={"x": float("nan")}), Signer(KEY))
    with pytest.raises(LocalProtocolError, match="JSON"):
        encode_message(Message(header=header, content={"x": object()}), Signer(KEY))
    with pytest.raises(LocalProtocolError, match="JSON"):
        encode_message(Message(header=header, content={"x": "\ud800"}), Signer(KEY))


def test_message_is_unhashable() -> None:
    msg = Message(header=make_header("x", msg_id="m", session="s", date=DATE))
    with pytest.raises(TypeError):
        hash(msg)


def test_peek_header_reads_only_the_header() -> None:
    frames = [
        b"kernel.1.status",
        DELIM,
        b"anything",
        b'{"msg_id": "m", "msg_type": "status"}',
        b"{",
    ]
    assert peek_header(frames)["msg_type"] == "status"
    with pytest.raises(MalformedMessage):
        peek_header([DELIM, b"sig"])


# -- stream content packed without the per-character JSON encoder -------------------------

#: Both ways of escaping: orjson's SIMD pass for ASCII text (when it is installed) and the
#: memchr passes that stand in for it without orjson (and escape non-ASCII text).
ESCAPERS = [
    pytest.param(
        "orjson",
        marks=pytest.mark.skipif(
            messages_module._simd_dumps is None, reason="orjson is not installed"
        ),
    ),
    "memchr",
]


@contextlib.contextmanager
def escaping_by(escaper: str) -> Iterator[None]:
    """Escape with ``escaper`` meanwhile (not a fixture: hypothesis runs many examples)."""
    saved = messages_module._simd_dumps
    if escaper == "memchr":
        messages_module._simd_dumps = None
    try:
        yield
    finally:
        messages_module._simd_dumps = saved


@pytest.mark.parametrize("escaper", ESCAPERS)
def test_every_ascii_character_is_escaped_as_json_dumps_does(escaper: str) -> None:
    with escaping_by(escaper):
        for text in [chr(c) for c in range(128)] + ["".join(map(chr, range(128))) * 40]:
            expected = json.dumps(text, ensure_ascii=False).encode()
            assert json_string(text) == expected
            assert stream_content("stdout", text.encode()) == b'{"name": "stdout", "text": %s}' % (
                expected
            )


long_text = st.text(min_size=1, max_size=64).map(lambda t: t * (5000 // len(t) + 1))


@pytest.mark.parametrize("escaper", ESCAPERS)
@given(text=st.text() | long_text)
def test_json_string_is_json_dumps(escaper: str, text: str) -> None:
    with escaping_by(escaper):
        assert json_string(text) == json.dumps(text, ensure_ascii=False).encode()


@given(text=long_text, name=st.sampled_from(["stdout", "stderr", 'a"\\b']))
def test_long_stream_content_packs_as_jupyter_client_does(text: str, name: str) -> None:
    content = {"name": name, "text": text}
    msg = make_message("stream", content, parent=None, msg_id="m", session="s", date=DATE)
    frames = encode_message(msg, Signer(KEY))
    assert frames[-1] == json.dumps(content, ensure_ascii=False).encode()
    assert frames[-1] == _session(KEY, exact=True).pack(content)
    assert decode_message(frames, Signer(KEY)).content == content


def test_long_stream_text_with_a_lone_surrogate_is_refused() -> None:
    content = {"name": "stdout", "text": "x" * 5000 + "\ud800"}
    msg = make_message("stream", content, parent=None, msg_id="m", session="s", date=DATE)
    with pytest.raises(LocalProtocolError, match="not JSON-serialisable"):
        encode_message(msg, Signer(KEY))


# -- stream content from UTF-8 bytes (the captured output's path) --------------------------

#: Text with every kind of byte the escaping treats apart: newlines (the usual case),
#: the quote, the backslash, every control character, non-ASCII characters of every length.
escapable_text = st.text(
    alphabet=st.sampled_from(
        ["x", "\n", '"', "\\", "\t", "\r", "\x00", "\x1b", "\x7f", "é", "€", "\U0001f600"]
    )
    | st.characters(max_codepoint=0x20)
    | st.characters(blacklist_categories=("Cs",)),
)


@pytest.mark.parametrize("escaper", ESCAPERS)
@given(
    text=escapable_text | long_text.filter(lambda t: not any("\ud800" <= c <= "\udfff" for c in t))
)
def test_stream_content_from_bytes_is_json_dumps(escaper: str, text: str) -> None:
    for name in ("stdout", "stderr", 'a"\\b\n'):
        content = {"name": name, "text": text}
        with escaping_by(escaper):
            packed = stream_content(name, text.encode())
        assert packed == json.dumps(content, ensure_ascii=False).encode()


@pytest.mark.parametrize("escaper", ESCAPERS)
@given(
    text=escapable_text,
    parent=st.sampled_from([None, {}, {"msg_id": "p", "msg_type": "execute_request"}]),
)
def test_encode_stream_is_encode_message_of_the_decoded_text(
    escaper: str, text: str, parent: dict[str, Any] | None
) -> None:
    header = make_header("stream", msg_id="m", session="s", date=DATE)
    content = {"name": "stdout", "text": text}
    msg = Message(header=header, parent_header=dict(parent or {}), content=content)
    with escaping_by(escaper):
        frames = encode_stream(header, parent, "stdout", text.encode(), Signer(KEY))
    assert frames == encode_message(msg, Signer(KEY))
    assert frames[-1] == _session(KEY, exact=True).pack(content)
    assert decode_message(frames, Signer(KEY)).content == content


def test_stream_content_refuses_text_that_is_not_bytes() -> None:
    with pytest.raises(LocalProtocolError, match="str and bytes"):
        stream_content("stdout", "text")  # type: ignore[arg-type]
