"""The proxy's RFC 6455 codec, checked against the ``websockets`` library's own framing."""

from __future__ import annotations

import base64
import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from schooner.proxy import websocket as ws


def client_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    """A frame as a client sends it: masked, serialized by ``websockets``."""
    return Frame(opcode, data, fin=fin).serialize(mask=True)


def raw_frame(first_byte: int, payload: bytes) -> bytes:
    """A masked frame built by hand, for frames ``websockets`` refuses to build."""
    mask = os.urandom(4)
    n = len(payload)
    length = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    return bytes((first_byte,)) + length + mask + ws.unmask(payload, mask)


def parse_server_frame(data: bytes) -> Frame:
    """Parse what the server sends with ``websockets`` (as a client would: unmasked)."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


# -- handshake ----------------------------------------------------------------------------
def test_accept_key_matches_the_rfc_example() -> None:
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _headers(key: bytes | None = b"dGhlIHNhbXBsZSBub25jZQ==", version: bytes | None = b"13"):
    headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    if key is not None:
        headers.append((b"sec-websocket-key", key))
    if version is not None:
        headers.append((b"sec-websocket-version", version))
    return headers


def test_a_valid_handshake_is_accepted() -> None:
    assert ws.handshake_error("GET", _headers()) is None


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("POST", _headers(), 400),
        ("GET", _headers(version=b"8"), 426),
        ("GET", _headers(version=None), 426),
        ("GET", _headers(key=None), 400),
        ("GET", _headers(key=b"not base64!"), 400),
        ("GET", _headers(key=base64.b64encode(b"short")), 400),
    ],
)
def test_invalid_handshakes_are_refused(method: str, headers: list, status: int) -> None:
    error = ws.handshake_error(method, headers)
    assert error is not None
    assert error[0] == status


# -- frames the server sends ----------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_server_frames_of_every_length_encoding_parse(size: int) -> None:
    payload = os.urandom(size)
    head, body = ws.encode_frame(ws.BINARY, payload)
    frame = parse_server_frame(head + body)
    assert frame.opcode == Opcode.BINARY
    assert frame.fin
    assert frame.data == payload


def test_close_payload_carries_code_and_reason_and_fits_a_control_frame() -> None:
    assert ws.close_payload(ws.NO_STATUS) == b""
    payload = ws.close_payload(4001, "bye")
    assert payload == b"\x0f\xa1bye"
    long = ws.close_payload(1000, "é" * 100)  # 200 bytes: cut, without splitting a character
    assert len(long) <= 125
    long[2:].decode("utf-8")


def test_unmask_is_its_own_inverse() -> None:
    data, mask = os.urandom(1001), os.urandom(4)
    assert ws.unmask(ws.unmask(data, mask), mask) == data
    assert ws.unmask(b"", mask) == b""


# -- frames the client sends ----------------------------------------------------------------
def test_text_and_binary_messages() -> None:
    reader = ws.FrameReader()
    data = client_frame(Opcode.TEXT, "héllo".encode()) + client_frame(Opcode.BINARY, b"\x00\x01")
    assert reader.feed(data) == ["héllo", b"\x00\x01"]


def test_bytes_arriving_one_at_a_time() -> None:
    reader = ws.FrameReader()
    data = client_frame(Opcode.TEXT, b"x" * 70_000)
    events = []
    for i in range(len(data)):
        events += reader.feed(data[i : i + 1])
    assert events == ["x" * 70_000]


def test_fragmented_message_with_a_ping_in_between() -> None:
    reader = ws.FrameReader()
    data = (
        client_frame(Opcode.TEXT, b"hel", fin=False)
        + client_frame(Opcode.PING, b"p")
        + client_frame(Opcode.CONT, b"lo", fin=False)
        + client_frame(Opcode.CONT, b"!")
    )
    assert reader.feed(data) == [ws.Ping(b"p"), "hello!"]


def test_close_frames() -> None:
    reader = ws.FrameReader()
    assert reader.feed(client_frame(Opcode.CLOSE, b"")) == [ws.Close(ws.NO_STATUS, "")]
    assert reader.feed(client_frame(Opcode.CLOSE, b"\x0f\xa1bye")) == [ws.Close(4001, "bye")]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (Frame(Opcode.TEXT, b"x").serialize(mask=False), ws.PROTOCOL_ERROR),  # unmasked
        (raw_frame(0x80 | 0x40 | 0x1, b"x"), ws.PROTOCOL_ERROR),  # no extension
        (client_frame(Opcode.CONT, b"x"), ws.PROTOCOL_ERROR),  # continuation of nothing
        (
            client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"),
            ws.PROTOCOL_ERROR,
        ),  # a new message inside a fragmented one
        (client_frame(Opcode.TEXT, b"\xff\xfe"), ws.INVALID_DATA),  # not UTF-8
        (client_frame(Opcode.CLOSE, b"\x03\xed"), ws.PROTOCOL_ERROR),  # close code 1005
        (client_frame(Opcode.CLOSE, b"\x03"), ws.PROTOCOL_ERROR),  # one-byte close payload
        (client_frame(Opcode.CLOSE, b"\x03\xe8\xff"), ws.INVALID_DATA),  # reason not UTF-8
        (raw_frame(0x80 | 0x9, b"x" * 126), ws.PROTOCOL_ERROR),  # control frame too long
        (raw_frame(0x80 | 0x3, b""), ws.PROTOCOL_ERROR),  # unknown opcode
        (raw_frame(0x9, b""), ws.PROTOCOL_ERROR),  # fragmented control frame
    ],
)
def test_protocol_errors_carry_their_close_code(data: bytes, code: int) -> None:
    with pytest.raises(ws.ProtocolError) as info:
        ws.FrameReader().feed(data)
    assert info.value.code == code


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    reader = ws.FrameReader(max_message_bytes=1000)
    header_only = client_frame(Opcode.BINARY, b"x" * 1001)[:8]  # the rest never needs to come
    with pytest.raises(ws.ProtocolError) as info:
        reader.feed(header_only)
    assert info.value.code == ws.MESSAGE_TOO_BIG


def test_fragments_adding_up_over_the_limit_are_refused() -> None:
    reader = ws.FrameReader(max_message_bytes=1000)
    assert reader.feed(client_frame(Opcode.BINARY, b"x" * 600, fin=False)) == []
    with pytest.raises(ws.ProtocolError) as info:
        reader.feed(client_frame(Opcode.CONT, b"x" * 600))
    assert info.value.code == ws.MESSAGE_TOO_BIG
