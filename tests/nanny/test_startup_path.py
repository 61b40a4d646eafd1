"""What runs before a kernel's spawn: ``start``'s quick argument parser (the same result
as argparse or none at all), the uuid without the uuid module, and the modules imported."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import uuid
from itertools import chain
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanny_io.cli import build_parser
from nanny_io.startup import parse_start_args, start_options, uuid4_text

pytestmark = pytest.mark.timeout(120)


def _argparse(argv: list[str]) -> dict[str, Any] | None:
    """What the full parser makes of ``argv``; None when it refuses it (or prints help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = vars(build_parser().parse_args(argv))
        except SystemExit:
            return None
    assert args.pop("func").__name__ == "cmd_start"
    return _comparable(args)


def _quick(argv: list[str]) -> dict[str, Any] | None:
    ns = parse_start_args(argv)
    return None if ns is None else _comparable(vars(ns))


def _comparable(args: dict[str, Any]) -> dict[str, Any]:
    """With each value and its type as text: a NaN equals a NaN, 1 differs from 1.0."""
    return {key: (type(value).__name__, repr(value)) for key, value in args.items()}


#: Command lines the quick parser takes: what the provisioner, the benchmarks and users run.
TAKEN = [
    ["start", "python3"],
    ["-v", "start", "python3", "-q"],
    ["--verbose", "start", "--quiet", "python3"],
    ["start", "python3", "--connection-file", "/tmp/k.json", "--kernel-id", "abc"],
    [
        "start",
        "python3-nanny",
        "--connection-file",
        "/run/kernel-1.json",
        "--kernel-id",
        "5e0d2c43-d3b2-4a5e-8e0c-3d1f1f1b2a7e",
        "--managed",
        "--startup-timeout=60.0",
        "--shutdown-grace=5.0",
        "--term-grace=2.0",
        "--ring-size=67108864",
        "--spill-size=67108864",
        "--no-store-iopub",
    ],
    ["start", "ir", "--ip", "0.0.0.0", "--transport", "ipc", "--rate-limit", "1M"],
    ["start", "python3", "--ring-size", "64M", "--spill-size=1g", "--no-spill"],
    ["start", "python3", "--store-iopub", "--transport=tcp", "--transport", "ipc"],
    ["start", "python3", "--ip="],
    ["start", "python3", "--kernel-id=-dash"],
    ["start", ""],
]

#: Command lines left to argparse: help, errors, abbreviations, values that look like options.
LEFT = [
    [],
    ["--version"],
    ["list"],
    ["start"],
    ["start", "-h"],
    ["start", "python3", "--help"],
    ["start", "python3", "ir"],
    ["start", "python3", "--conn", "x"],
    ["start", "python3", "--transport", "udp"],
    ["start", "python3", "--transport", "udp", "--transport", "tcp"],
    ["start", "python3", "--ring-size", "lots"],
    ["start", "python3", "--startup-timeout", "-1"],
    ["start", "python3", "--kernel-id"],
    ["start", "python3", "--kernel-id", "-x"],
    ["start", "python3", "--quiet=yes"],
    ["start", "python3", "-qv"],
    ["start", "python3", "-v"],
    ["start", "--", "python3"],
    ["start", "-", "python3"],
]


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_quick_parse_equals_argparse(argv: list[str]) -> None:
    quick = _quick(argv)
    assert quick is not None, "the quick parser should take this command line"
    assert quick == _argparse(argv)
    assert start_options(parse_start_args(argv)) == start_options(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", LEFT, ids=" ".join)
def test_quick_parse_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert _quick(argv) is None


_NAMES = ["--connection-file", "--ip", "--transport", "--kernel-id", "--shutdown-grace",
          "--term-grace", "--startup-timeout", "--ring-size", "--spill-size", "--rate-limit",
          "--ring", "--ip-address"]  # fmt: skip
_FLAGS = ["-q", "--quiet", "--no-spill", "--store-iopub", "--no-store-iopub", "--managed",
          "-v", "-h", "--", "-", "-qv", "--quiet=1"]  # fmt: skip
_VALUES = ["tcp", "ipc", "udp", "1", "-1", "2.5", "nan", "64M", "1g", "8kib", "x", "", "-x",
           "python3"]  # fmt: skip
_GOOD = {
    "--connection-file": ["/tmp/k.json", "k.json"],
    "--ip": ["127.0.0.1", "0.0.0.0", ""],
    "--transport": ["tcp", "ipc"],
    "--kernel-id": ["abc", "k-1"],
    "--shutdown-grace": ["1", "2.5", "nan", "1e3"],
    "--term-grace": ["0", " 3 "],
    "--startup-timeout": ["60", "inf"],
    "--ring-size": ["64M", "1g", "8kib", "100", "1.5k"],
    "--spill-size": ["0", "64MB"],
    "--rate-limit": ["1M", "10"],
}
_GOOD_PIECE = st.sampled_from(sorted(_GOOD)).flatmap(
    lambda name: st.sampled_from(_GOOD[name]).flatmap(
        lambda value: st.sampled_from([[name, value], [f"{name}={value}"]])
    )
)
_ANY_PIECE = st.one_of(
    st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)).map(list),
    st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)).map(lambda p: ["=".join(p)]),
    st.sampled_from(_FLAGS).map(lambda f: [f]),
    st.sampled_from(_VALUES).map(lambda v: [v]),
)
_PIECES = st.one_of(
    _GOOD_PIECE,
    _GOOD_PIECE,
    _GOOD_PIECE,
    st.sampled_from(_FLAGS[:6]).map(lambda f: [f]),
    _ANY_PIECE,
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(["-v", "-v", "--verbose", "--verb"]), max_size=2),
    st.sampled_from(["start", "start", "start", "list", "star"]),
    st.lists(_PIECES, max_size=5),
    st.lists(_PIECES, max_size=3),
)
def test_quick_parse_never_disagrees_with_argparse(
    top: list[str], verb: str, before: list[list[str]], after: list[list[str]]
) -> None:
    """Whatever the quick parser takes, argparse takes too, with the same result."""
    argv = [*top, verb, *chain(*before), "python3", *chain(*after)]
    quick = _quick(argv)
    if quick is not None:
        assert quick == _argparse(argv)


