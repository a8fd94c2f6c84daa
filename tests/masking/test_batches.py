"""rewrite_records on real batches: kafka-python builds them and reads the result back."""

import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from appliance.masking import MaskingRejected, rewrite_records
from appliance.masking.batches import CODEC_NAMES
from appliance.policy.parser import parse_policy
from tests.masking.builders import (
    CODECS,
    Rec,
    batches_in,
    build_batch,
    header_fields,
    masker,
    raw_records,
    rule,
)

CARD = "4111 1111 1111 1111"
CARDS = masker(rule("detectors: [card]\nheaders: [authorization]"))


def order(i: int, card: str = CARD) -> bytes:
    """About 600 bytes of JSON with one card number: compressible, so every codec really compresses."""
    return json.dumps({"order": f"ord-{i:06d}", "card": {"number": card, "holder": "ALICE EXAMPLE"},
                       "items": [{"sku": f"SKU-{j:04d}", "desc": "a fine product of the shop"} for j in range(8)]
                       }).encode()


def sample(n: int = 5) -> list[Rec]:
    return [Rec(value=order(i), key=f"key-{i}".encode(), timestamp_delta=i * 7,
                headers=(("trace", b"abc"), ("authorization", b"Bearer secret"), ("empty", None)))
            for i in range(n)]


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_is_rewritten_with_its_own_codec_and_everything_else_kept(codec):
    original = build_batch(sample(), codec=CODECS[codec], base_offset=1234, leader_epoch=7, producer_id=99,
                           producer_epoch=3, base_sequence=41, transactional=True, max_timestamp=1_700_000_000_028)
    before = header_fields(original)
    assert before["attributes"] & 7 == CODECS[codec]  # the builder really compressed
    out, masked = rewrite_records(original, CARDS, partition=3)
    assert masked == 10  # 5 cards, 5 authorization headers
    (batch,) = batches_in(out)
    assert batch.validate_crc()
    assert header_fields(out) == before  # base offset, epoch, attributes (codec, transactional), sequence...
    assert CODEC_NAMES[batch.compression_type] == codec
    records = list(batch)
    assert [r.offset for r in records] == [1234 + i for i in range(5)]
    assert [r.timestamp for r in records] == [1_700_000_000_000 + i * 7 for i in range(5)]
    assert [r.key for r in records] == [f"key-{i}".encode() for i in range(5)]
    for i, r in enumerate(records):
        assert r.value == order(i, "[REDACTED]")
        assert r.headers == [("trace", b"abc"), ("authorization", b"[REDACTED]"), ("empty", None)]


@pytest.mark.parametrize("codec", list(CODECS))
def test_recompressed_with_the_same_codec_even_when_that_is_larger(codec):
    # Random bytes do not compress: kafka-python's builder would fall back to no compression here.
    noise = random.Random(codec).randbytes(300).hex()
    recs = [Rec(value=f'{{"card":"{CARD}","noise":"{noise}"}}'.encode())]
    original = build_batch(recs, codec=0)
    fields = list(struct.unpack_from(">qiibIhiqqqhii", original))
    # The same records compressed with the codec, however badly, as a producer may send them.
    from kafka import codec as kc
    encode = {1: kc.gzip_encode, 2: kc.snappy_encode, 3: kc.lz4_encode, 4: kc.zstd_encode}
    body = original[61:]
    if CODECS[codec]:
        body = encode[CODECS[codec]](body)
        fields[5] |= CODECS[codec]
    data = bytearray(61 + len(body))
    data[61:] = body
    fields[1] = len(data) - 12
    struct.pack_into(">qiibIhiqqqhii", data, 0, *fields)
    from crc32c import crc32c
    struct.pack_into(">I", data, 17, crc32c(memoryview(data)[21:]))
    out, masked = rewrite_records(bytes(data), CARDS)
    (batch,) = batches_in(out)
    assert masked == 1 and batch.validate_crc() and batch.compression_type == CODECS[codec]
    assert json.loads(next(iter(batch)).value) == {"card": "[REDACTED]", "noise": noise}


