"""Decompressing a record batch with a cap on the output: decompression stops at the cap.

A few kilobytes of zstd can expand to gigabytes; a batch is never
decompressed whole and checked afterwards. Each codec is run as a stream
asked for at most `cap + 1` bytes (gzip through zlib's `max_length`, lz4
frames through `LZ4FrameDecompressor.decompress(max_length=)`, zstd through a
stream reader), and snappy's xerial blocks each declare their uncompressed
length up front, which is summed before any block is expanded. More than
`cap` bytes raises `TooLarge`.
"""

from __future__ import annotations

import io
import struct
import zlib

import lz4.frame
import snappy
import zstandard

# The default cap: well above Kafka's default max.message.bytes (1 MiB) and a typical batch.size.
MAX_BATCH_BYTES = 16 * 1024 * 1024

_XERIAL_HEADER = b"\x82SNAPPY\x00"
_XERIAL_HEADER_SIZE = 16
_BLOCK_LENGTH = struct.Struct(">i")


class TooLarge(ValueError):
    """The batch decompresses to more than the cap."""


def _gzip(data: bytes, cap: int) -> bytes:
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits=31)
        pending = data
        while pending and not d.eof:
            out += d.decompress(pending, cap + 1 - len(out))
            if len(out) > cap:
                raise TooLarge
            pending = d.unconsumed_tail
        if not d.eof:
            raise zlib.error("gzip stream ends early")
        data = d.unused_data  # a second gzip member, as GZIPInputStream reads them
    return bytes(out)


def _lz4(data: bytes, cap: int) -> bytes:
    out = bytearray()
    while data:
        d = lz4.frame.LZ4FrameDecompressor()
        out += d.decompress(data, max_length=cap + 1 - len(out))
        while len(out) <= cap and not d.eof and d.needs_input is False:
            out += d.decompress(b"", max_length=cap + 1 - len(out))
        if len(out) > cap:
            raise TooLarge
        if not d.eof:
            raise ValueError("lz4 frame ends early")
        data = d.unused_data
    return bytes(out)


def _zstd_upto(data: bytes, limit: int) -> bytes:
    """At most the first `limit` bytes the zstd frames in `data` decompress to."""
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
        out = bytearray()
        while len(out) < limit:
            chunk = reader.read(min(1 << 20, limit - len(out)))
            if not chunk:
                break
            out += chunk
        return bytes(out)


def _zstd(data: bytes, cap: int) -> bytes:
    out = _zstd_upto(data, cap + 1)
    if len(out) > cap:
        raise TooLarge
    return out


def _uvarint(data: bytes, at: int) -> int:
    value = shift = 0
    for i in range(at, min(at + 5, len(data))):
        value |= (data[i] & 0x7F) << shift
        if not data[i] & 0x80:
            return value
        shift += 7
    raise ValueError("snappy block has no length preamble")


def _snappy(data: bytes, cap: int) -> bytes:
    if not data.startswith(_XERIAL_HEADER):
        if _uvarint(data, 0) > cap:
            raise TooLarge
        return snappy.decompress(data)
    blocks, total = [], 0
    for block, size in _xerial_blocks(data):
        total += size
        if total > cap:
            raise TooLarge
        blocks.append(block)
    return b"".join(snappy.decompress(b) for b in blocks)


def _xerial_blocks(data: bytes):
    """Each xerial-framed snappy block and the uncompressed size it declares, none expanded yet."""
    at = _XERIAL_HEADER_SIZE
    while at < len(data):
        (size,) = _BLOCK_LENGTH.unpack_from(data, at)
        at += 4
        if size < 0 or at + size > len(data):
            raise ValueError("xerial snappy block runs past the end of the batch")
        block = data[at:at + size]
        yield block, _uvarint(block, 0)
        at += size


DECODE = {1: _gzip, 2: _snappy, 3: _lz4, 4: _zstd}


def decompress(codec: int, data: bytes, cap: int = MAX_BATCH_BYTES) -> bytes:
    """The decompressed bytes of a batch body of Kafka codec `codec` (1 gzip .. 4 zstd), or TooLarge."""
    return DECODE[codec](data, cap)


def decompress_prefix(codec: int, data: bytes, limit: int) -> tuple[bytes, bool]:
    """(at most the first `limit` decompressed bytes, whether that is all of them), for reading the first
    records of a batch (audit excerpts) without expanding the rest. Errors as `decompress`'s."""
    try:
        out = DECODE[codec](data, limit)
    except TooLarge:
        pass
    else:
        return out, True
    if codec == 1:
        d = zlib.decompressobj(wbits=31)
        return d.decompress(data, limit), False
    if codec == 3:
        return lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=limit), False
    if codec == 4:
        return _zstd_upto(data, limit), False
    # snappy: whole xerial blocks until the limit is reached (each block declares its size; none expands past it)
    if not data.startswith(_XERIAL_HEADER):
        return b"", False  # one unframed block larger than the limit: nothing of it is read
    out = bytearray()
    for block, size in _xerial_blocks(data):
        if len(out) + size > limit:
            break
        out += snappy.decompress(block)
    return bytes(out), False
