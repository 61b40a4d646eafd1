"""Connection files: the frontend-facing one the nanny writes and the kernel-facing one.

Both are plain Jupyter connection files with the standard key names, so unmodified
jupyter_client frontends and unmodified kernels read them. The frontend-facing file adds
``kernel_id``, ``log_port``, ``log_replay_port`` and ``nanny_protocol_version``, which
Jupyter clients ignore. specs/protocol.md ("Connection files") is the authority.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from .errors import ConnectionFileError, LocalProtocolError
from .version import PROTOCOL_VERSION, is_compatible

if TYPE_CHECKING:
    from .signing import Signer

__all__ = [
    "CHANNELS",
    "NANNY_KEYS",
    "STANDARD_KEYS",
    "ConnectionInfo",
    "NannyConnectionInfo",
    "decode_connection_file",
    "encode_connection_file",
    "kernel_facing",
]

STANDARD_KEYS = (
    "transport",
    "ip",
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "key",
    "signature_scheme",
    "kernel_name",
)
#: Keys only the frontend-facing file has; ``nanny_protocol_version`` marks such a file.
NANNY_KEYS = ("kernel_id", "log_port", "log_replay_port", "nanny_protocol_version")
#: The standard Jupyter channels, in connection-file order.
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")

_PORT_KEYS = tuple(f"{c}_port" for c in CHANNELS)
_TRANSPORTS = frozenset({"tcp", "ipc"})
_MAX_TCP_PORT = 65535
# A CurveZMQ key in Z85 text form: 40 characters of the Z85 alphabet.
_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_WILDCARD_IPS = frozenset({"0.0.0.0", "*", "::", "[::]"})
_VERSION = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}")


def _digest_available(name: str) -> bool:
    # sha256 is always there; hashlib (its OpenSSL) is imported only to check another
    # name, since connection files are made before the kernel's spawn.
    if name == "sha256":
        return True
    import hashlib

    return name in hashlib.algorithms_available


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_port(value: object, transport: str) -> bool:
    # 0 means "not chosen yet", as in jupyter_client; ipc "ports" are file-name suffixes.
    return _is_int(value) and value >= 0 and (transport != "tcp" or value <= _MAX_TCP_PORT)


@dataclass(frozen=True)
class ConnectionInfo:
    """The standard Jupyter connection info: where a kernel's five channels are, and the key."""

    transport: str
    ip: str
    shell_port: int
    iopub_port: int
    stdin_port: int
    control_port: int
    hb_port: int
    key: str
    signature_scheme: str = "hmac-sha256"
    kernel_name: str = ""
    curve_publickey: str | None = None
    curve_secretkey: str | None = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise LocalProtocolError(problem)

    def _problem(self) -> str | None:
        """What is wrong with this info, or None; shared by construction and decoding."""
        if not isinstance(self.transport, str) or self.transport not in _TRANSPORTS:
            return f"transport must be 'tcp' or 'ipc', got {self.transport!r}"
        if not isinstance(self.ip, str) or not self.ip:
            return f"ip must be a non-empty string, got {self.ip!r}"
        for name in self._port_names():
            if not _is_port(getattr(self, name), self.transport):
                return f"{name} must be a {self.transport} port number, got {getattr(self, name)!r}"
        if not isinstance(self.key, str):
            return f"key must be a string, got {type(self.key).__name__}"
        scheme = self.signature_scheme
        kind, _, digest = scheme.partition("-") if isinstance(scheme, str) else ("", "", "")
        if kind != "hmac" or not _digest_available(digest):
            return f"unsupported signature_scheme {scheme!r}; use 'hmac-sha256'"
        if not isinstance(self.kernel_name, str):
            return f"kernel_name must be a string, got {self.kernel_name!r}"
        if (self.curve_publickey is None) != (self.curve_secretkey is None):
            return "curve_publickey and curve_secretkey must be given together"
        for name in ("curve_publickey", "curve_secretkey"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and _Z85_KEY.fullmatch(value)):
                return f"{name} must be a 40-character Z85 key"  # never echo a secret
        return None

    def _port_names(self) -> tuple[str, ...]:
        return _PORT_KEYS

    def to_dict(self) -> dict[str, Any]:
        """The connection file as a dict (curve keys only when set)."""
        d: dict[str, Any] = {name: getattr(self, name) for name in STANDARD_KEYS}
        if self.curve_publickey is not None:
            d["curve_publickey"] = self.curve_publickey
            d["curve_secretkey"] = self.curve_secretkey
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConnectionInfo:
        """Build from a parsed connection file; ConnectionFileError when invalid.

        Unknown keys are ignored, as jupyter_client does. Required: transport, ip, the five
        ports and key; signature_scheme defaults to hmac-sha256 and kernel_name to "".
        """
        try:
            return cls(**_fields_from_dict(cls, d))
        except LocalProtocolError as exc:
            raise ConnectionFileError(f"invalid connection file: {exc}") from exc

    def url(self, channel: str) -> str:
        """The ZeroMQ address of ``channel`` ("shell", "iopub", ...), as jupyter_client forms it."""
        name = f"{channel}_port"
        if name not in self._port_names():
            raise LocalProtocolError(f"unknown channel {channel!r}; use one of {self._channels()}")
        port = getattr(self, name)
        if self.transport == "tcp":
            return f"tcp://{self.ip}:{port}"
        return f"{self.transport}://{self.ip}-{port}"

    def _channels(self) -> list[str]:
        return [n.removesuffix("_port") for n in self._port_names()]

    def make_signer(self) -> Signer:
        """A Signer for this key and scheme (the key as UTF-8, as jupyter_client encodes it)."""
        from .signing import Signer

        return Signer(self.key.encode("utf-8"), self.signature_scheme)


