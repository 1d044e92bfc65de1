"""The messages of the built-in ``ray.serve.RayServeAPIService``, encoded by hand.

Wire-compatible with Ray Serve's ``serve.proto``: ``ListApplicationsRequest {}``,
``ListApplicationsResponse { repeated string application_names = 1; }``,
``HealthzRequest {}``, ``HealthzResponse { string message = 1; }``. Hand-encoding
these four avoids shipping generated code (and a protobuf runtime) for them.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "SERVICE",
    "decode_strings",
    "encode_healthz",
    "encode_list_applications",
]

#: The service's full name (its methods: ``/ray.serve.RayServeAPIService/Healthz``, ...).
SERVICE = "ray.serve.RayServeAPIService"
LIST_APPLICATIONS = f"/{SERVICE}/ListApplications"
HEALTHZ = f"/{SERVICE}/Healthz"

_FIELD_1_LENGTH_DELIMITED = 0x0A  # field 1, wire type 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(value: str) -> bytes:
    data = value.encode()
    return bytes([_FIELD_1_LENGTH_DELIMITED]) + _varint(len(data)) + data


def encode_list_applications(names: Iterable[str]) -> bytes:
    """A ``ListApplicationsResponse`` with ``application_names``."""
    return b"".join(_string_field(name) for name in names)


def encode_healthz(message: str) -> bytes:
    """A ``HealthzResponse`` with ``message`` (empty: the field is left out, as protobuf does)."""
    return _string_field(message) if message else b""


def decode_strings(data: bytes) -> list[str]:
    """The values of string field 1 in ``data`` (the inverse of the encoders; other fields
    are skipped). Raises ValueError for malformed input."""
    values: list[str] = []
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        wire_type = key & 7
        if wire_type == 0:
            _, i = _read_varint(data, i)
        elif wire_type == 2:
            length, i = _read_varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated length-delimited field")
            if key >> 3 == 1:
                values.append(data[i : i + length].decode())
            i += length
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if i != len(data):
        raise ValueError("truncated field")
    return values


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