def test_uuid4_text_is_a_version_4_uuid() -> None:
    texts = {uuid4_text() for _ in range(200)}
    assert len(texts) == 200
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert parsed.hex == text.replace("-", "")


@pytest.mark.parametrize("entry", ["nanny_io.startup", "nanny_io.cli"])
def test_modules_before_the_spawn_stay_light(entry: str) -> None:
    """The modules on the path to a kernel's spawn import nothing heavy at import time
    (the nanny imports those while the kernel boots). ``python -m nanny_io start`` does
    not even load the rest of the CLI; the ``nanny-io`` script starts from nanny_io.cli."""
    code = (
        "import sys\n"
        f"import {entry}\n"
        "from nanny_io import startup, launcher, guardian, discovery\n"
        "startup.parse_start_args(['start', 'python3', '-q'])\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, timeout=60).stdout.split())  # fmt: skip
    heavy = {"argparse", "asyncio", "zmq", "psutil", "uuid", "platform", "hashlib", "hmac",
             "logging", "jupyter_client", "traitlets", "nanny_io.nanny",
             "nanny_io.gateway_cli"}  # fmt: skip
    if entry != "nanny_io.cli":
        heavy.add("nanny_io.cli")
    assert not heavy & loaded, f"imported before the spawn: {sorted(heavy & loaded)}"


@pytest.mark.parametrize("verbose", [False, True])
def test_start_logs_in_its_format_before_and_after_the_spawn(jupyter_env, verbose: bool) -> None:
    """The log is set up after the spawn, or by a warning before it: the same lines either
    way (the warning comes before the spawn, the timeout's message after it)."""
    jupyter_env.runtime.mkdir(mode=0o770)
    jupyter_env.runtime.chmod(0o770)  # group-writable: a warning, not a refusal
    jupyter_env.add_kernelspec("mute", [sys.executable, "-c", "import time; time.sleep(600)"])
    argv = [*(["-v"] if verbose else []), "start", "mute", "--startup-timeout", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "nanny_io", *argv, "--term-grace", "0.2", "--no-spill"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("[nanny-io WARNING] unsafe runtime dir: "), lines
    assert "can be written by its group" in lines[0]
    assert any(line.startswith("[nanny-io DEBUG] ") for line in lines) == verbose, lines
    error = "[nanny-io ERROR] kernel 'mute' did not answer kernel_info within 1 s"
    assert any(line.startswith(error) for line in lines), lines
