"""Splitting a byte stream into Kafka frames (int32 size prefix, then that many bytes)."""

from __future__ import annotations

import struct

_SIZE = struct.Struct(">i")


class FrameError(ValueError):
    """A frame size that no valid Kafka peer sends; the connection cannot be resynchronised."""


class FrameSplitter:
    """Accumulates bytes and returns each complete frame, size prefix included.

    Frames keep their prefix so the proxy forwards them unchanged. A size that is
    negative or above `max_frame_bytes` raises FrameError before any of the frame
    is buffered, so a hostile peer cannot make the proxy allocate it.
    """

    __slots__ = ("_buffer", "max_frame_bytes", "pending")

    def __init__(self, max_frame_bytes: int) -> None:
        self._buffer = bytearray()
        self.max_frame_bytes = max_frame_bytes
        self.pending = 0  # bytes held that do not yet form a whole frame (read after every read: no property)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        # The common case is a read that starts on a frame boundary (nothing held): its whole frames are
        # sliced from the read itself (one that fills the read is the very same object, no copy at all),
        # and only a partial tail is held. Otherwise the read joins what is held first.
        direct = not buffer
        source = data if direct else buffer
        if not direct:
            buffer += data
        frames: list[bytes] = []
        start, end = 0, len(source)
        while end - start >= 4:
            (size,) = _SIZE.unpack_from(source, start)
            if size < 0 or size > self.max_frame_bytes:
                self._refuse(size, source, start)
            stop = start + 4 + size
            if stop > end:
                break
            if not direct:
                frames.append(bytes(buffer[start:stop]))
            else:
                frames.append(data if start == 0 and stop == end else data[start:stop])
            start = stop
        if direct:
            if start < end:
                buffer += memoryview(data)[start:]
        elif start:
            del buffer[:start]
        self.pending = len(buffer)
        return frames

    def _refuse(self, size: int, data: bytes | bytearray, start: int) -> None:
        raise FrameError(
            f"frame size {size} is outside 0..{self.max_frame_bytes} bytes "
            f"(first bytes {bytes(data[start:start + 8]).hex()})"
        )

    def peek(self, n: int) -> bytes:
        """The first `n` bytes held (fewer if fewer are held), without consuming them."""
        return bytes(self._buffer[:n])

    def take_pending(self) -> bytes:
        """Everything held (a frame's beginning), handed over and forgotten."""
        held = bytes(self._buffer)
        self._buffer.clear()
        self.pending = 0
        return held


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its size, making one frame."""
    return _SIZE.pack(len(payload)) + payload
