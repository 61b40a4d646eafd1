"""The kernel-launcher protocol of gateway_provisioners and Jupyter Enterprise Gateway.

A remote provisioner starts a *launcher* with ``--kernel-id``, ``--port-range``,
``--response-address`` and ``--public-key``. The launcher picks its ports, then sends its
connection info back to the response address, encrypted: a fresh AES key encrypts the JSON
(AES-ECB, PKCS#7 padding), the server's RSA public key wraps the AES key (PKCS#1 v1.5), and
the whole is a base64 JSON envelope ``{"version": 1, "key": ..., "conn_info": ...}``. The
connection info carries ``pid``, ``pgid``, ``comm_port`` and ``kernel_id`` besides the
standard keys. On the *communication port* the server then sends one JSON object per TCP
connection: ``{"signum": n}`` (0 asks whether the launcher is alive) or ``{"shutdown": 1}``.

This module is the pure part: parsing the launcher's arguments, building and encrypting the
response, and decoding communication-port requests. Keys and randomness are passed in. The
crypto library is gateway_provisioners' own (pycryptodomex, the ``nanny-io[gateway]`` extra)
and is imported only by the functions that encrypt or decrypt.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from .connection_files import NannyConnectionInfo
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "LAUNCHER_VERSION",
    "MAX_COMM_REQUEST",
    "BadCommRequest",
    "BadLauncherArgument",
    "BadLauncherResponse",
    "CommRequest",
    "CommRequestReader",
    "decode_comm_request",
    "decrypt_connection_info",
    "encode_comm_request",
    "encrypt_connection_info",
    "launcher_connection_info",
    "parse_port_range",
    "parse_response_address",
    "parse_transport_encryption",
    "public_key_der",
]

#: The payload version the launchers send (``LAUNCHER_VERSION`` in launch_ipykernel.py).
LAUNCHER_VERSION = 1
#: The largest communication-port request accepted; the provisioners send about 20 bytes.
MAX_COMM_REQUEST = 4096
#: Highest signal number a request may carry (the nanny checks it against its platform).
MAX_SIGNUM = 255
_AES_KEY_BYTES = 16
_DIGITS = re.compile(r"[0-9]{1,5}")


class BadLauncherArgument(RemoteProtocolError):
    """A launcher argument from the server (port range, response address, key) is invalid."""


class BadCommRequest(RemoteProtocolError):
    """Bytes on the communication port that are not a launcher request."""


class BadLauncherResponse(RemoteProtocolError):
    """A response payload that cannot be decrypted or decoded."""


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# --- launcher arguments --------------------------------------------------------------------


def parse_port_range(text: str | None) -> tuple[int, int]:
    """``"40000..41000"`` as ``(40000, 41000)``; ``(0, 0)`` (any port) for empty or ``0..0``.

    The bounds are inclusive, as in the launchers. A range must lie within 1024..65535.
    """
    if text is None or not text.strip():
        return 0, 0
    lower, sep, upper = text.strip().partition("..")
    if not sep or not _DIGITS.fullmatch(lower) or not _DIGITS.fullmatch(upper):
        raise BadLauncherArgument(f"port range must look like 40000..41000, got {text!r}")
    low, high = int(lower), int(upper)
    if (low, high) == (0, 0):
        return 0, 0
    if not 1024 <= low <= high <= 65535:
        raise BadLauncherArgument(
            f"port range {text!r} must lie within 1024..65535, lower bound first"
        )
    return low, high


def parse_response_address(text: str | None) -> tuple[str, int]:
    """``"10.0.0.5:8877"`` (or ``"[::1]:8877"``) as ``(host, port)``."""
    if not text:
        raise BadLauncherArgument("no response address (--response-address or RESPONSE_ADDRESS)")
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not _DIGITS.fullmatch(port) or not 0 < int(port) <= 65535:
        raise BadLauncherArgument(f"response address must look like HOST:PORT, got {text!r}")
    return host, int(port)


def parse_transport_encryption(text: str | None) -> str | None:
    """The ``--transport-encryption`` policy: ``"auto"``, ``"required"`` or None (off).

    Empty values, ``disabled`` and an unsubstituted ``{transport_encryption}`` placeholder (an
    older server) mean off, as in launch_ipykernel.py.
    """
    if text is None:
        return None
    policy = text.strip().lower()
    if not policy or policy == "disabled" or (policy.startswith("{") and policy.endswith("}")):
        return None
    if policy not in ("auto", "required"):
        raise BadLauncherArgument(
            f"transport encryption must be 'auto', 'required' or 'disabled', got {text!r}"
        )
    return policy


def public_key_der(text: str | None) -> bytes:
    """The server's RSA public key: base64 DER, as the provisioners pass it (a PEM body)."""
    if not text:
        raise BadLauncherArgument("no public key (--public-key or PUBLIC_KEY)")
    body = "".join(
        line
        for line in text.strip().splitlines()
        if line.strip() and not line.startswith("-----")  # tolerate a whole PEM
    )
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadLauncherArgument(f"public key is not base64: {exc}") from None
    if not der:
        raise BadLauncherArgument("public key is empty")
    return der


