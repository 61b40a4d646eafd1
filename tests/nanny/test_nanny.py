"""The nanny with real ipykernel processes, real sockets and unmodified jupyter_client clients."""

from __future__ import annotations

import os
import signal
import stat
import sys
import time

import psutil
import pytest
import zmq
from helpers import (
    NannyProcess,
    execute_then_exit,
    gone,
    iopub_until,
    reply_to,
    start_sleeping_cell,
    wait_gone,
)
from jupyter_client.session import Session
from zmq.utils.monitor import recv_monitor_message

pytestmark = pytest.mark.timeout(90)


def _execute(kc, code: str, timeout: float = 30) -> tuple[dict, str]:
    """Run ``code``; return the execute_reply content and everything printed on stdout."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], "".join(out)


def _control(kc, msg_type: str, content: dict, timeout: float = 10) -> dict:
    msg = kc.session.msg(msg_type, content)
    kc.control_channel.send(msg)
    while True:
        reply = kc.control_channel.get_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply


def _wait_death(kc) -> tuple[dict, dict]:
    seen = iopub_until(
        kc, lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "dead"
    )
    died = [m for m in seen if m["msg_type"] == "kernel_died"]
    assert died, f"no kernel_died before status dead: {[m['msg_type'] for m in seen]}"
    return died[-1], seen[-1]


def test_execute_through_the_nanny_and_files_are_private(nanny: NannyProcess) -> None:
    kc = nanny.client()
    reply, out = _execute(kc, "print(6 * 7)")
    assert reply["status"] == "ok"
    assert out == "42\n"
    assert kc.is_alive()
    mode = stat.S_IMODE(os.stat(nanny.connection_file).st_mode)
    assert mode == 0o600
    private = [p for p in nanny.connection_file.parent.iterdir() if p.name.startswith("nanny-io-")]
    assert len(private) == 1
    assert stat.S_IMODE(private[0].stat().st_mode) == 0o700
    assert stat.S_IMODE((private[0] / "kernel.json").stat().st_mode) == 0o600
    state = nanny.wait_status("running")
    assert state["incarnation"] == 1


def test_interrupt_request_stops_a_sleeping_cell(nanny: NannyProcess) -> None:
    kc = nanny.client()
    msg_id = start_sleeping_cell(kc)
    reply = _control(kc, "interrupt_request", {})
    assert reply["content"]["status"] == "ok"
    shell = reply_to(kc, msg_id, timeout=15)
    assert shell["content"]["ename"] == "KeyboardInterrupt"


def test_signal_request_reaches_a_handler(nanny: NannyProcess) -> None:
    kc = nanny.client()
    _execute(
        kc,
        "import signal, threading\ngot = threading.Event()\n"
        "signal.signal(signal.SIGUSR1, lambda *a: got.set())",
    )
    reply = _control(kc, "signal_request", {"signum": "SIGUSR1"})
    assert reply["content"] == {
        "status": "ok",
        "signum": int(signal.SIGUSR1),
        "signal_name": "SIGUSR1",
    }
    _, out = _execute(kc, "print(got.wait(10))")
    assert out == "True\n"


def test_unknown_signal_gets_an_error_reply(nanny: NannyProcess) -> None:
    kc = nanny.client()
    reply = _control(kc, "signal_request", {"signum": "SIGNOPE"})
    assert reply["content"]["status"] == "error"
    assert "SIGNOPE" in reply["content"]["evalue"]
    assert _execute(kc, "1")[0]["status"] == "ok"


def test_exit_code_is_reported_with_dead_status_parented_to_the_cell(
    nanny: NannyProcess, tmp_path
) -> None:
    kc = nanny.client()
    msg_id = execute_then_exit(kc, tmp_path, "import sys; print('going', file=sys.stderr)", 7)
    died, dead = _wait_death(kc)
    assert died["content"]["exit_code"] == 7
    assert died["content"]["signal"] is None
    assert died["content"]["incarnation"] == 1
    assert "code 7" in died["content"]["reason"]
    assert died["parent_header"]["msg_id"] == msg_id
    assert dead["parent_header"]["msg_id"] == msg_id
    assert nanny.wait_status("dead")["status"] == "dead"


def test_sigkill_of_the_kernel_is_reported(nanny: NannyProcess) -> None:
    kc = nanny.client()
    kernel_pid = nanny.state()["kernel_pid"]
    os.kill(kernel_pid, signal.SIGKILL)
    died, _ = _wait_death(kc)
    assert died["content"]["signal"] == signal.SIGKILL
    assert died["content"]["signal_name"] == "SIGKILL"
    assert "SIGKILL" in died["content"]["reason"]
    assert died["content"]["exit_code"] is None


def test_restart_keeps_the_client_and_resets_state(nanny: NannyProcess) -> None:
    kc = nanny.client()
    _execute(kc, "x = 1")
    first_pid = nanny.state()["kernel_pid"]
    reply = _control(kc, "shutdown_request", {"restart": True}, timeout=30)
    assert reply["content"]["status"] == "ok"
    restarted = iopub_until(kc, lambda m: m["msg_type"] == "kernel_restarted")[-1]
    assert restarted["content"]["incarnation"] == 2
    reply, out = _execute(kc, "print('x' in globals())")
    assert reply["status"] == "ok"
    assert out == "False\n"
    assert gone(first_pid)
    assert nanny.state()["incarnation"] == 2


def test_restart_after_a_crash(nanny: NannyProcess) -> None:
    kc = nanny.client()
    kc.execute("import os; os._exit(3)")
    _wait_death(kc)
    _control(kc, "shutdown_request", {"restart": True}, timeout=30)
    iopub_until(kc, lambda m: m["msg_type"] == "kernel_restarted")
    assert _execute(kc, "print('back')")[1] == "back\n"


GRANDCHILD = (
    "import subprocess, sys\n"
    "code = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'\n"
    "p = subprocess.Popen([sys.executable, '-c', code], start_new_session=True)\n"
    "print(p.pid)\n"
)


def _grandchild(kc) -> int:
    reply, out = _execute(kc, GRANDCHILD)
    assert reply["status"] == "ok"
    pid = int(out.strip())
    assert not gone(pid)
    return pid


def test_shutdown_leaves_no_process_behind(nanny: NannyProcess) -> None:
    kc = nanny.client()
    grandchild = _grandchild(kc)
    tree = nanny.tree_pids()
    reply = _control(kc, "shutdown_request", {"restart": False}, timeout=30)
    assert reply["content"]["status"] == "ok"
    assert nanny.proc.wait(30) == 0
    assert wait_gone([grandchild, *tree], timeout=10) == []
    assert not nanny.connection_file.exists()


def test_sigkill_of_the_nanny_leaves_no_process_behind(nanny: NannyProcess) -> None:
    kc = nanny.client()
    grandchild = _grandchild(kc)
    tree = nanny.tree_pids()
    assert len(tree) >= 3  # guardian, kernel, grandchild
    os.kill(nanny.proc.pid, signal.SIGKILL)
    nanny.proc.wait(10)
    assert wait_gone([grandchild, *tree], timeout=10) == []


def test_restart_kills_the_previous_tree(nanny: NannyProcess) -> None:
    kc = nanny.client()
    grandchild = _grandchild(kc)
    _control(kc, "shutdown_request", {"restart": True}, timeout=30)
    iopub_until(kc, lambda m: m["msg_type"] == "kernel_restarted")
    assert gone(grandchild)


def test_forged_and_garbage_control_messages_change_nothing(nanny: NannyProcess) -> None:
    kc = nanny.client()
    msg_id = kc.execute("import time; time.sleep(3); print('finished')")
    iopub_until(kc, lambda m: m["msg_type"] == "execute_input")
    info = kc.get_connection_info()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://{info['ip']}:{info['control_port']}")
    forger = Session(key=b"not-the-key")
    unsigned = Session(key=b"")
    for _ in range(20):
        forger.send(sock, "interrupt_request", {})
        unsigned.send(sock, "shutdown_request", {"restart": False})
        sock.send_multipart([b"garbage", os.urandom(64)])
        sock.send_multipart([b"<IDS|MSG>", b"sig", b"{", b"}", b"[]", b"{}"])
    # a correctly signed message, replayed: the second copy must be refused
    real = kc.session.msg("signal_request", {"signum": "SIGCONT"})
    frames = kc.session.serialize(real)
    sock.send_multipart(frames)
    sock.send_multipart(frames)
    replies = []
    while sock.poll(2000):
        replies.append(sock.recv_multipart())
    sock.close()
    ctx.term()
    assert len(replies) == 1  # only the genuine signal_request was answered
    shell = reply_to(kc, msg_id, timeout=15)
    assert shell["content"]["status"] == "ok"  # not interrupted
    deadline = time.monotonic() + 5
    while nanny.state().get("rejected_messages", 0) < 80 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nanny.state()["rejected_messages"] >= 80
    assert _execute(kc, "print('still here')")[1] == "still here\n"


def test_heartbeat_is_answered_and_stops_while_the_kernel_is_dead(nanny: NannyProcess) -> None:
    kc = nanny.client()
    info = kc.get_connection_info()
    ctx = zmq.Context()

    def ping() -> bool:
        sock = ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.sndtimeo = 1000
        try:
            sock.connect(f"tcp://{info['ip']}:{info['hb_port']}")
            sock.send(b"ping")
            return bool(sock.poll(1000))
        except zmq.Again:
            return False
        finally:
            sock.close()

    try:
        assert ping()
        os.kill(nanny.state()["kernel_pid"], signal.SIGKILL)
        _wait_death(kc)
        assert not ping()
        _control(kc, "shutdown_request", {"restart": True}, timeout=30)
        iopub_until(kc, lambda m: m["msg_type"] == "kernel_restarted")
        assert ping()
    finally:
        ctx.term()


def test_unknown_kernel_name_lists_the_available_ones(jupyter_env) -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", "start", "no-such-kernel"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "no kernel named 'no-such-kernel'" in proc.stderr
    assert "python3" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["/nonexistent/kernel-binary", "{connection_file}"], "No such file"),
        (
            [
                sys.executable,
                "-c",
                "import sys; print('bad import: no module foo', file=sys.stderr); sys.exit(3)",
                "{connection_file}",
            ],
            "bad import: no module foo",
        ),
    ],
)
def test_a_kernel_that_fails_to_start_is_reported(jupyter_env, argv, expected) -> None:
    import subprocess

    jupyter_env.add_kernelspec("broken", argv)
    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", "start", "broken"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((jupyter_env.runtime / "nanny-io").glob("*.json"))


def test_sigterm_to_the_nanny_shuts_down_cleanly(nanny: NannyProcess) -> None:
    nanny.client()
    tree = nanny.tree_pids()
    nanny.proc.send_signal(signal.SIGTERM)
    assert nanny.proc.wait(30) == 0
    assert wait_gone(tree) == []
    assert not nanny.connection_file.exists()


def test_kernel_tree_is_in_its_own_process_group(nanny: NannyProcess) -> None:
    nanny.client()
    kernel = psutil.Process(nanny.state()["kernel_pid"])
    assert os.getpgid(kernel.pid) == kernel.pid
    assert os.getpgid(kernel.pid) != os.getpgid(nanny.proc.pid)
    assert kernel.environ().get("PYTHONUNBUFFERED") == "1"


def _connection_file_with_curve(path, kernel_name: str = "python3") -> tuple[str, str]:
    import json

    from nanny_io.launcher import free_tcp_ports

    public, secret = zmq.curve_keypair()
    ports = free_tcp_ports("127.0.0.1", 5)
    info = dict(
        zip(
            ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"),
            ports,
            strict=True,
        )
    )
    info.update(
        transport="tcp",
        ip="127.0.0.1",
        key="a-test-key",
        signature_scheme="hmac-sha256",
        kernel_name=kernel_name,
        curve_publickey=public.decode(),
        curve_secretkey=secret.decode(),
    )
    path.write_text(json.dumps(info))
    return public.decode(), secret.decode()


def test_curve_keys_in_the_connection_info_encrypt_frontend_sockets(nanny_factory, tmp_path):
    conn = tmp_path / "curve.json"
    public, _ = _connection_file_with_curve(conn)
    nanny = nanny_factory("python3", "--connection-file", str(conn))
    assert nanny.connection_file == conn
    kc = nanny.client()  # jupyter_client reads the keys and becomes a CURVE client
    assert _execute(kc, "print('secret')")[1] == "secret\n"
    info = kc.get_connection_info()
    assert info["curve_publickey"] in (public, public.encode())
    ctx = zmq.Context()
    plain = ctx.socket(zmq.REQ)
    plain.linger = 0
    plain.sndtimeo = 1500  # a REQ whose handshake was refused has no peer: send would block
    handshakes = (
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    )
    monitor = plain.get_monitor_socket(handshakes)
    try:
        plain.connect(f"tcp://127.0.0.1:{info['hb_port']}")
        try:
            plain.send(b"ping")
            sent = True
        except zmq.Again:  # refused before the ping could even leave: the REQ has no peer
            sent = False
        # Either way, the nanny refused the handshake (a plain client offers the NULL
        # mechanism to a CURVE server; libzmq reports a protocol error or, when the server
        # hangs up first, a failure without detail) and nothing came back.
        assert monitor.poll(5000), "no handshake event for the plain client"
        first = recv_monitor_message(monitor)
        assert first["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED, first
        if sent:
            assert not plain.poll(1500)  # a client without the keys gets nothing
        while monitor.poll(0):  # it retries, and is refused every time
            assert recv_monitor_message(monitor)["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        plain.disable_monitor()
        monitor.close()
        plain.close()
        ctx.term()


def test_binding_a_public_ip_without_curve_warns(nanny_factory):
    nanny = nanny_factory("python3", "--ip", "0.0.0.0")
    nanny.client()
    assert "without CurveZMQ" in nanny.stderr


def test_a_frontend_that_knows_no_kernel_died_still_sees_why(nanny: NannyProcess, tmp_path) -> None:
    kc = nanny.client()
    msg_id = execute_then_exit(kc, tmp_path, "os.write(2, b'about to fail\\n')", 4)
    seen = iopub_until(kc, lambda m: m["msg_type"] == "kernel_died")
    notices = [
        m for m in seen if m["msg_type"] == "stream" and "[nanny-io]" in m["content"]["text"]
    ]
    assert len(notices) == 1
    assert notices[0]["content"]["name"] == "stderr"
    assert notices[0]["parent_header"]["msg_id"] == msg_id
    assert "the kernel died: exited with code 4" in notices[0]["content"]["text"]
    assert "about to fail" in notices[0]["content"]["text"]  # its last words


def test_interrupt_mode_message_is_forwarded_to_the_kernel(jupyter_env, nanny_factory) -> None:
    jupyter_env.add_kernelspec(
        "msgint",
        [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        interrupt_mode="message",
    )
    nanny = nanny_factory("msgint")
    kc = nanny.client()
    msg_id = start_sleeping_cell(kc)
    reply = _control(kc, "interrupt_request", {})
    assert reply["content"]["status"] == "ok"
    assert reply["header"].get("username") != "nanny-io"  # the kernel answered, not the nanny
    shell = reply_to(kc, msg_id, timeout=15)
    assert shell["content"]["ename"] == "KeyboardInterrupt"
