"""What a record excerpt may hold, and the cheap part of taking one on the proxy's path.

A recording rule with depth excerpts (appliance.policy.recording) asks the
audit to keep the key, headers and first bytes of the value of the first
records of each covered topic in a Produce request (as forwarded: after
produce-side masking, what the broker stores) or a Fetch response (as the
reader received it). The auditor is not the reader: an excerpt has EVERY
masking rule that covers the topic applied, on produce and on fetch alike,
whatever `unmask` the identity holds. So an excerpt never holds what any
masking rule would mask:

- the value goes through the value masking of each covering rule the data
  path did not already apply (rules of the other direction; on fetch, all of
  them when the reader has `unmask`), never refusing: a value a rule cannot
  inspect (not JSON under `fields`, too deeply nested) is masked whole;
- a value that is not UTF-8 (binary) is not stored at all when any rule
  covers the topic, whatever the rule's `binary:` says: detectors cannot look
  inside it, so nothing says it is clean;
- the key, which the data path never changes, and every header value are
  scanned by the detectors of every covering rule (a key is a name, not the
  JSON a `fields` rule reads); headers named by a covering rule's `headers:`
  are masked whole first;
- a value larger than `MASK_LIMIT` under a covering rule is not stored: it
  would cost too much to mask for an excerpt;
- truncation to `value_bytes` comes after masking, never before (a card
  number cut in half escapes the detectors).

Nothing here decodes a record. `ExcerptPlan` is decided per (identity,
topic) from the policy and cached; `take` slices, from a partition's record
batches, the batches that hold the first records (reading only batch
headers), so that little is held until the audit writer's thread builds the
excerpts (appliance.audit.excerpts) off the proxy's event loop. `Budget`
bounds the bytes so held across every connection.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from appliance.masking.actions import Action, ActionKind, BoundAction
from appliance.masking.rules import Direction, MaskingPolicy, MaskRule
from appliance.masking.values import ValueMasking

# A value larger than this, on a topic a masking rule covers, is not stored in an excerpt (its length is).
MASK_LIMIT = 64 * 1024
# Of a compressed batch, at most this much is decompressed to read the first records.
DECOMPRESS_LIMIT = 4 * 1024 * 1024
# Record bytes waiting for the audit writer to build their excerpts, across every session, at most.
BUDGET_BYTES = 64 * 1024 * 1024

_HEADER_SIZE = 61  # a v2 batch header: base offset .. record count
_LENGTH = struct.Struct(">i")
_COUNT = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class AuditMasker:
    """Every masking rule covering one topic, as an excerpt applies them (see the module's docstring)."""

    topic: str
    rules: tuple[str, ...]  # every covering rule, in file order
    values: tuple[ValueMasking, ...]  # value masking of the rules the data path did not apply
    headers: tuple[tuple[frozenset[str], BoundAction], ...]  # header rules the data path did not apply
    header_scans: tuple[ValueMasking, ...]  # every covering rule's detectors, for keys and header values

    def mask_value(self, value: bytes) -> tuple[bytes, int]:
        return _chain(self.values, value)

    def mask_key(self, key: bytes) -> tuple[bytes, int]:
        return _chain(self.header_scans, key)

    def mask_header_scan(self, value: bytes) -> tuple[bytes, int]:
        return _chain(self.header_scans, value)


def _chain(maskings: tuple[ValueMasking, ...], value: bytes) -> tuple[bytes, int]:
    total = 0
    for masking in maskings:
        value, n = masking.mask(value)
        total += n
    return value, total


def _bound(rule: MaskRule, secret: bytes | None) -> BoundAction:
    # Without the appliance's secret a hashing rule cannot hash; the excerpt then redacts (never clear).
    if rule.action.kind == ActionKind.HASH and not secret:
        return BoundAction(Action.redact())
    return BoundAction(rule.action, secret)


def _scan(rule: MaskRule, secret: bytes | None) -> ValueMasking:
    """A rule's detectors alone, as free text and keys are scanned."""
    return ValueMasking(rule=rule.name, action=_bound(rule, secret), detectors=rule.detectors, reject_invalid=False,
                        drop_binary=False)


def text_maskings(masking: MaskingPolicy) -> tuple[ValueMasking, ...]:
    """Every rule's detectors, in file order: what MaskingPolicy.mask_text applies."""
    return tuple(_scan(r, masking.secret) for r in masking.rules if r.detectors)


def audit_masker(masking: MaskingPolicy, topic: str, applied: Direction | None) -> AuditMasker | None:
    """The audit's masker for `topic`; `applied`: the direction whose rules the data path already applied to
    the records (produce: what was forwarded; fetch: what a reader without unmask received). None when no
    masking rule covers the topic."""
    covering = tuple(r for r in masking.rules if any(p.matches(topic) for p in r.topics))
    if not covering:
        return None
    pending = tuple(r for r in covering if applied is None or applied not in r.on)

    def value_masking(rule: MaskRule) -> ValueMasking:
        return ValueMasking(rule=rule.name, action=_bound(rule, masking.secret), paths=rule.fields,
                            detectors=rule.detectors, reject_invalid=False, drop_binary=False)

    return AuditMasker(
        topic=topic, rules=tuple(r.name for r in covering),
        values=tuple(value_masking(r) for r in pending if r.fields or r.detectors),
        headers=tuple((r.headers, _bound(r, masking.secret)) for r in pending if r.headers),
        header_scans=tuple(_scan(r, masking.secret) for r in covering if r.detectors))


@dataclass(frozen=True, slots=True)
class ExcerptPlan:
    """How one identity's records on one topic are excerpted: the deciding recording rule, its bounds,
    and the audit's masker (None: no masking rule covers the topic)."""

    rule: str
    value_bytes: int
    records: int  # at most this many records of the topic per request
    masker: AuditMasker | None


def plan_for(policy, identity: str, topic: str, applied: Direction | None) -> ExcerptPlan | None:
    """The excerpt plan for `identity`'s records on `topic` under `policy`, or None (depth operations)."""
    rule = policy.recording.for_topic(identity, topic)
    if rule is None:
        return None
    return ExcerptPlan(rule.name, rule.value_bytes, rule.records_per_request,
                       policy.masking.for_audit(topic, applied) if policy.masking else None)


@dataclass(frozen=True, slots=True)
class ExcerptSource:
    """The batches of one partition that hold the first records to excerpt, as forwarded or delivered."""

    topic: str
    partition: int
    records: bytes
    plan: ExcerptPlan
    limit: int = 1  # records to excerpt from it, at most
    note: str | None = None  # why nothing is held (the budget was spent)
    budget: "Budget | None" = field(default=None, compare=False, repr=False)  # gets `records` back once built

    def release(self) -> None:
        if self.budget is not None and self.records:
            self.budget.give(len(self.records))


class Budget:
    """Bytes of records held for excerpts across every session. The proxy's thread takes, the audit
    writer's thread gives back once it built them; a lock keeps the count exact across the two."""

    def __init__(self, limit: int = BUDGET_BYTES) -> None:
        self.limit = limit
        self.held = 0
        self.refused = 0  # sources not held because the budget was spent, over the process's life
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit:
                self.refused += 1
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held = max(0, self.held - n)


SHARED_BUDGET = Budget()


def first_batches(records: bytes, count: int) -> tuple[bytes, int]:
    """(the leading batches of `records` that hold its first `count` records, how many records they declare),
    read from batch headers only; with the header of a batch that runs past the end, when one comes first
    (so the excerpt can say so)."""
    n, pos, seen = len(records), 0, 0
    while seen < count and n - pos >= _HEADER_SIZE:
        length = _LENGTH.unpack_from(records, pos + 8)[0]
        end = pos + 12 + length
        if length < _HEADER_SIZE - 12 or end > n:
            return records[:pos + _HEADER_SIZE], seen
        if records[pos + 16] == 2:
            seen += max(0, _COUNT.unpack_from(records, pos + 57)[0])
        pos = end
    if seen < count and pos < n:  # less than a batch header left: kept, so a truncated batch is noticed
        return records, seen
    return (records if pos >= n else records[:pos]), seen


def take(topic: str, partition: int, records: bytes | None, plan: ExcerptPlan, limit: int | None = None,
         budget: Budget = SHARED_BUDGET) -> tuple[ExcerptSource | None, int]:
    """(what the audit writer needs to excerpt at most `limit` (default: the plan's) records of this
    partition, or None when it has no records; how many records that holds)."""
    if not records:
        return None, 0
    limit = plan.records if limit is None else limit
    held, seen = first_batches(bytes(records), limit)
    if not budget.take(len(held)):
        return ExcerptSource(topic, partition, b"", plan, limit,
                             note=f"not excerpted: {budget.held:,} bytes of records already wait for the audit "
                                  f"writer, the most it holds ({budget.limit:,})"), limit
    return ExcerptSource(topic, partition, held, plan, limit, budget=budget), min(seen, limit)


def take_topic(topic: str, partitions, plan: ExcerptPlan, budget: Budget = SHARED_BUDGET) -> list[ExcerptSource]:
    """Sources for the first `plan.records` records of one topic in a request or response, across its
    partitions in order; `partitions` yields (partition index, records)."""
    out, left = [], plan.records
    for index, records in partitions:
        if left <= 0:
            break
        source, taken = take(topic, index, records, plan, left, budget)
        if source is not None:
            out.append(source)
            left -= max(taken, 1) if source.note is None else left
    return out


__all__ = ["AuditMasker", "Budget", "DECOMPRESS_LIMIT", "ExcerptPlan", "ExcerptSource", "MASK_LIMIT",
           "SHARED_BUDGET", "audit_masker", "first_batches", "plan_for", "take", "take_topic"]
