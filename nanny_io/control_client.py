"""A small synchronous control-channel client, used by the CLI verbs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from nanny_io_proto.connection_files import ConnectionInfo
from nanny_io_proto.errors import RemoteProtocolError
from nanny_io_proto.messages import Message, encode_message

from .errors import NannyIOError
from .session import NannySession


class ControlTimeout(NannyIOError):
    """No reply arrived in time."""


def _connect(
    ctx: zmq.Context[zmq.Socket[bytes]], info: ConnectionInfo, socket_type: int, channel: str
) -> zmq.Socket[bytes]:
    sock = ctx.socket(socket_type)
    sock.linger = 0
    if info.curve_publickey and info.curve_secretkey:
        sock.curve_publickey = info.curve_publickey.encode()
        sock.curve_secretkey = info.curve_secretkey.encode()
        sock.curve_serverkey = info.curve_publickey.encode()
    if socket_type == zmq.SUB:
        sock.subscribe(b"")
    sock.connect(info.url(channel))
    return sock


def _receive(
    sock: zmq.Socket[bytes],
    session: NannySession,
    deadline: float,
    accept: Callable[[Message], bool],
) -> Message | None:
    while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000) + 1):
        try:
            msg = session.decode(sock.recv_multipart())
        except RemoteProtocolError:
            continue
        if accept(msg):
            return msg
    return None


def request(
    info: ConnectionInfo,
    msg_type: str,
    content: dict[str, Any],
    timeout: float = 10.0,
    wait_for: str | None = None,
) -> Message:
    """Send one signed control request and wait for its reply.

    With ``wait_for``, also wait for an iopub message of that type (subscribed before the
    request is sent), e.g. ``kernel_restarted`` after a restart.
    """
    session = NannySession(info.key, info.signature_scheme)
    ctx = zmq.Context()
    deadline = time.monotonic() + timeout
    control = _connect(ctx, info, zmq.DEALER, "control")
    iopub = _connect(ctx, info, zmq.SUB, "iopub") if wait_for else None
    try:
        if iopub is not None and not _receive(
            iopub, session, deadline, lambda m: m.msg_type == "iopub_welcome"
        ):
            raise ControlTimeout(f"no iopub_welcome within {timeout:g} s")
        msg = session.message(msg_type, content)
        control.send_multipart(encode_message(msg, session.signer))
        reply = _receive(control, session, deadline, lambda m: m.parent_msg_id == msg.msg_id)
        if reply is None:
            raise ControlTimeout(
                f"no {msg_type.replace('_request', '_reply')} within {timeout:g} s"
            )
        if (
            iopub is not None
            and reply.content.get("status") == "ok"
            and not _receive(iopub, session, deadline, lambda m: m.msg_type == wait_for)
        ):
            raise ControlTimeout(f"no {wait_for} within {timeout:g} s")
        return reply
    finally:
        control.close(linger=0)
        if iopub is not None:
            iopub.close(linger=0)
        ctx.term()
