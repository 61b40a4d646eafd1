"""A real ``jupyter lab`` server for the browser tests, isolated from the machine it runs on.

Every Jupyter and IPython directory is private, so no user's kernels, settings or workspaces
leak in; the environment's own directories (``sys.prefix``: JupyterLab's built app, the
notebook extension, the stock ``python3`` kernelspec) are still found. Every process the
server starts carries a marker in its environment, so the teardown finds even a kernel that
was orphaned, not only the server's live children.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from helpers import wait_for, wait_gone

ROOT = Path(__file__).resolve().parents[2]
#: The environment variable (and its value, per server) that tags the server's process tree.
MARKER = "NANNY_IO_BROWSER_TEST"
READY_TIMEOUT = 60.0
#: The news toast ("get notified about official Jupyter news?") would cover the notebook,
#: and checking for updates would reach out to the internet.
QUIET_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class JupyterServer:
    """A running server: its URL and token, its private directories, its REST API."""

    proc: subprocess.Popen[bytes]
    url: str
    token: str
    home: Path
    root_dir: Path
    env: dict[str, str]
    log_path: Path

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the REST API; the decoded JSON reply (None for an empty one)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            raw = reply.read()
        return json.loads(raw) if raw else None

    def create_notebook(self, name: str, kernel: str, sources: list[str]) -> str:
        """Save ``name`` with one code cell per source, bound to kernelspec ``kernel``."""
        import nbformat

        spec = self.api("GET", "/api/kernelspecs")["kernelspecs"][kernel]["spec"]
        notebook = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(source) for source in sources],
            metadata={
                "kernelspec": {
                    "name": kernel,
                    "display_name": spec["display_name"],
                    "language": spec["language"],
                }
            },
        )
        reply = self.api("PUT", f"/api/contents/{name}", {"type": "notebook", "content": notebook})
        return str(reply["path"])

    def session_kernel(self, path: str) -> dict[str, Any] | None:
        """The kernel model of the notebook's session, if it has one."""
        for session in self.api("GET", "/api/sessions"):
            if session["path"] == path:
                return dict(session["kernel"])
        return None

    def processes(self) -> list[psutil.Process]:
        """Every live process this server started, directly or not (orphans included)."""
        found = []
        for proc in psutil.process_iter():
            if proc.pid == self.proc.pid:
                continue
            try:
                if proc.environ().get(MARKER) == self.env[MARKER] and (
                    proc.status() != psutil.STATUS_ZOMBIE
                ):
                    found.append(proc)
            except psutil.Error:  # gone meanwhile, or not ours to read
                continue
        return found

    def shut_down_kernels(self, timeout: float = 30.0) -> list[psutil.Process]:
        """Shut every session and kernel down through the API, as a user closing them would;
        return the processes that outlived them."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")
        procs = self.processes()
        alive = set(wait_gone([p.pid for p in procs], timeout))
        return [p for p in procs if p.pid in alive]

    def stop(self, timeout: float = 30.0) -> list[psutil.Process]:
        """Ask the server to shut down (it stops its kernels first); return what survived."""
        procs = self.processes()
        try:
            self.api("POST", "/api/shutdown")
        except (OSError, urllib.error.URLError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"jupyter server ignored /api/shutdown for {timeout:g} s"
            ) from None
        alive = set(wait_gone([p.pid for p in procs + self.processes()], timeout))
        return [p for p in procs if p.pid in alive]


def private_env(home: Path) -> dict[str, str]:
    """This process's environment without any Jupyter or IPython setting, with private
    directories under ``home`` and this checkout first on the Python path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    pythonpath = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        HOME=str(home),
        PYTHONNOUSERSITE="1",  # nor ~/.local/{etc,share}/jupyter through the user site
        PYTHONPATH=os.pathsep.join(pythonpath),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        # In a virtualenv jupyter_core reads the environment's directories before the user's;
        # the private ones must come first, or Lab loads the nanny-io extension an earlier
        # `pip install` copied into the environment instead of this checkout's build.
        JUPYTER_PREFER_ENV_PATH="0",
        IPYTHONDIR=str(home / "ipython"),
    )
    env[MARKER] = secrets.token_hex(8)
    return env


def check_isolated(env: dict[str, str], home: Path) -> None:
    """Fail unless every Jupyter directory that exists is private or this environment's."""
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter", "--paths", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    paths = json.loads(proc.stdout)
    allowed = (home.resolve(), Path(sys.prefix).resolve())
    leaks = [
        p
        for p in paths["config"] + paths["data"]
        if Path(p).exists() and not any(Path(p).resolve().is_relative_to(a) for a in allowed)
    ]
    assert not leaks, f"jupyter directories from outside the test would be used: {leaks}"


def install_kernelspecs(env: dict[str, str]) -> None:
    """The nanny-wrapped ``python3`` spec, installed by the real CLI into the private data dir
    (``--user`` there), the way docs/quickstart.md installs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", "install", "python3", "--user", "--capture"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def install_jupyter_extensions(env: dict[str, str]) -> None:
    """This checkout's server extension and built JupyterLab extension
    (``nanny_io/labextension``), installed into the private directories as ``pip install``
    installs them into ``sys.prefix`` (the config file enabling the server extension, the
    extension's directory under ``labextensions``), by a link: the tests run the sources under
    test, not whatever an earlier ``pip install`` copied into the environment (Lab reads the
    private directories first)."""
    config = Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.d" / "nanny_io.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_bytes((ROOT / "jupyter-config" / config.parent.name / config.name).read_bytes())
    built = ROOT / "nanny_io" / "labextension"
    assert (built / "package.json").exists(), f"no built JupyterLab extension in {built}"
    link = Path(env["JUPYTER_DATA_DIR"]) / "labextensions" / "nanny-io"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(built, target_is_directory=True)


def quiet_lab_settings(env: dict[str, str]) -> None:
    settings = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings"
    for plugin, values in QUIET_SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def start_server(home: Path, log_path: Path) -> JupyterServer:
    """Start ``jupyter lab`` (which also serves Notebook 7's ``/notebooks``) and wait until
    its API answers with our token."""
    home.mkdir(parents=True, exist_ok=True)
    root_dir = home / "notebooks"
    root_dir.mkdir()
    env = private_env(home)
    check_isolated(env, home)
    install_kernelspecs(env)
    install_jupyter_extensions(env)
    quiet_lab_settings(env)
    token, port = secrets.token_hex(16), free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",  # CI containers run as root
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",  # the port we chose, or fail
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root_dir}",
                # window.jupyterapp: the tests read the command registry (is a command
                # enabled, and why not) as menus and the palette do
                "--LabApp.expose_app_in_browser=True",
            ],
            env=env,
            cwd=root_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = JupyterServer(proc, f"http://127.0.0.1:{port}", token, home, root_dir, env, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {proc.returncode}; see {log_path}")
        try:
            return server.api("GET", "/api/status") is not None
        except (OSError, urllib.error.URLError):
            return False

    try:
        wait_for(ready, READY_TIMEOUT, f"jupyter lab to answer on {server.url}", every=0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return server


def log_tail(server: JupyterServer, lines: int = 40) -> str:
    text = server.log_path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_kernel_state(server: JupyterServer, path: str, state: str, timeout: float) -> None:
    """Wait until the server reports the notebook's kernel in ``state``."""

    def reached() -> bool:
        kernel = server.session_kernel(path)
        return kernel is not None and kernel["execution_state"] == state

    try:
        wait_for(reached, timeout, f"the kernel of {path} to be {state}", every=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; server says {server.session_kernel(path)}") from None
