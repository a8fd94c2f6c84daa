"""Record excerpts: masked by every rule covering the topic in both directions, cut only after masking,
bounded, and a hostile batch costs only its own excerpts (a note), never the writer or the session."""

from __future__ import annotations

import json
import struct
import time

import pytest
from crc32c import crc32c

from appliance.audit.excerpts import build
from appliance.masking.excerpts import MASK_LIMIT, Budget, plan_for, take, take_topic
from appliance.masking.rules import Direction
from appliance.policy.parser import parse_policy
from tests.masking.builders import CODECS, SECRET, Rec, build_batch

CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"

POLICY = """
version: 1
recording:
  - name: pay
    identities: [w, reader, auditor]
    topics: ["prefix:pay"]
    depth: excerpts
    value_bytes: {value_bytes}
    records_per_request: 3
masking:
  - name: cards-at-rest
    topics: ["prefix:pay"]
    on: [produce]
    fields: ["$.card"]
    detectors: [card]
  - name: mail-on-read
    topics: ["prefix:pay"]
    on: [fetch]
    detectors: [email]
    headers: [authorization]
    action: hash
"""


def policy(value_bytes: int = 256):
    p = parse_policy(POLICY.format(value_bytes=value_bytes), source="t")
    import dataclasses
    return dataclasses.replace(p, masking=p.masking.with_secret(SECRET))


def rows_of(records: bytes, applied, direction="fetch", value_bytes=256, limit=None, topic="pay"):
    plan = plan_for(policy(value_bytes), "reader", topic, applied)
    source, _ = take(topic, 0, records, plan, limit, budget=Budget())
    return [] if source is None else build(source, direction)


def value(i=0, **extra) -> bytes:
    return json.dumps({"i": i, "card": CARD, "mail": EMAIL, **extra}).encode()


def clear_in(text) -> bool:
    text = json.dumps(text)
    return CARD in text or CARD.replace(" ", "") in text or EMAIL in text or "1111 1111" in text


def test_a_fetch_excerpt_read_in_the_clear_by_an_unmask_holder_gets_every_rule_of_both_directions():
    rows = rows_of(build_batch([Rec(value(i), key=f"k{i}".encode(),
                                    headers=(("authorization", b"Bearer abcdefghijklmnopqrstu"),)) for i in range(5)]),
                   applied=None)
    assert len(rows) == 3  # records_per_request
    for i, row in enumerate(rows):
        assert not clear_in(row.value) and not clear_in(row.headers), row
        assert json.loads(row.value)["card"] == "[REDACTED]" and "hmac:" in row.value
        assert row.offset == i and row.offset_delta == i and row.key == f"k{i}" and row.value_length == len(value(i))
        assert json.loads(row.headers)[0][1].startswith("hmac:")  # the header rule, though the reader had unmask
        assert row.masked == 3 and row.rule == "pay" and row.note is None


def test_a_produce_excerpt_applies_the_fetch_only_rules_the_data_path_did_not():
    stored = json.dumps({"i": 0, "card": "[REDACTED]", "mail": EMAIL}).encode()  # after produce-side masking
    (row,) = rows_of(build_batch([Rec(stored)]), applied=Direction.PRODUCE, direction="produce")
    assert EMAIL not in row.value and "hmac:" in row.value and row.offset is None and row.offset_delta == 0


def test_an_excerpt_of_a_record_a_reader_got_masked_is_masked_by_the_produce_rules_too():
    fetched = json.dumps({"i": 0, "card": CARD, "mail": "hmac:" + "0" * 64}).encode()  # fetch rules applied
    (row,) = rows_of(build_batch([Rec(fetched)]), applied=Direction.FETCH)
    assert not clear_in(row.value)


def test_truncation_comes_after_masking_so_a_card_cut_in_half_is_never_stored():
    padded = json.dumps({"note": "x" * 215, "card_text": f"card {CARD} end"}).encode()
    cut = padded[:256].decode()
    assert "4111 1111" in cut  # cutting first would leave half a card that no detector finds
    (row,) = rows_of(build_batch([Rec(padded)]), applied=None)
    assert "4111" not in row.value and len(row.value.encode()) <= 256 and row.value_length == len(padded)


def test_values_the_rules_cannot_inspect_are_masked_whole_or_not_stored():
    binary = b"\xff\xfe" + CARD.encode() + b"\x00"
    rows = rows_of(build_batch([Rec(b"not json " + CARD.encode()), Rec(binary), Rec(b"x" * (MASK_LIMIT + 1))]),
                   applied=None)
    assert rows[0].value == "[REDACTED]"  # fields rule: not JSON, masked whole (never refused, never clear)
    assert rows[1].value is None and "binary" in rows[1].note and rows[1].value_length == len(binary)
    assert rows[2].value is None and "more than the" in rows[2].note


def test_without_a_masking_rule_the_first_bytes_are_kept_as_written():
    p = parse_policy("version: 1\nrecording:\n  - {name: all, identities: ['*'], topics: ['*'], depth: excerpts, "
                     "value_bytes: 8}\n", source="t")
    source, _ = take("t", 0, build_batch([Rec(b"\xffabcdefghijk", key=None, headers=(("h", None),))]),
                     plan_for(p, "x", "t", None), budget=Budget())
    (row,) = build(source, "fetch")
    assert row.value == "\\xffabcdefg" and row.key is None and row.key_length == -1
    assert json.loads(row.headers) == [["h", None]]