def test_log_append_time_offset_and_timestamp_deltas_and_record_bytes_are_kept():
    recs = [Rec(value=order(0), timestamp_delta=0, offset_delta=0), Rec(value=b"no card here", timestamp_delta=5,
                                                                          offset_delta=3),
            Rec(value=order(2), timestamp_delta=9, offset_delta=8, key=None)]
    original = build_batch(recs, codec=CODECS["lz4"], log_append_time=True, max_timestamp=1_800_000_000_000,
                           last_offset_delta=10, base_offset=500)
    out, masked = rewrite_records(original, CARDS)
    assert masked == 2
    assert header_fields(out) == header_fields(original)
    before, after = raw_records(original), raw_records(out)
    assert [r[:4] for r in after] == [r[:4] for r in before]  # attributes, timestamp delta, offset delta, key
    assert after[1] == before[1]  # the record without a card is untouched
    assert [r[4] for r in after] == [order(0, "[REDACTED]"), b"no card here", order(2, "[REDACTED]")]
    (batch,) = batches_in(out)
    assert batch.timestamp_type == 1 and [r.timestamp for r in batch] == [1_800_000_000_000] * 3
    assert batches_in(out)[0].validate_crc()


def test_a_run_of_batches_rewrites_only_those_with_matches_and_keeps_the_rest_byte_for_byte():
    clean = build_batch([Rec(value=b'{"a":"nothing to see"}')], base_offset=0)
    dirty = build_batch([Rec(value=order(1))], codec=CODECS["zstd"], base_offset=1)
    control = build_batch([Rec(value=order(2), key=b"\x00\x00\x00\x01")], base_offset=2, control=True,
                          producer_id=5, producer_epoch=0, base_sequence=-1, transactional=True)
    legacy = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    legacy.append(0, timestamp=1, key=None, value=order(3))
    legacy_bytes = bytes(legacy.build())
    partial = build_batch([Rec(value=order(4))], base_offset=4)[:-10]
    run = clean + dirty + control + legacy_bytes + partial
    out, masked = rewrite_records(run, CARDS)
    assert masked == 1
    assert out.startswith(clean)
    assert out.endswith(control + legacy_bytes + partial)  # control, magic 1 and a trailing partial batch: as is
    middle = out[len(clean):len(out) - len(control + legacy_bytes + partial)]
    (batch,) = batches_in(middle)
    assert batch.validate_crc() and batch.compression_type == CODECS["zstd"] and batch.base_offset == 1
    assert next(iter(batch)).value == order(1, "[REDACTED]")


def test_nothing_to_mask_returns_the_very_same_object():
    run = build_batch(sample(), codec=CODECS["gzip"]) + build_batch([Rec(value=b"plain")], base_offset=5)
    nothing = masker(rule("detectors: [ssn]"))
    out, masked = rewrite_records(run, nothing)
    assert out is run and masked == 0


def test_luhn_failing_numbers_leave_the_batch_untouched():
    run = build_batch([Rec(value=order(1, "4111 1111 1111 1112")), Rec(value=b'{"order_id": 4111111111111112}')])
    out, masked = rewrite_records(run, CARDS)
    assert out is run and masked == 0


def test_empty_and_memoryview_input():
    assert rewrite_records(b"", CARDS) == (b"", 0)
    run = build_batch(sample(1))
    view = memoryview(run)
    out, masked = rewrite_records(view, CARDS)
    assert masked == 2 and isinstance(out, bytes) and batches_in(out)[0].validate_crc()
    clean = memoryview(build_batch([Rec(value=b"x")]))
    assert rewrite_records(clean, CARDS)[0] is clean


