"""Kernelspecs for gateway_provisioners' remote provisioners that run ``nanny-io launch``.

``nanny-io install SOURCE --remote distributed`` writes a kernelspec whose argv is
``nanny-io launch --kernel SOURCE`` followed by the launcher placeholders the provisioners
fill in (``{kernel_id}``, ``{port_range}``, ``{response_address}``, ``{public_key}``,
``{transport_encryption}``), for the DistributedProvisioner (SSH hosts). The container
provisioners run their own launch script on the server, which creates the pod or container:
for them the kernelspec carries gateway_provisioners' script, and ``nanny-io launch`` is the
container's command (Kubernetes: in the pod template; Docker: the image's, told the kernel's
name by ``NANNY_IO_KERNEL``).
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .launcher import KernelSpecError

#: --remote value -> (gateway_provisioners' provisioner name, its launch script's directory)
REMOTES: dict[str, tuple[str, str | None]] = {
    "distributed": ("distributed-provisioner", None),
    "kubernetes": ("kubernetes-provisioner", "kubernetes"),
    "docker": ("docker-provisioner", "docker"),
    "docker-swarm": ("docker-swarm-provisioner", "docker"),
}
#: What the provisioners substitute in argv (RemoteProvisionerBase.pre_launch).
LAUNCHER_ARGS = (
    "--kernel-id",
    "{kernel_id}",
    "--port-range",
    "{port_range}",
    "--response-address",
    "{response_address}",
    "--public-key",
    "{public_key}",
    "--transport-encryption",
    "{transport_encryption}",
)
#: Replaced by the kernelspec's directory once it is installed.
INSTALL_DIR = "${install_dir}"
_SCRIPTS = {"kubernetes": "launch_kubernetes.py", "docker": "launch_docker.py"}
_POD_TEMPLATE = "kernel-pod.yaml.j2"
#: Where the container's command goes in gateway_provisioners' pod template.
_POD_ANCHOR = '    name: "{{ kernel_pod_name }}"\n'


@dataclass(frozen=True)
class RemoteOptions:
    """``nanny-io install --remote ...``: which provisioner, and its settings."""

    remote: str
    hosts: tuple[str, ...] = ()
    image_name: str | None = None
    port_range: str | None = None
    launch_timeout: int | None = None
    authorized_users: tuple[str, ...] = ()
    unauthorized_users: tuple[str, ...] = ()
    launch_command: str | None = None  # how the host or the image runs nanny-io

    @property
    def provisioner(self) -> str:
        return REMOTES[self.remote][0]

    @property
    def in_container(self) -> bool:
        return REMOTES[self.remote][1] is not None

    def command(self) -> list[str]:
        """The command that starts ``nanny-io`` where the kernel runs."""
        if self.launch_command:
            return shlex.split(self.launch_command)
        if self.in_container:
            return ["nanny-io"]
        # As gateway_provisioners' SSH kernelspecs do: the hosts share this installation.
        return [sys.executable, "-m", "nanny_io"]


def check(opts: RemoteOptions) -> None:
    """Refuse settings that do not apply to the chosen provisioner."""
    if opts.remote not in REMOTES:
        raise KernelSpecError(f"unknown --remote {opts.remote!r}; use one of {sorted(REMOTES)}")
    if opts.hosts and opts.remote != "distributed":
        raise KernelSpecError("--remote-hosts applies to --remote distributed only")
    if opts.image_name and not opts.in_container:
        raise KernelSpecError("--image-name applies to the container provisioners only")
    if opts.in_container and not opts.image_name:
        raise KernelSpecError(f"--remote {opts.remote} needs --image-name (the kernel image)")


def _config(opts: RemoteOptions) -> dict[str, Any]:
    """The provisioner's ``config`` stanza, as gateway_provisioners' spec installers write it."""
    config: dict[str, Any] = {}
    if opts.hosts:
        config["remote_hosts"] = list(opts.hosts)
    if opts.image_name:
        config["image_name"] = opts.image_name
    if opts.port_range:
        config["port_range"] = opts.port_range
    if opts.launch_timeout:
        config["launch_timeout"] = opts.launch_timeout
    if opts.authorized_users:
        config["authorized_users"] = list(opts.authorized_users)
    if opts.unauthorized_users:
        config["unauthorized_users"] = list(opts.unauthorized_users)
    return config


def remote_spec(
    source: dict[str, Any], source_name: str, opts: RemoteOptions, display_name: str | None
) -> dict[str, Any]:
    """The kernel.json for ``opts.remote`` (container argv still holds ``${install_dir}``)."""
    check(opts)
    source_meta = source.get("metadata") or {}
    metadata: dict[str, Any] = {
        "kernel_provisioner": {"provisioner_name": opts.provisioner, "config": _config(opts)},
        "nanny_io_source": source_name,
        "nanny_io_remote": opts.remote,
    }
    for key in ("supported_encryption", "debugger"):  # the nanny passes both on
        if key in source_meta:
            metadata[key] = source_meta[key]
    script = _SCRIPTS.get(REMOTES[opts.remote][1] or "")
    if script is None:
        argv = [*opts.command(), "launch", "--kernel", source_name, *LAUNCHER_ARGS]
    else:
        argv = [sys.executable, f"{INSTALL_DIR}/scripts/{script}", *LAUNCHER_ARGS]
    label = display_name or f"{source.get('display_name') or source_name} (nanny-io, {opts.remote})"
    return {
        "argv": argv,
        "display_name": label,
        "language": source.get("language", ""),
        # The server interrupts with SIGINT on the communication port; the nanny applies the
        # source kernelspec's own interrupt mode.
        "interrupt_mode": "signal",
        # A Docker container's command comes from its image: `nanny-io launch` there reads the
        # kernel's name from here (the provisioners pass their environment on).
        "env": {"NANNY_IO_KERNEL": source_name} if opts.in_container else {},
        "metadata": metadata,
    }


def stage_files(opts: RemoteOptions, source_name: str, staging: Path) -> None:
    """Copy gateway_provisioners' launch script (and, for Kubernetes, its pod template with
    ``nanny-io launch`` as the container's command) into ``staging/scripts``."""
    launcher_dir = REMOTES[opts.remote][1]
    if launcher_dir is None:
        return
    try:
        import gateway_provisioners  # type: ignore[import-untyped]
    except ImportError:
        raise KernelSpecError(
            f"--remote {opts.remote} uses gateway_provisioners' launch script: "
            "pip install gateway_provisioners"
        ) from None
    scripts = Path(gateway_provisioners.__file__).parent / "kernel-launchers" / launcher_dir
    scripts /= "scripts"
    (staging / "scripts").mkdir(exist_ok=True)
    script = _SCRIPTS[launcher_dir]
    (staging / "scripts" / script).write_bytes((scripts / script).read_bytes())
    if launcher_dir == "kubernetes":
        template = (scripts / _POD_TEMPLATE).read_text()
        (staging / "scripts" / _POD_TEMPLATE).write_text(pod_template(template, opts, source_name))


