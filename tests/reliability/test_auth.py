"""Who may read and subscribe: peers without the key, peers with a key pair of their own,
subscription floods and tick amplification, each tried by a real ZeroMQ peer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import NannyProcess, history, wait_for
from jupyter_client.connect import write_connection_file
from reliability.support import IPYKERNEL, add_kernel, rss, run

from nanny_io.discovery import load_connection_info
from nanny_io.logchannel import GREETING_SPACING
from nanny_io.zap import log_keypair, secure_client
from nanny_io_proto.connection_files import NannyConnectionInfo
from nanny_io_proto.logrecords import Tick, decode_log_message
from nanny_io_proto.replay import ReplayRequest, encode_replay_request
from nanny_io_proto.streams import Stream

MiB = 2**20
#: How long a hostile peer listens for anything the nanny sends it.
LISTEN = 3.0


def _marker(nanny: NannyProcess, kc: Any, text: str) -> None:
    """The kernel writes ``text`` to stdout and the log FIFO; wait until it is stored."""
    run(
        kc,
        "import os\n"
        f"os.write(1, b'{text}\\n')\n"
        "fd = os.open(os.environ['JUPYTER_KERNEL_LOG'], os.O_WRONLY)\n"
        f"os.write(fd, b'{text}\\n'); os.close(fd)",
    )
    wait_for(
        lambda: (
            {r.data for r in history(nanny, last=2, streams=[Stream.STDOUT, Stream.LOG])}
            == {f"{text}\n".encode()}
        ),
        15,
        f"{text!r} stored",
    )


def _received(sockets: list[zmq.Socket[Any]], seconds: float) -> list[list[bytes]]:
    """Every message any of ``sockets`` receives within ``seconds``."""
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    got: list[list[bytes]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(int(left * 1000) + 1):
            got.append(sock.recv_multipart())
    return got


def _socket(ctx: zmq.Context[Any], kind: int, **options: Any) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.linger = 0
    for name, value in options.items():
        setattr(sock, name, value)
    return sock


@pytest.mark.timeout(90)
def test_only_key_holders_read_the_log(jupyter_env, nanny_factory) -> None:
    """A plain SUB (NULL mechanism), a SUB with a fresh key pair that knows the server's
    public key (as if it had leaked) and a plain replay DEALER read nothing, while the
    nanny's own client reads every line."""
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    kc = nanny.client()
    info = load_connection_info(nanny.connection_file)
    server_public, _ = log_keypair(info) or (b"", b"")
    ctx = zmq.Context()
    try:
        plain = _socket(ctx, zmq.SUB)
        plain.subscribe(b"")
        plain.connect(info.url("log"))
        public, secret = zmq.curve_keypair()
        stranger = _socket(
            ctx,
            zmq.SUB,
            curve_publickey=public,
            curve_secretkey=secret,
            curve_serverkey=server_public,
        )
        stranger.subscribe(b"")
        stranger.connect(info.url("log"))
        replay = _socket(ctx, zmq.DEALER)
        replay.connect(info.url("log_replay"))
        replay.send_multipart(
            encode_replay_request(ReplayRequest("r1", "n1", since_seq=1), info.make_signer())
        )
        _marker(nanny, kc, "secret line")
        assert _received([plain, stranger, replay], LISTEN) == []
        # the key holder's view is intact
        assert b"secret line\n" in [r.data for r in history(nanny, streams=[Stream.STDOUT])]
    finally:
        ctx.destroy(linger=0)
    assert "Traceback" not in nanny.stderr


def _curve_connection_file(path: Path) -> Path:
    """A connection file with CurveZMQ keys, as jupyter_client's transport_encryption
    provisions one; the nanny adopts it."""
    public, secret = zmq.curve_keypair()
    write_connection_file(
        str(path),
        ip="127.0.0.1",
        key=b"k-" + public[:8],
        curve_publickey=public,
        curve_secretkey=secret,
    )
    return path


