"""Decompression stops at the cap, for every codec; a bomb is refused without being expanded."""

import time
import tracemalloc

import pytest
import zstandard
from kafka import codec as kafka_codec

from appliance.masking.batches import rewrite_records
from appliance.masking.decompress import TooLarge, decompress
from appliance.masking.rules import MaskingRejected
from tests.masking.builders import Rec, build_batch, masker

ENCODE = {1: kafka_codec.gzip_encode, 2: kafka_codec.snappy_encode, 3: kafka_codec.lz4_encode,
          4: kafka_codec.zstd_encode}
DATA = b"card 4111 1111 1111 1111 " * 4000 + bytes(range(256)) * 40


@pytest.mark.parametrize("codec", sorted(ENCODE))
def test_each_codec_round_trips_under_the_cap_and_stops_above_it(codec):
    packed = ENCODE[codec](DATA)
    assert decompress(codec, packed, cap=len(DATA)) == DATA
    with pytest.raises(TooLarge):
        decompress(codec, packed, cap=len(DATA) - 1)


def test_a_zstd_bomb_is_refused_without_expanding_it():
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (256 << 20))
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(TooLarge):
        decompress(4, bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 << 20, peak  # about the 16 MiB cap, never the 256 MiB
    assert time.perf_counter() - started < 2


def test_a_masked_batch_past_the_cap_is_rejected_naming_the_cap():
    rules = "  - name: cards\n    topics: [payments]\n    on: [produce]\n    detectors: [card]\n    action: redact\n"
    batch = build_batch([Rec(DATA)], codec=4)
    with pytest.raises(MaskingRejected, match="decompresses to more than 1000 bytes"):
        rewrite_records(batch, masker(rules), max_batch_bytes=1000)
    rewrite_records(batch, masker(rules))  # the default cap (16 MiB) reads it


@pytest.mark.parametrize("codec", sorted(ENCODE))
def test_a_prefix_is_read_without_expanding_the_rest(codec):
    from appliance.masking.decompress import decompress_prefix

    packed = ENCODE[codec](DATA)
    assert decompress_prefix(codec, packed, len(DATA)) == (DATA, True)
    prefix, complete = decompress_prefix(codec, packed, 1000)
    assert not complete and len(prefix) <= 1000 and DATA.startswith(prefix)
    if codec != 2:  # snappy gives whole blocks only (kafka-python's are 32 KiB): none fits in 1000 bytes
        assert len(prefix) == 1000
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (256 << 20))
    started = time.monotonic()
    assert decompress_prefix(4, bomb, 4096) == (b"\0" * 4096, False) and time.monotonic() - started < 0.5
