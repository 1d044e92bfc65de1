"""The wire codec: frame layout, protocol 5 with out-of-band buffers, cloudpickle fallback."""

from __future__ import annotations

import pickle
import struct
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from schooner.rpc import codec


@dataclass
class Point:
    x: int
    y: int


def frame_bytes(chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def roundtrip(obj: Any) -> Any:
    """Encode ``obj``, check the length prefix, and decode what follows it."""
    data = frame_bytes(codec.encode(obj))
    (length,) = struct.unpack_from("!I", data, 0)
    assert length == len(data) - 4
    return codec.decode(memoryview(data)[4:])


# -- small objects --------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [
        None,
        0,
        -(2**70),
        3.5,
        "héllo",
        b"\x00\x01bytes",
        [1, "two", 3.0],
        (1, (2, (3,))),
        {"a": [1, 2], "b": {"c": None}},
        {1, 2, 3},
        Point(1, 2),
        ValueError("boom"),
        (0, 7, "method", (1, 2), {"k": "v"}, False),  # the shape of an RPC request
    ],
    ids=repr,
)
def test_small_objects_round_trip(obj: Any) -> None:
    out = roundtrip(obj)
    if isinstance(obj, BaseException):
        assert type(out) is type(obj) and out.args == obj.args
    else:
        assert out == obj


def test_small_object_is_one_chunk_without_buffers() -> None:
    chunks = codec.encode({"a": 1})
    assert len(chunks) == 1
    length, _, _, n_buffers = codec.HEADER.unpack_from(chunks[0], 0)
    assert n_buffers == 0
    assert length == len(chunks[0]) - 4


def test_small_array_stays_in_band() -> None:
    arr = np.arange(100, dtype=np.int64)  # 800 bytes, below the threshold
    chunks = codec.encode(arr)
    assert len(chunks) == 1
    np.testing.assert_array_equal(roundtrip(arr), arr)


def test_small_control_messages_are_plain_pickles() -> None:
    data = codec.dumps(("OK", 1, {"x": 2}))
    assert pickle.loads(data) == ("OK", 1, {"x": 2})


# -- large buffers out of band ---------------------------------------------------


def test_large_array_travels_out_of_band() -> None:
    arr = np.arange(20_000, dtype=np.float64)  # 160 KB
    assert arr.nbytes > codec.OUT_OF_BAND_MIN_BYTES
    chunks = codec.encode(arr)
    assert len(chunks) == 2
    head, buf = chunks
    _, _, _, n_buffers = codec.HEADER.unpack_from(head, 0)
    assert n_buffers == 1
    (buf_len,) = codec.BUFLEN.unpack_from(head, codec.HEADER.size)
    assert buf_len == arr.nbytes == memoryview(buf).nbytes
    # The buffer is not copied into the pickle: the head is small.
    assert len(head) < 1024
    np.testing.assert_array_equal(roundtrip(arr), arr)


def test_several_large_arrays_in_one_message() -> None:
    a = np.arange(10_000, dtype=np.float64)
    b = np.ones((200, 100), dtype=np.int32)  # 80 KB
    small = np.arange(10)
    msg = (2, 9, {"a": a, "b": b, "small": small, "text": "ok"})
    chunks = codec.encode(msg)
    _, _, _, n_buffers = codec.HEADER.unpack_from(chunks[0], 0)
    assert n_buffers == 2
    assert len(chunks) == 3
    kind, req_id, out = roundtrip(msg)
    assert (kind, req_id, out["text"]) == (2, 9, "ok")
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)
    assert out["b"].shape == (200, 100) and out["b"].dtype == np.int32
    np.testing.assert_array_equal(out["small"], small)


def test_non_contiguous_large_array_round_trips() -> None:
    arr = np.arange(40_000, dtype=np.float64).reshape(200, 200).T  # Fortran order view
    np.testing.assert_array_equal(roundtrip(arr), arr)


def test_pickle_buffer_bytes_travel_out_of_band() -> None:
    payload = bytes(range(256)) * 512  # 128 KiB
    chunks = codec.encode(pickle.PickleBuffer(payload))
    assert len(chunks) == 2
    out = roundtrip(pickle.PickleBuffer(payload))
    assert bytes(out) == payload


def test_frame_length_counts_every_chunk() -> None:
    arr = np.zeros(100_000, dtype=np.uint8)
    chunks = codec.encode(("x", arr))
    (length,) = struct.unpack_from("!I", bytes(chunks[0][:4]), 0)
    assert length == sum(memoryview(c).nbytes for c in chunks) - 4


# -- cloudpickle fallback ----------------------------------------------------------


def test_lambda_falls_back_to_cloudpickle() -> None:
    fn = lambda x: x * 3  # noqa: E731
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(fn, protocol=5)
    assert roundtrip(fn)(7) == 21
    assert pickle.loads(codec.dumps(fn))(2) == 6


def test_local_function_falls_back_to_cloudpickle() -> None:
    offset = 10

    def add(x: int) -> int:
        return x + offset

    assert roundtrip({"fn": add})["fn"](1) == 11


def _main_class() -> type:
    """A class that claims to live in ``__main__`` (as classes of a user's script do)."""

    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale

        def predict(self, x: int) -> int:
            return x * self.scale

    Model.__module__ = "__main__"
    Model.__qualname__ = "Model"
    return Model


def test_main_module_class_is_pickled_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    cls = _main_class()
    main = sys.modules["__main__"]
    # As in a user's script: the class really is importable from this process's __main__,
    # so the standard pickler would happily write a reference to ``__main__.Model``.
    monkeypatch.setattr(main, "Model", cls, raising=False)
    assert b"__main__" in pickle.dumps(cls, protocol=5)
    encoded = frame_bytes(codec.encode(cls))
    blob = codec.dumps(cls)
    # The peer's __main__ is not the user's script: decoding must not need it.
    monkeypatch.delattr(main, "Model")
    assert codec.decode(memoryview(encoded)[4:])(4).predict(5) == 20
    assert pickle.loads(blob)(2).predict(3) == 6


def test_unimportable_main_module_class_is_pickled_by_value() -> None:
    cls = _main_class()  # not an attribute of __main__: the standard pickler refuses it
    assert roundtrip(cls)(4).predict(5) == 20


def test_main_module_instance_with_large_array_keeps_out_of_band_buffer() -> None:
    cls = _main_class()
    obj = cls(2)
    obj.weights = np.arange(20_000, dtype=np.float64)
    chunks = codec.encode(obj)
    _, _, _, n_buffers = codec.HEADER.unpack_from(chunks[0], 0)
    assert n_buffers == 1
    out = roundtrip(obj)
    assert out.predict(3) == 6
    np.testing.assert_array_equal(out.weights, obj.weights)


def test_main_module_function_by_value() -> None:
    def double(x: int) -> int:
        return 2 * x

    double.__module__ = "__main__"
    double.__qualname__ = "double"
    assert roundtrip(double)(21) == 42


def test_decode_rejects_truncated_frame() -> None:
    data = frame_bytes(codec.encode({"a": list(range(100))}))
    with pytest.raises(Exception):  # noqa: B017 - any decode error; the connection closes
        codec.decode(memoryview(data)[4:-10])