def test_keys_are_scanned_by_the_detectors_too():
    (row,) = rows_of(build_batch([Rec(b"{}", key=f"order {CARD}".encode())]), applied=None)
    assert row.key == "order [REDACTED]" and row.key_length == len(CARD) + 6


@pytest.mark.parametrize("codec", [c for c in CODECS if c != "none"])
def test_every_codec_is_read(codec):
    rows = rows_of(build_batch([Rec(value(i)) for i in range(3)], codec=CODECS[codec], base_offset=40), applied=None)
    assert [r.offset for r in rows] == [40, 41, 42] and not any(clear_in(r.value) for r in rows)


def test_a_fetch_that_ends_with_part_of_a_batch_is_excerpted_up_to_it_silently():
    whole = build_batch([Rec(value(0))])
    rows = rows_of(whole + build_batch([Rec(value(1))], base_offset=1)[:30], applied=None)
    assert [r.offset for r in rows] == [0] and rows[0].note is None


def test_records_per_request_bounds_a_topic_across_partitions_and_batches():
    plan = plan_for(policy(), "reader", "pay", None)
    batch = build_batch([Rec(value(i)) for i in range(2)])
    sources = take_topic("pay", [(0, batch), (1, batch + batch), (2, batch)], plan, budget=Budget())
    assert [(s.partition, s.limit) for s in sources] == [(0, 3), (1, 1)]
    assert sum(len(build(s, "fetch")) for s in sources) == 3


def test_a_spent_budget_holds_nothing_and_says_so():
    budget = Budget(limit=10)
    source, _ = take("pay", 0, build_batch([Rec(value())]), plan_for(policy(), "reader", "pay", None), budget=budget)
    (row,) = build(source, "fetch")
    assert "the most it holds" in row.note and budget.held == 0 and budget.refused == 1


def test_the_budget_gets_held_bytes_back_once_built():
    budget = Budget()
    source, _ = take("pay", 0, build_batch([Rec(value())]), plan_for(policy(), "reader", "pay", None), budget=budget)
    assert budget.held == len(source.records) > 0
    source.release()
    assert budget.held == 0


# ---- hostile batches -----------------------------------------------------------------------------------

def recrc(batch: bytearray) -> bytes:
    struct.pack_into(">I", batch, 17, crc32c(memoryview(batch)[21:]))
    return bytes(batch)


def with_records(data: bytes, count: int = 1) -> bytes:
    """A batch header around raw records bytes, its CRC right."""
    header = bytearray(build_batch([Rec(b"v")])[:61])
    struct.pack_into(">i", header, 8, 49 + len(data))
    struct.pack_into(">i", header, 57, count)
    return recrc(header + data)


HOSTILE = {
    "bad CRC": lambda: build_batch([Rec(value())])[:-1] + b"X",
    "a batch length past the end": lambda: build_batch([Rec(value())])[:8] + struct.pack(">i", 1 << 30)
    + build_batch([Rec(value())])[12:],
    "a record length past the end": lambda: with_records(b"\xfe\xff\xff\x0f" + b"\x00" * 10),
    "a varint longer than 10 bytes": lambda: with_records(b"\xff" * 11 + b"\x01"),
    "a key length past its record": lambda: with_records(b"\x0c\x00\x00\x00\xfe\xff\x0f\x00\x00\x00\x00\x00\x00"),
    "a header count of two billion": lambda: with_records(b"\x0e\x00\x00\x00\x02k\x02v\xfe\xff\xff\xff\x0f"),
    "a record count of two billion and one record": lambda: with_records(
        build_batch([Rec(value())])[61:], count=2_000_000_000),
    "an undefined codec": lambda: recrc(bytearray(build_batch([Rec(value())])[:22]) + b"\x07"
                                        + build_batch([Rec(value())])[23:]),
    "gzip that does not decompress": lambda: recrc(bytearray(build_batch([Rec(value())])[:22]) + b"\x01"
                                                   + build_batch([Rec(value())])[23:]),
    "a truncated batch": lambda: build_batch([Rec(value())])[:40],
}


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("direction", ["produce", "fetch"])
def test_a_hostile_batch_gives_a_clear_note_never_an_exception_nor_a_stall(kind, direction):
    started = time.monotonic()
    rows = rows_of(HOSTILE[kind](), applied=None, direction=direction)
    assert time.monotonic() - started < 1
    notes = [r.note for r in rows if r.value_length is None]
    if kind == "a record count of two billion and one record":
        assert len(rows) == 2 and "malformed" in notes[0]  # the one record, then where the count lied
    else:
        assert len(notes) == 1 and notes[0].startswith("not excerpted"), rows
    assert not any(clear_in(r.value) for r in rows if r.value)


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_random_corruption_of_a_batch_never_raises_and_stays_bounded(codec):
    import random

    rng = random.Random(12)
    good = build_batch([Rec(value(i), key=CARD.encode(), headers=(("h", EMAIL.encode()),)) for i in range(4)],
                       codec=CODECS[codec])
    for _ in range(200):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.5:  # CRC made right again, so the corruption reaches the record reader
            recrc(data)
        for direction in ("produce", "fetch"):
            rows = rows_of(bytes(data[:rng.randint(0, len(data))] if rng.random() < 0.2 else data),
                           applied=None, direction=direction)
            assert len(rows) <= 4 and all(r.value_length is not None for r in rows[:-1])  # a note only ends them
            for row in rows:  # a record that still reads whole is masked like any other
                assert row.key != CARD and EMAIL not in (row.headers or "") and EMAIL not in (row.value or ""), row
