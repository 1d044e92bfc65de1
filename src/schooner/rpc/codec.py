"""Encoding of messages into frames.

A frame on the wire is::

    u32 body_length | u16 n_buffers | u64 buffer_length * n_buffers | pickle | buffers...

``body_length`` counts everything after itself. The pickle uses protocol 5;
large contiguous buffers (numpy arrays, bytes wrapped in PickleBuffer) travel
out of band, after the pickle, without being copied into it. Objects the
standard pickler cannot handle (lambdas, classes defined in ``__main__``)
fall back to cloudpickle.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import cloudpickle

HEADER = struct.Struct("!IH")
BUFLEN = struct.Struct("!Q")
#: Buffers smaller than this are pickled in band; copying them is cheaper than the bookkeeping.
OUT_OF_BAND_MIN_BYTES = 64 * 1024


def _buffer_callback(buffers: list[pickle.PickleBuffer]) -> Any:
    def callback(buf: pickle.PickleBuffer) -> bool:
        if memoryview(buf).nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # serialize in band
        buffers.append(buf)
        return False

    return callback


_MAIN = b"__main__"


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` in band only (for small control messages and blobs).

    Anything referring to ``__main__`` (classes or functions of the user's
    script) is pickled by value with cloudpickle: the peer's ``__main__`` is
    not the user's script.
    """
    try:
        data = pickle.dumps(obj, protocol=5)
        if _MAIN not in data:
            return data
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]


def encode(obj: Any) -> list[bytes | memoryview]:
    """Encode ``obj`` as one frame, returned as a list of chunks to write in order."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        body = pickle.dumps(obj, protocol=5, buffer_callback=_buffer_callback(buffers))
        by_value = _MAIN in body
    except (pickle.PicklingError, AttributeError, TypeError):
        by_value = True
    if by_value:
        buffers = []
        body = cloudpickle.dumps(obj, protocol=5, buffer_callback=_buffer_callback(buffers))
    if not buffers:
        return [HEADER.pack(len(body) + 2, 0) + body]
    views = [memoryview(b).cast("B") for b in buffers]
    lengths = b"".join(BUFLEN.pack(v.nbytes) for v in views)
    total = 2 + len(lengths) + len(body) + sum(v.nbytes for v in views)
    return [HEADER.pack(total, len(views)) + lengths + body, *views]


def decode(frame: memoryview) -> Any:
    """Decode one frame body (everything after the u32 length)."""
    (n_buffers,) = struct.unpack_from("!H", frame, 0)
    if n_buffers == 0:
        return pickle.loads(frame[2:])
    offset = 2
    lengths = []
    for _ in range(n_buffers):
        (length,) = BUFLEN.unpack_from(frame, offset)
        lengths.append(length)
        offset += BUFLEN.size
    body_len = len(frame) - offset - sum(lengths)
    body = frame[offset : offset + body_len]
    offset += body_len
    buffers = []
    for length in lengths:
        buffers.append(frame[offset : offset + length])
        offset += length
    return pickle.loads(body, buffers=buffers)
