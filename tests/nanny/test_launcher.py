"""Kernelspec reading: what the nanny takes from kernel.json, and the JEP's top-level key."""

from __future__ import annotations

import sys

from nanny_io.launcher import find_kernelspec, format_argv, kernel_env


def test_capture_opt_in_under_metadata(jupyter_env) -> None:
    jupyter_env.add_kernelspec(
        "cap",
        [sys.executable, "-c", "pass"],
        metadata={"capture_stdstreams": True},
        interrupt_mode="message",
    )
    spec = find_kernelspec("cap")
    assert spec.capture_stdstreams is True
    assert spec.interrupt_mode == "message"


def test_the_jeps_top_level_key_is_honoured_without_a_warning(jupyter_env) -> None:
    # pytest runs with filterwarnings=error: a KernelSpec warning would fail this test
    jupyter_env.add_kernelspec("jep", [sys.executable, "-c", "pass"], capture_stdstreams=True)
    assert find_kernelspec("jep").capture_stdstreams is True


def test_metadata_wins_over_the_top_level_key(jupyter_env) -> None:
    jupyter_env.add_kernelspec(
        "both",
        [sys.executable, "-c", "pass"],
        capture_stdstreams=True,
        metadata={"capture_stdstreams": False},
    )
    assert find_kernelspec("both").capture_stdstreams is False


def test_argv_and_env_are_filled_in(jupyter_env, monkeypatch) -> None:
    monkeypatch.setenv("HOME_FOR_TEST", "/x")
    path = jupyter_env.add_kernelspec(
        "fill",
        ["python", "-f", "{connection_file}", "--res={resource_dir}"],
        env={"A": "${HOME_FOR_TEST}/a", "PYTHONUNBUFFERED": "0"},
    )
    spec = find_kernelspec("fill")
    argv = format_argv(spec, "/tmp/k.json")
    assert argv == [sys.executable, "-f", "/tmp/k.json", f"--res={path}"]
    env = kernel_env(spec, {"JUPYTER_KERNEL_LOG": "/tmp/fifo"})
    assert env["A"] == "/x/a"
    assert env["PYTHONUNBUFFERED"] == "0"  # the kernelspec's choice is kept
    assert env["JUPYTER_KERNEL_LOG"] == "/tmp/fifo"