def pod_template(template: str, opts: RemoteOptions, source_name: str) -> str:
    """gateway_provisioners' pod template, with ``nanny-io launch`` as the container command.

    The launcher's other arguments come from the environment launch_kubernetes.py gives the
    pod (KERNEL_ID, PORT_RANGE, RESPONSE_ADDRESS, PUBLIC_KEY, TRANSPORT_ENCRYPTION); its
    records go to the container's stdout, for the cluster's log collector.
    """
    if template.count(_POD_ANCHOR) != 1:
        raise KernelSpecError(
            "gateway_provisioners' pod template has changed shape: cannot place the "
            "container command in it (nanny-io supports gateway_provisioners 0.5)"
        )
    command = [*opts.command(), "launch", "--kernel", source_name, "--log-stdout", "json"]
    line = f"    command: {json.dumps(command)}\n"  # JSON is YAML: any string is safe
    return template.replace(_POD_ANCHOR, _POD_ANCHOR + line)


def finalize(install_dir: Path) -> None:
    """Put the kernelspec's final directory into its argv (known only once installed)."""
    path = install_dir / "kernel.json"
    spec = json.loads(path.read_text())
    spec["argv"] = [a.replace(INSTALL_DIR, str(install_dir)) for a in spec["argv"]]
    path.write_text(json.dumps(spec, indent=1) + "\n")