# --- the response ----------------------------------------------------------------------------


def launcher_connection_info(
    frontend: NannyConnectionInfo,
    *,
    pid: int,
    pgid: int,
    comm_port: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the launcher returns: the connection file's keys plus ``pid``, ``pgid``,
    ``comm_port`` and ``kernel_id`` (the nanny keys, log ports included, come along)."""
    for name, value in (("pid", pid), ("pgid", pgid), ("comm_port", comm_port)):
        if not _is_int(value) or value < 1:
            raise LocalProtocolError(f"{name} must be a positive int, got {value!r}")
    info = frontend.to_dict()
    info.update(extra or {})
    info.update(pid=pid, pgid=pgid, comm_port=comm_port, kernel_id=frontend.kernel_id)
    return info


def encrypt_connection_info(
    info: Mapping[str, Any],
    public_key: str,
    *,
    aes_key: bytes,
    randfunc: Callable[[int], bytes],
) -> bytes:
    """The payload sent to the response address, exactly as the stock launchers build it.

    ``aes_key`` (16 random bytes) and ``randfunc`` (random bytes for the RSA padding) come
    from the caller.
    """
    from Cryptodome.Cipher import AES, PKCS1_v1_5
    from Cryptodome.PublicKey import RSA
    from Cryptodome.Util.Padding import pad

    if type(aes_key) is not bytes or len(aes_key) != _AES_KEY_BYTES:
        raise LocalProtocolError(f"aes_key must be {_AES_KEY_BYTES} bytes")
    try:
        rsa_key = RSA.import_key(public_key_der(public_key))
    except (ValueError, IndexError, TypeError) as exc:
        raise BadLauncherArgument(f"public key is not an RSA public key: {exc}") from None
    try:
        plain = json.dumps(dict(info)).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"connection info must be JSON: {exc}") from exc
    conn_info = AES.new(aes_key, AES.MODE_ECB).encrypt(pad(plain, 16))
    wrapped = PKCS1_v1_5.new(rsa_key, randfunc=randfunc).encrypt(aes_key)
    payload = {
        "version": LAUNCHER_VERSION,
        "key": base64.b64encode(wrapped).decode(),
        "conn_info": base64.b64encode(conn_info).decode(),
    }
    return base64.b64encode(json.dumps(payload).encode("utf-8"))


def decrypt_connection_info(payload: bytes, private_key: bytes) -> dict[str, Any]:
    """The server's side: ``payload`` decrypted with the RSA ``private_key`` (PEM or DER).

    Raises only BadLauncherResponse (the key itself must be valid: a LocalProtocolError).
    """
    from Cryptodome.Cipher import AES, PKCS1_v1_5
    from Cryptodome.PublicKey import RSA
    from Cryptodome.Util.Padding import unpad

    try:
        rsa_key = RSA.import_key(private_key)
    except (ValueError, IndexError, TypeError) as exc:
        raise LocalProtocolError(f"not an RSA private key: {exc}") from None
    if not rsa_key.has_private():
        raise LocalProtocolError("decrypting needs the private key")
    try:
        envelope = json.loads(base64.b64decode(bytes(payload), validate=True))
        if not isinstance(envelope, dict) or envelope.get("version") != LAUNCHER_VERSION:
            raise BadLauncherResponse("not a version 1 launcher response")
        key_b64, info_b64 = envelope.get("key"), envelope.get("conn_info")
        if not isinstance(key_b64, str) or not isinstance(info_b64, str):
            raise BadLauncherResponse("launcher response lacks 'key' or 'conn_info'")
        aes_key = PKCS1_v1_5.new(rsa_key).decrypt(
            base64.b64decode(key_b64, validate=True), None, expected_pt_len=_AES_KEY_BYTES
        )
        if aes_key is None:
            raise BadLauncherResponse("the AES key does not decrypt with this private key")
        sealed = base64.b64decode(info_b64, validate=True)
        plain = unpad(AES.new(aes_key, AES.MODE_ECB).decrypt(sealed), 16)
        info = json.loads(plain.decode("utf-8"))
    except BadLauncherResponse:
        raise
    except (ValueError, TypeError, IndexError, RecursionError, binascii.Error) as exc:
        raise BadLauncherResponse(f"cannot decode launcher response: {exc}") from None
    if not isinstance(info, dict):
        raise BadLauncherResponse("the connection info is not a JSON object")
    return info


# --- the communication port ------------------------------------------------------------------


@dataclass(frozen=True)
class CommRequest:
    """One request on the communication port: a signal, a shutdown, or both (or neither)."""

    signum: int | None = None
    shutdown: bool = False

    def __post_init__(self) -> None:
        if self.signum is not None and not (
            _is_int(self.signum) and 0 <= self.signum <= MAX_SIGNUM
        ):
            raise LocalProtocolError(
                f"signum must be an int in 0..{MAX_SIGNUM}, got {self.signum!r}"
            )
        if not isinstance(self.shutdown, bool):
            raise LocalProtocolError(f"shutdown must be a bool, got {self.shutdown!r}")


def encode_comm_request(request: CommRequest) -> bytes:
    """The bytes a provisioner sends (``json.dumps`` of ``{"signum": n}`` / ``{"shutdown": 1}``)."""
    obj: dict[str, int] = {}
    if request.signum is not None:
        obj["signum"] = request.signum
    if request.shutdown:
        obj["shutdown"] = 1
    return json.dumps(obj).encode("utf-8")


def _signum(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not _is_int(value) or not 0 <= value <= MAX_SIGNUM:
        raise BadCommRequest(f"signum must be a signal number, got {value!r:.40}")
    return value


def decode_comm_request(data: bytes) -> CommRequest:
    """One whole request (everything the server sent before closing its side).

    Unknown keys are ignored, as the stock listener does. ``shutdown`` is a bool or an int
    (the provisioners send 1); ``signum`` an int or a string of digits. A connection that
    carried nothing (a TCP health check) is an empty request, as for the stock listener.
    """
    if len(data) > MAX_COMM_REQUEST:
        raise BadCommRequest(f"request of {len(data)} bytes; the limit is {MAX_COMM_REQUEST}")
    if not bytes(data).strip():
        return CommRequest()
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError
        raise BadCommRequest(f"not a UTF-8 JSON object: {exc}") from None
    if not isinstance(obj, dict):
        raise BadCommRequest(f"expected a JSON object, got {type(obj).__name__}")
    shutdown = obj.get("shutdown")
    if shutdown is not None and not isinstance(shutdown, int):
        raise BadCommRequest(f"shutdown must be 1 or 0, got {shutdown!r:.40}")
    return CommRequest(_signum(obj.get("signum")), bool(shutdown))


class CommRequestReader:
    """Incremental decoding of one request: ``feed`` chunks as they arrive, ``finish`` at EOF.

    ``feed`` raises BadCommRequest as soon as the request is over :data:`MAX_COMM_REQUEST`,
    so an endless sender costs at most that much memory.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        if len(self._buffer) + len(data) > MAX_COMM_REQUEST:
            self._buffer.clear()
            raise BadCommRequest(f"request longer than {MAX_COMM_REQUEST} bytes")
        self._buffer += data

    def finish(self) -> CommRequest:
        """The request the connection carried (the sender closed its side)."""
        data, self._buffer = bytes(self._buffer), bytearray()
        return decode_comm_request(data)
