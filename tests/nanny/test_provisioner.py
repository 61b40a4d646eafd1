"""The nanny-io provisioner with unmodified Jupyter peers: KernelManager, nbclient,
jupyter_kernel_test's conformance suite, and a non-Python kernel (bash_kernel)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import psutil
import pytest
from helpers import reply_to, start_sleeping_cell, wait_for, wait_gone

from nanny_io.discovery import state_path

pytestmark = pytest.mark.timeout(120)


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanny_io", "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def kernels(jupyter_env, monkeypatch):
    """A private data dir where ``nanny-io install --user`` puts wrapped kernelspecs."""
    data_dir = jupyter_env.root / "user-data"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data_dir))
    return data_dir / "kernels"


@contextlib.contextmanager
def _nanny_kernel(*install_args: str, log: logging.Handler | None = None) -> Iterator[tuple]:
    """A KernelManager running python3 under a nanny (``nanny-io install python3 --user``
    with ``install_args``) and a ready client; both shut down afterwards."""
    from jupyter_client import KernelManager

    assert _install("python3", "--user", *install_args).returncode == 0
    km = KernelManager(kernel_name="python3-nanny")
    if log is not None:
        km.log.addHandler(log)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        if log is not None:
            km.log.removeHandler(log)


def _tree(km) -> list[psutil.Process]:
    nanny = psutil.Process(km.provisioner.process.pid)
    return [nanny, *nanny.children(recursive=True)]


def test_install_wraps_a_kernelspec(kernels) -> None:
    proc = _install("python3", "--user", "--capture")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((kernels / "python3-nanny" / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "nanny-io"
    assert spec["metadata"]["capture_stdstreams"] is True
    assert "--IPKernelApp.capture_fd_output=False" in spec["argv"]
    assert "--InteractiveShellApp.extra_extensions=nanny_io.kernelside" in spec["argv"]
    assert spec["display_name"].endswith("(nanny-io)")
    assert spec["interrupt_mode"] == "signal"
    assert (kernels / "python3-nanny" / "logo-64x64.png").exists()  # resources copied
    proc = _install("python3", "--user", "--no-capture", "--name", "plain", "--display-name", "P")
    assert proc.returncode == 0, proc.stderr
    plain = json.loads((kernels / "plain" / "kernel.json").read_text())
    assert plain["metadata"]["capture_stdstreams"] is False
    assert plain["display_name"] == "P"
    assert not any("capture_fd_output" in a for a in plain["argv"])


def test_uninstall_removes_only_wrapped_specs(kernels) -> None:
    assert _install("python3", "--user").returncode == 0
    refused = subprocess.run(
        [sys.executable, "-m", "nanny_io", "uninstall", "python3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "does not run under nanny-io" in refused.stderr
    done = subprocess.run(
        [sys.executable, "-m", "nanny_io", "uninstall", "python3-nanny"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not (kernels / "python3-nanny").exists()


def test_install_unknown_source_lists_kernels(kernels) -> None:
    proc = _install("nope", "--user")
    assert proc.returncode == 1
    assert "no kernel named 'nope'" in proc.stderr and "python3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_kernel_manager_lifecycle_through_the_provisioner(kernels) -> None:
    from jupyter_client import KernelManager

    assert _install("python3", "--user").returncode == 0
    km = KernelManager(kernel_name="python3-nanny")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        assert type(km.provisioner).__name__ == "NannyProvisioner"
        # interrupt (interrupt_mode signal: the provisioner asks the nanny)
        msg_id = start_sleeping_cell(kc)
        km.interrupt_kernel()
        reply = reply_to(kc, msg_id, timeout=20)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        # restart: the same nanny runs the next incarnation; nothing of the old kernel survives
        nanny_pid = km.provisioner.process.pid
        old = [p for p in _tree(km) if p.pid != nanny_pid and p.ppid() != nanny_pid]
        km.restart_kernel()
        assert wait_gone([p.pid for p in old]) == []
        assert km.provisioner.process.pid == nanny_pid
        kc.wait_for_ready(timeout=60)
        assert kc.execute_interactive("x = 1", timeout=30)["content"]["status"] == "ok"
        # death: the manager learns it, with the exit details
        kc.execute("import os; os._exit(9)")
        deadline = time.monotonic() + 15
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not km.is_alive()
        assert km.provisioner.exit_details["exit_code"] == 9
        details = km.provisioner.exit_details
        assert "code 9" in details["reason"] and details["cause"] == "exited with code 9"
        assert details["oom"] is None and details["peak_memory"]["kernel"] > 0
        assert km.reason == f"kernel died: {details['reason']}"  # what jupyter_server says
        tree = _tree(km)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert wait_gone([p.pid for p in tree]) == []


def test_kill_leaves_no_process_behind(kernels) -> None:
    from jupyter_client import KernelManager

    assert _install("python3", "--user").returncode == 0
    km = KernelManager(kernel_name="python3-nanny")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kc.execute_interactive(
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'], "
        "start_new_session=True)",
        timeout=30,
    )
    tree = _tree(km)
    assert len(tree) >= 4  # nanny, guardian, kernel, grandchild
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    assert wait_gone([p.pid for p in tree]) == []


NOTEBOOK_CELLS = [
    "import os, subprocess\nos.write(1, b'c-level one\\n')",
    "subprocess.run(['echo', 'from a subprocess'], check=True)",
    "print('python level')",
    "os.write(2, b'c-level stderr\\n')",
]


def test_nbclient_puts_captured_output_in_the_right_cells(kernels, tmp_path) -> None:
    import nbformat
    from nbclient import NotebookClient

    assert _install("python3", "--user", "--capture").returncode == 0
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    NotebookClient(nb, kernel_name="python3-nanny", timeout=60).execute()

    def texts(cell, name):
        return "".join(
            o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == name
        )

    assert texts(nb.cells[0], "stdout") == "c-level one\n"
    assert texts(nb.cells[1], "stdout") == "from a subprocess\n"
    assert texts(nb.cells[2], "stdout") == "python level\n"
    assert texts(nb.cells[3], "stderr") == "c-level stderr\n"
    everything = [texts(c, n) for c in nb.cells for n in ("stdout", "stderr")]
    for line in ("c-level one", "from a subprocess", "c-level stderr"):
        assert sum(line in t for t in everything) == 1, f"{line!r} must appear in one cell"


def test_bash_kernel_runs_through_the_nanny(jupyter_env, kernels) -> None:
    pytest.importorskip("bash_kernel")
    from jupyter_client import KernelManager

    jupyter_env.add_kernelspec(
        "bash", [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"], language="bash"
    )
    assert _install("bash", "--user").returncode == 0
    km = KernelManager(kernel_name="bash-nanny")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out: list[str] = []
        reply = kc.execute_interactive(
            "echo hello from $0; echo $((6*7))",
            timeout=30,
            output_hook=lambda m: out.append(m["content"].get("text", "")),
        )
        assert reply["content"]["status"] == "ok"
        assert "42" in "".join(out)
        tree = _tree(km)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert wait_gone([p.pid for p in tree]) == []


def _conformance_env() -> tuple[str, dict[str, str]]:
    root = tempfile.mkdtemp(prefix="nanny-io-kt-")
    env = {
        "JUPYTER_DATA_DIR": os.path.join(root, "data"),
        "JUPYTER_RUNTIME_DIR": os.path.join(root, "runtime"),
        "IPYTHONDIR": os.path.join(root, "ipython"),  # a history of its own
    }
    return root, env


try:
    import jupyter_kernel_test as jkt
except ImportError:  # pragma: no cover
    jkt = None


if jkt is not None:

    class TestConformanceThroughTheProvisioner(jkt.KernelTests):
        """jupyter_kernel_test's suite, for ipykernel launched by the nanny-io provisioner."""

        kernel_name = "python3-nanny"
        language_name = "python"
        file_extension = ".py"
        code_hello_world = "print('hello, world')"
        code_stderr = "import sys; print('test', file=sys.stderr)"
        completion_samples = [{"text": "zi", "matches": {"zip"}}]
        complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n"]
        incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
        code_page_something = "zip?"
        code_generate_error = "raise"
        code_execute_result = [{"code": "1+2+3", "result": "6"}]
        code_display_data = [
            {
                "code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
                "mime": "text/html",
            }
        ]
        code_history_pattern = "1?2*"
        supported_history_operations = ("tail", "search")
        code_inspect_sample = "zip"
        code_clear_output = "from IPython.display import clear_output; clear_output()"

        @classmethod
        def setUpClass(cls) -> None:
            cls._root, env = _conformance_env()
            cls._saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            proc = _install("python3", "--user")
            assert proc.returncode == 0, proc.stderr
            super().setUpClass()

        @classmethod
        def tearDownClass(cls) -> None:
            try:
                super().tearDownClass()
            finally:
                for key, value in cls._saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                shutil.rmtree(cls._root, ignore_errors=True)


