"""The WebSocket protocol (RFC 6455), server side, without I/O.

- :func:`handshake_error` checks an upgrade request's headers and
  :func:`accept_key` computes its ``Sec-WebSocket-Accept``.
- :class:`FrameReader` turns the bytes a client sends into whole
  messages (text as ``str``, binary as ``bytes``) and control events
  (:class:`Ping`, :class:`Pong`, :class:`Close`): it unmasks, reassembles
  fragmented messages, enforces the message size limit, and raises
  :class:`ProtocolError` (with the close code to send) for anything a
  server must refuse: unmasked frames, reserved bits set (no extension is
  negotiated), unknown opcodes, bad fragmentation, invalid UTF-8, invalid
  close codes.
- :func:`encode_frame` and :func:`close_payload` build what the server sends
  (unmasked, one frame per message).

No extension (``permessage-deflate``) is negotiated.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

CONTINUATION, TEXT, BINARY = 0x0, 0x1, 0x2
CLOSE, PING, PONG = 0x8, 0x9, 0xA

#: Close codes (RFC 6455 section 7.4.1).
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS = 1005  # never sent: reported when a close frame carries no code
ABNORMAL_CLOSURE = 1006  # never sent: reported when the connection drops without a close
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

#: The default limit on one message, as uvicorn's ``ws_max_size`` (16 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_MAX_CONTROL_PAYLOAD = 125


class ProtocolError(Exception):
    """The client broke the protocol; close the connection with :attr:`code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} (close code {code})")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The client's close frame: its code (``NO_STATUS`` if it gave none) and reason."""

    code: int
    reason: str


Event = str | bytes | Ping | Pong | Close


# -- handshake --------------------------------------------------------------------------
def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def handshake_error(method: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    """Why a WebSocket upgrade request cannot be accepted, as (HTTP status, text); None if it can.

    ``headers`` are lowercase names with their values, as the HTTP server parsed them.
    """
    if method != "GET":
        return 400, "A WebSocket handshake must be a GET request."
    key = version = None
    for name, value in headers:
        if name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value
    if version is None or version.strip() != b"13":
        return 426, "Unsupported WebSocket version: this server speaks version 13."
    try:
        valid_key = key is not None and len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        return 400, "Missing or invalid Sec-WebSocket-Key header."
    return None


# -- frames the server sends ----------------------------------------------------------------
def encode_frame(opcode: int, payload: bytes) -> tuple[bytes, bytes]:
    """One final, unmasked frame as (header, payload): write both, in order."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n)), payload
    if n < 0x10000:
        return _HEAD16.pack(first, 126, n), payload
    return _HEAD64.pack(first, 127, n), payload


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame (empty for ``NO_STATUS``); the reason is cut to fit."""
    if code == NO_STATUS:
        return b""
    data = reason.encode()[: _MAX_CONTROL_PAYLOAD - 2]
    # Cutting may split a character: drop the broken tail.
    return _U16.pack(code) + data.decode("utf-8", "ignore").encode()


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 section 7.4)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def unmask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (one big-integer XOR, no Python loop)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


# -- frames the client sends ----------------------------------------------------------------
class FrameReader:
    """Parses a client's byte stream into :data:`Event` values; see the module docstring."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._parts: list[bytes] = []  # the fragments of a message under way
        self._parts_size = 0
        self._message_opcode: int | None = None  # TEXT or BINARY while fragments arrive

    def feed(self, data: bytes) -> list[Event]:
        """Events completed by ``data``, in order. Raises :class:`ProtocolError`."""
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        offset = 0
        while True:
            frame = self._frame_at(offset)
            if frame is None:
                break
            offset, fin, opcode, payload = frame
            event = self._event(fin, opcode, payload)
            if event is not None:
                events.append(event)
        if offset:
            del buffer[:offset]
        return events

    def _frame_at(self, offset: int) -> tuple[int, bool, int, bytes] | None:
        """(end offset, fin, opcode, unmasked payload) of the frame starting at ``offset``,
        or None if it has not fully arrived."""
        buffer = self._buffer
        available = len(buffer) - offset
        if available < 2:
            return None
        first, second = buffer[offset], buffer[offset + 1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise ProtocolError(PROTOCOL_ERROR, "Reserved bits set, but no extension was agreed.")
        if not second & 0x80:
            raise ProtocolError(PROTOCOL_ERROR, "Frames from a client must be masked.")
        length = second & 0x7F
        head = 2
        if length == 126:
            if available < 4:
                return None
            (length,) = _U16.unpack_from(buffer, offset + 2)
            head = 4
        elif length == 127:
            if available < 10:
                return None
            (length,) = _U64.unpack_from(buffer, offset + 2)
            head = 10
        if opcode >= CLOSE:
            if length > _MAX_CONTROL_PAYLOAD or not fin:
                raise ProtocolError(PROTOCOL_ERROR, "Invalid control frame.")
        elif self._parts_size + length > self.max_message_bytes:
            raise ProtocolError(
                MESSAGE_TOO_BIG, f"Message larger than {self.max_message_bytes} bytes."
            )
        end = offset + head + 4 + length
        if len(buffer) < end:
            return None
        mask = bytes(buffer[offset + head : offset + head + 4])
        payload = unmask(memoryview(buffer)[offset + head + 4 : end], mask)
        return end, fin, opcode, payload

    def _event(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode == PING:
            return Ping(payload)
        if opcode == PONG:
            return Pong(payload)
        if opcode == CLOSE:
            return _parse_close(payload)
        if opcode == CONTINUATION:
            if self._message_opcode is None:
                raise ProtocolError(PROTOCOL_ERROR, "Continuation frame without a message.")
        elif opcode in (TEXT, BINARY):
            if self._message_opcode is not None:
                raise ProtocolError(PROTOCOL_ERROR, "New message before the last one ended.")
            if fin:
                return _message(opcode, payload)
            self._message_opcode = opcode
        else:
            raise ProtocolError(PROTOCOL_ERROR, f"Unknown opcode {opcode:#x}.")
        self._parts.append(payload)
        self._parts_size += len(payload)
        if not fin:
            return None
        message_opcode = self._message_opcode
        data = b"".join(self._parts)
        self._parts, self._parts_size, self._message_opcode = [], 0, None
        return _message(message_opcode, data)


def _message(opcode: int, payload: bytes) -> str | bytes:
    if opcode == BINARY:
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "Text message is not valid UTF-8.") from None


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "Close frame with a one-byte payload.")
    (code,) = _U16.unpack_from(payload)
    if not is_valid_close_code(code):
        raise ProtocolError(PROTOCOL_ERROR, f"Invalid close code {code}.")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "Close reason is not valid UTF-8.") from None
    return Close(code, reason)