@pytest.mark.timeout(120)
def test_curve_clients_need_the_connection_key_pair(jupyter_env, nanny_factory, tmp_path) -> None:
    """With CurveZMQ keys in the connection info, a client with a fresh key pair and the
    server's public key gets nothing from iopub, control or the log channel; unmodified
    jupyter_client (which holds the connection's pair) works on every channel, heartbeat
    included."""
    jupyter_env.add_kernelspec("curve", IPYKERNEL, metadata={"supported_encryption": ["curve"]})
    path = _curve_connection_file(tmp_path / "kernel-curve.json")
    nanny = nanny_factory("curve", "-q", "--connection-file", str(path))
    kc = nanny.client()
    info = load_connection_info(nanny.connection_file)
    assert isinstance(info, NannyConnectionInfo) and info.curve_publickey
    server = info.curve_publickey.encode()
    ctx = zmq.Context()
    try:
        public, secret = zmq.curve_keypair()
        keys = {"curve_publickey": public, "curve_secretkey": secret, "curve_serverkey": server}
        iopub = _socket(ctx, zmq.SUB, **keys)
        iopub.subscribe(b"")
        iopub.connect(info.url("iopub"))
        control = _socket(ctx, zmq.DEALER, **keys)
        control.connect(info.url("control"))
        request = kc.session.msg("kernel_info_request")
        kc.session.send(control, request)  # signed with the key: only CURVE stands in the way
        log = _socket(ctx, zmq.SUB, **keys)
        log.subscribe(b"")
        log.connect(info.url("log"))
        _marker(nanny, kc, "curve line")
        assert _received([iopub, control, log], LISTEN) == []
        # jupyter_client: shell, iopub, control, heartbeat (a fresh key pair of its own there)
        reply = run(kc, "print('through curve')")
        assert reply["status"] == "ok"
        msg_id = kc.kernel_info()
        assert kc.get_shell_msg(timeout=10)["parent_header"]["msg_id"] == msg_id
        kc.control_channel.send(kc.session.msg("kernel_info_request"))
        assert kc.get_control_msg(timeout=10)["msg_type"] == "kernel_info_reply"
        wait_for(kc.is_alive, 10, "the heartbeat answered through CurveZMQ")
        assert b"curve line\n" in [r.data for r in history(nanny, streams=[Stream.STDOUT])]
    finally:
        ctx.destroy(linger=0)


FLOOD_TOPICS = 3000
TOPIC = 4096


@pytest.mark.timeout(120)
def test_an_unauthenticated_subscription_flood_costs_a_fixed_amount(
    jupyter_env, nanny_factory
) -> None:
    """3 000 subscriptions with distinct 4 KiB topics from a peer without the key, and 200
    such peers connected at once: the nanny's RSS grows by less than 16 MiB (it grew by
    about 600 MiB when subscriptions reached the socket), and it keeps serving."""
    nanny = nanny_factory(add_kernel(jupyter_env), "-q", "--no-spill")
    kc = nanny.client()
    info = load_connection_info(nanny.connection_file)
    pid = nanny.proc.pid
    _marker(nanny, kc, "before")
    before = rss(pid)
    ctx = zmq.Context()
    try:
        flooder = _socket(ctx, zmq.SUB, sndhwm=0)
        flooder.connect(info.url("log"))
        for i in range(FLOOD_TOPICS):
            flooder.subscribe(b"%08d" % i + b"x" * (TOPIC - 8))
        crowd = []
        for _ in range(200):
            peer = _socket(ctx, zmq.SUB)
            peer.subscribe(b"")
            peer.connect(info.url("log"))
            crowd.append(peer)
        assert _received([flooder, *crowd], LISTEN) == []
        after = rss(pid)
        print(f"nanny RSS {before / MiB:.1f} MiB before the flood, {after / MiB:.1f} MiB after")
        assert after - before < 16 * MiB
        _marker(nanny, kc, "after")  # still serving its own client
    finally:
        ctx.destroy(linger=0)


@pytest.mark.timeout(120)
def test_subscriptions_do_not_multiply_ticks_to_others(jupyter_env, nanny_factory) -> None:
    """A key holder subscribes 20 000 times; a bystander still gets about one tick a
    second plus at most twenty greetings a second, not a tick per subscription."""
    nanny = nanny_factory(add_kernel(jupyter_env), "-q")
    nanny.client()
    info = load_connection_info(nanny.connection_file)
    signer = info.make_signer()
    ctx = zmq.Context()
    try:
        bystander = _socket(ctx, zmq.SUB, rcvhwm=0)
        bystander.subscribe(b"tick")
        secure_client(bystander, info, "log")
        bystander.connect(info.url("log"))
        assert bystander.poll(5000), "the bystander was never greeted"
        bystander.recv_multipart()
        flooder = _socket(ctx, zmq.XSUB, sndhwm=0)
        secure_client(flooder, info, "log")
        flooder.connect(info.url("log"))
        t0 = time.monotonic()
        for _ in range(20_000):
            flooder.send(b"\x01")  # subscribe to everything, again and again
        ticks = [decode_log_message(m, signer) for m in _received([bystander], LISTEN)]
        elapsed = time.monotonic() - t0
        assert all(isinstance(t, Tick) for t in ticks)
        allowed = int(elapsed / GREETING_SPACING) + int(elapsed) + 2
        print(f"{len(ticks)} ticks to the bystander in {elapsed:.1f} s (at most {allowed})")
        assert 1 <= len(ticks) <= allowed
    finally:
        ctx.destroy(linger=0)