class _Records(logging.Handler):
    """Every log record a KernelManager emits, for checking what the server log would say."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


def _tail_json(kernel_id: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", "tail", kernel_id, "--json", "-n", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_restart_after_a_death_continues_one_history_in_the_same_nanny(kernels) -> None:
    records = _Records()
    with _nanny_kernel("--capture", log=records) as (km, kc):
        nanny_pid = km.provisioner.process.pid
        kc.execute_interactive("import os; os.write(1, b'the last line before death\\n')")
        kc.execute("os._exit(3)")
        wait_for(lambda: not km.is_alive(), 15, "the manager to see the death")
        assert km.provisioner.exit_details["exit_code"] == 3
        # What jupyter_server's restarter does: restart now, on the same ports.
        km.restart_kernel(now=True)
        assert km.provisioner.process.pid == nanny_pid
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("print(6 * 7)", timeout=30)
        assert reply["content"]["status"] == "ok"
        assert km.is_alive()
        events = _tail_json(km.kernel_id)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    before = next(e for e in events if e["text"] == "the last line before death")
    died = next(e for e in events if (e.get("event") or {}).get("event") == "kernel_died")
    restarted = next(e for e in events if (e.get("event") or {}).get("event") == "kernel_restarted")
    assert before["incarnation"] == died["incarnation"] == 1
    assert before["seq"] < died["seq"] < restarted["seq"]
    assert restarted["event"]["incarnation"] == 2
    # The manager interrupts before it restarts, also a dead kernel: no error in its log.
    assert records.errors() == []
    assert wait_gone([nanny_pid]) == []


def test_a_requested_restart_keeps_the_nanny_and_its_ports(kernels) -> None:
    with _nanny_kernel() as (km, kc):
        nanny_pid, ports = km.provisioner.process.pid, km.ports
        kc.execute_interactive("x = 1")
        km.restart_kernel(now=False)  # a shutdown_request with restart, then the launch
        assert (km.provisioner.process.pid, km.ports) == (nanny_pid, ports)
        kc.wait_for_ready(timeout=60)
        # A new kernel process: the old one's variables are gone.
        reply = kc.execute_interactive("", user_expressions={"x": "'x' in dir()"}, timeout=30)
        assert reply["content"]["user_expressions"]["x"]["data"]["text/plain"] == "False"
        state = json.loads(state_path(km.kernel_id).read_text())
        assert (state["status"], state["incarnation"]) == ("running", 2)
    assert wait_gone([nanny_pid]) == []


def test_nbclient_dead_kernel_leaves_the_reason_in_the_cell(kernels) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    assert _install("python3", "--user", "--capture").returncode == 0
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nos._exit(3)")]
    client = NotebookClient(nb, kernel_name="python3-nanny", timeout=60)
    with pytest.raises(DeadKernelError):
        client.execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    assert "the kernel died: exited with code 3" in text


def test_provisioner_config_reaches_the_nanny(kernels) -> None:
    from jupyter_client import KernelManager

    assert _install("python3", "--user").returncode == 0
    path = kernels / "python3-nanny" / "kernel.json"
    spec = json.loads(path.read_text())
    spec["metadata"]["kernel_provisioner"]["config"] = {"startup_timeout": 45, "term_grace": 0.5}
    path.write_text(json.dumps(spec))
    km = KernelManager(kernel_name="python3-nanny")
    km.start_kernel()
    try:
        argv = psutil.Process(km.provisioner.process.pid).cmdline()
        assert "--startup-timeout=45.0" in argv and "--term-grace=0.5" in argv
        assert km.provisioner.startup_timeout == 45
    finally:
        km.shutdown_kernel(now=True)
