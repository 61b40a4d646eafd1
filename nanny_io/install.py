"""``nanny-io install``: wrap an existing kernelspec so its kernels run under a nanny."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .launcher import KernelSpecError, get_kernel_spec

if TYPE_CHECKING:
    from .remote_specs import RemoteOptions

PROVISIONER = "nanny-io"
MARKER = " (nanny-io)"
#: ipykernel captures fd output itself by default, and echoes it to the real fd too: under
#: a capturing nanny every line would reach the notebook twice.
IPYKERNEL_NO_FD_CAPTURE = "--IPKernelApp.capture_fd_output=False"
#: Makes ipykernel write output delimiters, so every byte is attributed to its cell exactly
#: (extra_extensions adds to, rather than replaces, extensions configured elsewhere).
DELIMITER_EXTENSION = "--InteractiveShellApp.extra_extensions=nanny_io.kernelside"


@dataclass(frozen=True)
class InstallOptions:
    source: str
    name: str | None = None
    display_name: str | None = None
    user: bool = False
    prefix: str | None = None
    #: None keeps the source kernelspec's ``metadata.capture_stdstreams``.
    capture: bool | None = None
    remote: RemoteOptions | None = None  # a kernelspec for a gateway_provisioners provisioner


def _runs_this_python(argv: list[str]) -> bool:
    """Whether the kernel runs in this environment, where nanny_io can be imported."""
    first = argv[0] if argv else ""
    names = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return first in names or os.path.realpath(first) == os.path.realpath(sys.executable)


def _is_ipykernel(argv: list[str]) -> bool:
    return any("ipykernel" in arg for arg in argv)


def wrapped_spec(
    source: dict[str, Any], source_name: str, capture: bool, display_name: str | None = None
) -> dict[str, Any]:
    """The kernel.json of the wrapper: the source's argv, env and interrupt_mode, launched by
    the nanny-io provisioner, with ``metadata.capture_stdstreams`` as asked."""
    argv = list(source["argv"])
    if capture and _is_ipykernel(argv):
        if not any("capture_fd_output" in a for a in argv):
            argv.append(IPYKERNEL_NO_FD_CAPTURE)
        if _runs_this_python(argv) and not any(DELIMITER_EXTENSION in a for a in argv):
            argv.append(DELIMITER_EXTENSION)
    metadata = dict(source.get("metadata") or {})
    metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER, "config": {}}
    metadata["capture_stdstreams"] = capture
    metadata["nanny_io_source"] = source_name
    spec: dict[str, Any] = {
        "argv": argv,
        "display_name": display_name or (source.get("display_name") or source_name) + MARKER,
        "language": source.get("language", ""),
        "metadata": metadata,
    }
    for key in ("env", "interrupt_mode"):
        if source.get(key):
            spec[key] = source[key]
    return spec


def install(opts: InstallOptions) -> tuple[str, str]:
    """Install the wrapper kernelspec; returns (name, path)."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    source = get_kernel_spec(opts.source)
    name = opts.name or f"{opts.source}-nanny"
    capture = opts.capture
    if capture is None:  # no flag: keep the source's choice
        capture = (source.metadata or {}).get("capture_stdstreams") is True
    spec = wrapped_spec(source.to_dict(), opts.source, capture, opts.display_name)
    if opts.remote is not None:
        from . import remote_specs

        if opts.capture:
            raise KernelSpecError(
                "--capture is read on the kernel's host: there, install a capturing spec "
                f"(nanny-io install {opts.source} --capture) and name that one as the source"
            )
        name = opts.name or f"{opts.source}-{opts.remote.remote}"
        spec = remote_specs.remote_spec(
            source.to_dict(), opts.source, opts.remote, opts.display_name
        )
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / name
        # resources (logos, kernel.js, ...) come along; kernel.json is ours
        shutil.copytree(
            source.resource_dir,
            staging,
            ignore=shutil.ignore_patterns("kernel.json", "__pycache__"),
        )
        (staging / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        if opts.remote is not None:
            remote_specs.stage_files(opts.remote, opts.source, staging)
        path = ksm.install_kernel_spec(str(staging), name, user=opts.user, prefix=opts.prefix)
    if opts.remote is not None:
        remote_specs.finalize(Path(path))
    return name, path


def uninstall(name: str) -> str:
    """Remove a kernelspec made by ``install``; returns its path."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel:
        raise KernelSpecError(f"no kernel named {name!r}") from None
    provisioner = (spec.metadata or {}).get("kernel_provisioner", {}).get("provisioner_name")
    if provisioner != PROVISIONER and "nanny_io_remote" not in (spec.metadata or {}):
        raise KernelSpecError(
            f"kernel {name!r} does not run under nanny-io; remove it with "
            "'jupyter kernelspec remove' instead"
        )
    return str(ksm.remove_kernel_spec(name))
