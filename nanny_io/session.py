"""The nanny's own identity on the Jupyter wire: signs what it sends, checks what it gets."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from nanny_io_proto.messages import (
    Message,
    decode_message,
    encode_message,
    encode_stream,
    make_header,
    make_message,
)
from nanny_io_proto.signing import DigestHistory, Signer


def utcnow_iso() -> str:
    """The current time as the ISO 8601 string Jupyter headers carry."""
    return datetime.now(timezone.utc).isoformat()


def new_id() -> str:
    return uuid.uuid4().hex


class NannySession:
    """Builds signed messages from the nanny and verifies incoming ones (with replay refusal)."""

    def __init__(self, key: str | bytes, scheme: str = "hmac-sha256") -> None:
        self.signer = Signer(key, scheme)
        self.session_id = new_id()
        self.history = DigestHistory()

    def message(
        self,
        msg_type: str,
        content: Mapping[str, Any],
        parent: Message | Mapping[str, Any] | None = None,
        identities: tuple[bytes, ...] = (),
    ) -> Message:
        return make_message(
            msg_type,
            dict(content),
            parent=parent,
            msg_id=new_id(),
            session=self.session_id,
            date=utcnow_iso(),
            identities=identities,
        )

    def frames(
        self,
        msg_type: str,
        content: Mapping[str, Any],
        parent: Message | Mapping[str, Any] | None = None,
        identities: tuple[bytes, ...] = (),
    ) -> list[bytes]:
        """A signed message, ready for ``send_multipart``."""
        return encode_message(self.message(msg_type, content, parent, identities), self.signer)

    def stream_frames(self, name: str, text: bytes, parent: Mapping[str, Any]) -> list[bytes]:
        """A signed ``stream`` message of valid UTF-8 ``text``: the same frames as
        ``frames("stream", {"name": name, "text": text.decode()}, parent)``, but the text
        is never a ``str``."""
        header = make_header("stream", msg_id=new_id(), session=self.session_id, date=utcnow_iso())
        return encode_stream(header, parent, name, text, self.signer)

    def decode(self, frames: list[bytes]) -> Message:
        """Verify (signature, then replay) and decode; raises RemoteProtocolError."""
        return decode_message(frames, self.signer, history=self.history)
