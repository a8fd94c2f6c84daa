"""The bounds check walks every kio schema exactly as kio reads it, and refuses lengths the bytes cannot hold."""

import random
import struct

import pytest
from kio.index import load_request_schema, load_response_schema
from kio.schema.index import api_key_map, schema_name_map
from kio.serial import entity_reader
from kio.serial.errors import SerialError

from appliance.kafka import bounds, codec
from tests.fuzz.entities import encode, random_entity

ALL_CLASSES = [(load, key, v) for key, name in api_key_map.items() for v in sorted(schema_name_map[name])
               for load in (load_request_schema, load_response_schema)]


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_every_schema_walks_to_the_end_of_what_kio_wrote_and_kio_reads_it_back():
    rnd = random.Random(9)
    for load, key, version in ALL_CLASSES:
        cls = load(key, version)
        for _ in range(5):
            data = encode(random_entity(cls, rnd))
            assert bounds.check(cls, data, 0) == len(data), (cls, version)
            assert entity_reader(cls)(data, 0)[1] == len(data)


def test_the_24_byte_metadata_v12_request_is_refused_before_kio_allocates():
    # kio 0.6.5 aborts the process on this body (Vec::with_capacity(0xfffffffd)).
    cls = load_request_schema(3, 12)
    with pytest.raises(bounds.BoundsError) as e:
        bounds.check(cls, uvarint(0xFFFFFFFE) + b"\0" * 16, 0)
    assert str(e.value) == "topics: array of 4294967293 elements needs at least 77309411274 bytes, 16 remain"


def test_a_decode_error_names_api_version_field_and_length():
    frame = struct.pack(">ihhih", 0, 3, 12, 7, -1) + b"\0" + uvarint(0xFFFFFFFE) + b"\0" * 16
    header = codec.parse_request_header(frame)
    with pytest.raises(codec.DecodeError, match=r"^Metadata v12 request does not decode: topics: array of 4294967293"):
        codec.decode_request(frame, header)


def test_legacy_counts_and_lengths_are_checked_and_nested_paths_named():
    from kio.schema.produce.v3.request import ProduceRequest
    prefix = struct.pack(">hhi", -1, 1, 1000)
    with pytest.raises(bounds.BoundsError, match=r"^topic_data: array of 2147483647 elements"):
        bounds.check(ProduceRequest, prefix + struct.pack(">i", 0x7FFFFFFF), 0)
    with pytest.raises(bounds.BoundsError, match="not nullable"):
        bounds.check(ProduceRequest, prefix + struct.pack(">i", -1), 0)
    with pytest.raises(bounds.BoundsError, match="array count -2"):
        bounds.check(ProduceRequest, prefix + struct.pack(">i", -2), 0)
    topic = struct.pack(">h", 1) + b"t" + struct.pack(">i", 1) + struct.pack(">ii", 0, 1 << 30)
    with pytest.raises(bounds.BoundsError) as e:
        bounds.check(ProduceRequest, prefix + struct.pack(">i", 1) + topic + b"abc", 0)
    assert str(e.value) == "topic_data[0].partition_data[0].records: length 1073741824 exceeds the 3 bytes that remain"


def test_a_fixed_size_array_is_checked_by_multiplication():
    from kio.schema.metadata.v12.response import MetadataResponsePartition
    body = b"\0\0" + b"\0\0\0\0" * 3 + uvarint(0x7FFFFFFF) + b"\0" * 40
    with pytest.raises(bounds.BoundsError, match=r"^replica_nodes: array of 2147483646 elements needs at least 8589934584"):
        bounds.check(MetadataResponsePartition, body, 0)


def test_tagged_fields_must_be_known_fit_and_fill_their_size():
    from kio.schema.fetch.v12.response import EpochEndOffset, PartitionData
    from kio.schema.errors import ErrorCode
    from appliance.kafka.synth import default_entity
    part = encode(default_entity(PartitionData, ErrorCode.none, diverging_epoch=EpochEndOffset(epoch=5, end_offset=7)))
    tags = part.rindex(bytes([1, 0, 13]))
    assert bounds.check(PartitionData, part, 0) == len(part)
    with pytest.raises(bounds.BoundsError, match="tagged field 9 is not one PartitionData has"):
        bounds.check(PartitionData, part[:tags] + bytes([1, 9, 0]), 0)
    with pytest.raises(bounds.BoundsError, match=r"tagged field 0 of 4294967295 bytes exceeds"):
        bounds.check(PartitionData, part[:tags] + bytes([1, 0]) + uvarint(0xFFFFFFFF), 0)
    with pytest.raises(bounds.BoundsError, match=r"^diverging_epoch: fixed-size fields need 7 bytes more"):
        bounds.check(PartitionData, part[:tags] + bytes([1, 0, 5]) + part[tags + 3:], 0)
    # kio reads a known tag's value and ignores its declared size: the two must agree.
    with pytest.raises(bounds.BoundsError, match="declares 15 bytes but its value takes 13"):
        bounds.check(PartitionData, part[:tags] + bytes([1, 0, 15]) + part[tags + 3:] + b"\0\0", 0)
    with pytest.raises(bounds.BoundsError, match="tagged fields cannot fit"):
        bounds.check(PartitionData, part[:tags] + uvarint(1 << 30), 0)


def test_varints_longer_than_five_bytes_are_refused():
    with pytest.raises(bounds.BoundsError, match="longer than 5 bytes"):
        bounds.check(load_request_schema(3, 12), b"\x80" * 6 + b"\x01", 0)


def test_mutated_encodings_either_fail_the_check_or_decode():
    """Every byte flipped, and every truncation, of a few real messages: the check refuses it, or kio
    decodes it with at most its own errors (never an allocation the bytes do not justify)."""
    rnd = random.Random(3)
    for key, version in ((3, 12), (1, 12), (0, 9), (18, 3), (36, 2), (10, 4)):
        for load in (load_request_schema, load_response_schema):
            cls = load(key, version)
            data = encode(random_entity(cls, rnd))
            variants = [data[:n] for n in range(len(data))]
            variants += [data[:i] + bytes([b]) + data[i + 1:] for i in range(len(data)) for b in (0x00, 0x7F, 0xFF)]
            for variant in variants:
                try:
                    bounds.check(cls, variant, 0)
                except bounds.BoundsError:
                    continue
                try:
                    entity_reader(cls)(variant, 0)
                except (SerialError, ValueError, KeyError, TypeError, OverflowError):
                    pass


def test_a_request_may_have_a_bounded_number_of_array_elements():
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
    request = MetadataRequest(topics=tuple(MetadataRequestTopic(topic_id=None, name=f"t{i}") for i in range(50)),
                              allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    data = encode(request)
    assert bounds.check(MetadataRequest, data, 0, max_elements=50) == len(data)
    with pytest.raises(bounds.BoundsError, match=r"^topics: array of 50 elements takes the message past the 49 "):
        bounds.check(MetadataRequest, data, 0, max_elements=49)
    big = MetadataRequest(topics=tuple(MetadataRequestTopic(topic_id=None, name="") for _ in range(codec.MAX_REQUEST_ELEMENTS + 1)),
                          allow_auto_topic_creation=False, include_topic_authorized_operations=False)
    frame = struct.pack(">ihhih", 0, 3, 12, 7, -1) + b"\0" + encode(big)
    with pytest.raises(codec.DecodeError, match="past the 100000 array elements one message may have"):
        codec.decode_request(frame, codec.parse_request_header(frame))