def test_invalid_json_on_a_reject_rule_names_topic_partition_and_offset():
    strict = masker(rule("fields: ['$.card.number']\ninvalid: reject"))
    run = build_batch([Rec(value=b'{"card":{"number":"1"}}'), Rec(value=b"{not json", offset_delta=4)],
                      base_offset=0)
    with pytest.raises(MaskingRejected) as caught:
        rewrite_records(run, strict, partition=2)
    e = caught.value
    assert (e.topic, e.partition, e.base_offset, e.offset_delta, e.rule) == ("payments", 2, 0, 4, "r")
    assert str(e).startswith("masking rule 'r' refused a record on topic 'payments' partition 2, batch at base "
                             "offset 0, record at offset delta 4: the value is not valid JSON")


def test_a_corrupt_batch_is_refused_not_laundered():
    run = bytearray(build_batch(sample(1)))
    run[-3] ^= 0xFF  # flip a byte of the last header value: the CRC no longer matches
    with pytest.raises(MaskingRejected, match="CRC32C does not match"):
        rewrite_records(bytes(run), CARDS, partition=0)


def test_a_masker_without_secret_is_bound_by_the_secret_argument():
    policy = parse_policy("version: 1\nmasking:\n" + rule("detectors: [card]\naction: hash"), source="t.yaml")
    with pytest.raises(ValueError, match="has no secret"):
        policy.masking.for_topic("payments", "produce")
    bound = policy.masking.with_secret(b"k" * 32).for_topic("payments", "produce")
    out, _ = rewrite_records(build_batch(sample(1)), bound)
    again, _ = rewrite_records(build_batch(sample(1)), bound, secret=b"k" * 32)
    assert out == again and b"hmac:" in out


# --- properties ---------------------------------------------------------------------------

CLEAN_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz {}[]\":,.é€", max_size=200)
HEADER_KEYS = st.sampled_from(["trace", "content-type", "x-id"])


@st.composite
def clean_records(draw):
    n = draw(st.integers(1, 6))
    return [Rec(value=draw(st.one_of(st.none(), CLEAN_TEXT.map(str.encode), st.binary(max_size=50))),
                key=draw(st.one_of(st.none(), st.binary(max_size=20))),
                headers=tuple(draw(st.lists(st.tuples(HEADER_KEYS, st.one_of(st.none(), st.binary(max_size=10))),
                                            max_size=3))),
                timestamp_delta=draw(st.integers(0, 10_000)))
            for _ in range(n)]


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(st.tuples(clean_records(), st.sampled_from(list(CODECS.values()))), min_size=1, max_size=4))
def test_property_no_match_gives_back_the_identical_object(batches):
    run = b"".join(build_batch(recs, codec=codec, base_offset=i * 10) for i, (recs, codec) in enumerate(batches))
    every = masker(rule("detectors: [card, ssn, email, iban, token]\nheaders: [authorization]"))
    out, masked = rewrite_records(run, every)
    assert out is run and masked == 0


@settings(max_examples=100, deadline=None)
@given(recs=clean_records(), codec=st.sampled_from(list(CODECS.values())), where=st.integers(0, 5),
       card=st.sampled_from(["4111111111111111", "5555 5555 5555 4444", "3782-822463-10005"]))
def test_property_a_card_anywhere_is_masked_and_the_rest_kept(recs, codec, where, card):
    target = recs[where % len(recs)]
    text = target.value.decode() if target.value and target.value.isascii() else ""  # binary is left alone
    target.value = f"{text} card {card} end".encode()
    run = build_batch(recs, codec=codec, base_offset=77, leader_epoch=2)
    out, masked = rewrite_records(run, CARDS)
    assert masked >= 1 and card.encode() not in out
    (batch,) = batches_in(out)
    assert batch.validate_crc() and header_fields(out) == header_fields(run)
    before, after = raw_records(run), raw_records(out)
    assert [r[:4] + (r[5],) for r in after] == [r[:4] + (r[5],) for r in before]
    assert after[where % len(recs)][4].endswith(b" card [REDACTED] end")