@dataclass(frozen=True)
class NannyConnectionInfo(ConnectionInfo):
    """The frontend-facing file: a standard one plus the nanny's own keys."""

    kernel_id: str = ""
    log_port: int = 0  # PUB, see specs/log-channel.md; 0 = no log channel
    log_replay_port: int = 0  # ROUTER, see specs/log-channel.md; 0 = no replay
    nanny_protocol_version: str = PROTOCOL_VERSION

    def _problem(self) -> str | None:
        problem = ConnectionInfo._problem(self)
        if problem:
            return problem
        if not isinstance(self.kernel_id, str):
            return f"kernel_id must be a string, got {self.kernel_id!r}"
        version = self.nanny_protocol_version
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            return f"nanny_protocol_version must look like '1.0', got {version!r}"
        if not is_compatible(version):
            return (
                f"unsupported nanny_protocol_version {version!r}; "
                f"this side speaks {PROTOCOL_VERSION!r}"
            )
        return None

    def _port_names(self) -> tuple[str, ...]:
        return (*_PORT_KEYS, "log_port", "log_replay_port")

    def to_dict(self) -> dict[str, Any]:
        """The connection file as a dict: the standard keys plus the nanny keys."""
        d = ConnectionInfo.to_dict(self)
        d.update((name, getattr(self, name)) for name in NANNY_KEYS)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NannyConnectionInfo:
        """Build from a parsed frontend-facing file; ConnectionFileError when invalid."""
        try:
            return cls(**_fields_from_dict(cls, d))
        except LocalProtocolError as exc:
            raise ConnectionFileError(f"invalid connection file: {exc}") from exc

    def standard(self) -> ConnectionInfo:
        """The same connection info without the nanny keys."""
        return ConnectionInfo(**{f.name: getattr(self, f.name) for f in _fields(ConnectionInfo)})


def _fields(cls: type[ConnectionInfo]) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def _fields_from_dict(cls: type[ConnectionInfo], d: Mapping[str, Any]) -> dict[str, Any]:
    """Pick ``cls``'s fields from ``d``; ConnectionFileError when a required one is missing."""
    if not isinstance(d, Mapping):
        raise ConnectionFileError(f"connection info must be a JSON object, got {type(d).__name__}")
    missing = [
        f.name
        for f in _fields(cls)
        if f.name not in d
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConnectionFileError(f"connection file lacks {', '.join(map(repr, missing))}")
    return {f.name: d[f.name] for f in _fields(cls) if f.name in d}


def encode_connection_file(info: ConnectionInfo) -> bytes:
    """The file's bytes: JSON with indent 1, sorted keys and a trailing newline."""
    if not isinstance(info, ConnectionInfo):
        raise LocalProtocolError(f"expected ConnectionInfo, got {type(info).__name__}")
    return (json.dumps(info.to_dict(), indent=1, sort_keys=True) + "\n").encode("utf-8")


def decode_connection_file(data: bytes) -> ConnectionInfo | NannyConnectionInfo:
    """Parse a connection file: NannyConnectionInfo when it has ``nanny_protocol_version``.

    Raises only ConnectionFileError.
    """
    try:
        # utf-8-sig: tolerate a byte-order mark some editors add.
        obj = json.loads(bytes(data).decode("utf-8-sig"))
    except (ValueError, RecursionError, TypeError) as exc:  # incl. UnicodeDecodeError
        raise ConnectionFileError(f"connection file is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ConnectionFileError(
            f"connection file must hold a JSON object, not {type(obj).__name__}"
        )
    if "nanny_protocol_version" in obj:
        return NannyConnectionInfo.from_dict(obj)
    return ConnectionInfo.from_dict(obj)


def _all_ports(info: ConnectionInfo) -> dict[str, int]:
    names = info._port_names()
    return {name: getattr(info, name) for name in names}


def kernel_facing(
    frontend: NannyConnectionInfo,
    *,
    ip: str,
    control_port: int,
    iopub_port: int,
    hb_port: int,
    transport: str | None = None,
) -> ConnectionInfo:
    """The kernel-facing connection info for ``frontend``.

    The kernel binds shell and stdin itself at the frontend-facing addresses (those channels
    are direct); control, iopub and hb are private ports the nanny connects to. Key, scheme,
    kernel name and curve keys are the frontend's.
    """
    transport = frontend.transport if transport is None else transport
    if transport != frontend.transport:
        raise LocalProtocolError(
            f"kernel transport {transport!r} differs from the frontend's "
            f"{frontend.transport!r}; the kernel binds shell and stdin for frontends itself"
        )
    if ip != frontend.ip and not (transport == "tcp" and ip in _WILDCARD_IPS):
        raise LocalProtocolError(
            f"kernel ip {ip!r} must be the frontend's {frontend.ip!r} (or a wildcard): "
            "frontends reach the kernel's shell and stdin there"
        )
    private = {"control_port": control_port, "iopub_port": iopub_port, "hb_port": hb_port}
    taken = {port for port in _all_ports(frontend).values() if port}
    chosen = [port for port in private.values() if _is_int(port) and port]
    clash = taken.intersection(chosen)
    if clash or len(set(chosen)) != len(chosen):
        raise LocalProtocolError(
            f"private kernel ports {private!r} must be distinct and not frontend-facing "
            f"({sorted(taken)!r})"
        )
    return ConnectionInfo(
        transport=transport,
        ip=ip,
        shell_port=frontend.shell_port,
        iopub_port=iopub_port,
        stdin_port=frontend.stdin_port,
        control_port=control_port,
        hb_port=hb_port,
        key=frontend.key,
        signature_scheme=frontend.signature_scheme,
        kernel_name=frontend.kernel_name,
        curve_publickey=frontend.curve_publickey,
        curve_secretkey=frontend.curve_secretkey,
    )
