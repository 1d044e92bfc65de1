"""Encoding of messages into frames.

A frame on the wire is::

    u32 body_length | u8 kind | u64 request_id | u16 n_buffers
    | u64 buffer_length * n_buffers | pickle | buffers...

``body_length`` counts everything after itself. Kind and request id sit in a
fixed binary header, so a receiver always knows which request a frame belongs
to, even when its payload cannot be unpickled (that fails one request, never
the connection). The payload is pickled with protocol 5; large contiguous
buffers (numpy arrays, ``PickleBuffer``) travel out of band after the pickle,
without being copied into it. An empty payload decodes as ``None``. Objects
the standard pickler cannot handle, or that refer to ``__main__`` (the peer's
``__main__`` is not the user's script), are pickled with cloudpickle.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import cloudpickle

HEADER = struct.Struct("!IBQH")
BUFLEN = struct.Struct("!Q")
_PREFIX = struct.Struct("!BQH")  # the header without the length
#: Buffers smaller than this are pickled in band; copying them is cheaper than the bookkeeping.
OUT_OF_BAND_MIN_BYTES = 64 * 1024
_MAIN = b"__main__"


def _buffer_callback(buffers: list[pickle.PickleBuffer]) -> Any:
    def callback(buf: pickle.PickleBuffer) -> bool:
        if memoryview(buf).nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # serialize in band
        buffers.append(buf)
        return False

    return callback


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` in band only (for small blobs), by value where ``__main__`` is involved."""
    try:
        data = pickle.dumps(obj, protocol=5)
        if _MAIN not in data:
            return data
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def encode(payload: Any, kind: int = 0, req_id: int = 0) -> list[bytes | memoryview]:
    """Encode one frame, returned as a list of chunks to write in order."""
    if payload is None:
        return [HEADER.pack(_PREFIX.size, kind, req_id, 0)]
    buffers: list[pickle.PickleBuffer] = []
    try:
        body = pickle.dumps(payload, protocol=5, buffer_callback=_buffer_callback(buffers))
        by_value = _MAIN in body
    except (pickle.PicklingError, AttributeError, TypeError):
        by_value = True
    if by_value:
        buffers = []
        body = cloudpickle.dumps(payload, protocol=5, buffer_callback=_buffer_callback(buffers))
    if not buffers:
        header = HEADER.pack(len(body) + _PREFIX.size, kind, req_id, 0)
        if len(body) > OUT_OF_BAND_MIN_BYTES:
            return [header, body]  # don't copy a large body just to prepend 15 bytes
        return [header + body]
    views = [memoryview(b).cast("B") for b in buffers]
    lengths = b"".join(BUFLEN.pack(v.nbytes) for v in views)
    total = _PREFIX.size + len(lengths) + len(body) + sum(v.nbytes for v in views)
    return [HEADER.pack(total, kind, req_id, len(views)) + lengths + body, *views]


def decode_header(frame: memoryview | bytes | bytearray) -> tuple[int, int]:
    """(kind, request id) of a frame body (everything after the u32 length)."""
    kind, req_id, _ = _PREFIX.unpack_from(frame, 0)
    return kind, req_id


def decode(frame: memoryview) -> Any:
    """Decode the payload of a frame body (everything after the u32 length)."""
    _, _, n_buffers = _PREFIX.unpack_from(frame, 0)
    offset = _PREFIX.size
    if n_buffers == 0:
        if len(frame) == offset:
            return None
        return pickle.loads(frame[offset:])
    lengths = []
    for _ in range(n_buffers):
        (length,) = BUFLEN.unpack_from(frame, offset)
        lengths.append(length)
        offset += BUFLEN.size
    body_len = len(frame) - offset - sum(lengths)
    if body_len < 0:
        raise ValueError("truncated frame")
    body = frame[offset : offset + body_len]
    offset += body_len
    buffers = []
    for length in lengths:
        buffers.append(frame[offset : offset + length])
        offset += length
    return pickle.loads(body, buffers=buffers)
