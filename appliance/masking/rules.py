"""Masking rules, the masking part of a policy, and the per-topic record masker the proxy calls.

`MaskingPolicy` is built by the policy parser (the `masking:` section) and
carried on `Policy.masking`. The proxy binds it to the appliance's secret
once (`with_secret`), then asks `for_topic(topic, direction)` for each
partition it forwards: None means no rule applies and the original bytes go
through untouched; otherwise the `RecordMasker` masks record by record
(`appliance.masking.batches.rewrite_records` drives it over record batches).
Maskers are cached per (topic, direction); nothing here reads a clock, a
file or a socket.

Who sees what on fetch is the proxy's decision: an identity granted `unmask`
on the topic (`policy.decide(principal, Operation.UNMASK, ResourceType.TOPIC,
topic)`) reads the stored value; everyone else reads it through the fetch
masker.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import StrEnum

from appliance.masking.actions import Action, ActionKind, BoundAction
from appliance.masking.detectors import Detector, could_match
from appliance.masking.paths import REMOVE, JsonPath
from appliance.masking.values import InvalidValue, ValueMasking
from appliance.policy.model import Pattern

MASKER_CACHE_SIZE = 4096


class Direction(StrEnum):
    PRODUCE = "produce"  # the broker stores the masked value
    FETCH = "fetch"  # consumers without `unmask` read the masked value


class Invalid(StrEnum):
    REJECT = "reject"  # refuse the produce (on fetch, a stored record cannot be refused: mask-whole)
    MASK_WHOLE = "mask-whole"  # replace the whole value with the action's output


class Binary(StrEnum):
    LEAVE = "leave"  # a value that is not UTF-8 passes untouched
    DROP = "drop"  # it becomes an empty value (not null: null is a tombstone on a compacted topic)


class MaskingError(ValueError):
    """Masking cannot run as configured (e.g. a rule hashes and no secret was given)."""


class MaskingRejected(ValueError):
    """A record a rule with `invalid: reject` refuses, or a batch that cannot be rewritten safely.

    Names the topic, partition, the batch's base offset and the record's offset
    delta (its position in the batch), the rule, and why.
    """

    def __init__(self, reason: str, *, topic: str, rule: str | None = None, partition: int | None = None,
                 base_offset: int | None = None, offset_delta: int | None = None) -> None:
        self.reason = reason
        self.topic = topic
        self.rule = rule
        self.partition = partition
        self.base_offset = base_offset
        self.offset_delta = offset_delta
        where = f"topic {topic!r}"
        if partition is not None:
            where += f" partition {partition}"
        if base_offset is not None:
            where += f", batch at base offset {base_offset}"
        if offset_delta is not None:
            where += f", record at offset delta {offset_delta}"
        by = f"masking rule {rule!r} refused a record on {where}" if rule else f"cannot mask {where}"
        super().__init__(f"{by}: {reason}")

    def located(self, *, partition: int | None, base_offset: int | None,
                offset_delta: int | None) -> MaskingRejected:
        return MaskingRejected(self.reason, topic=self.topic, rule=self.rule, partition=partition,
                               base_offset=base_offset, offset_delta=offset_delta)


@dataclass(frozen=True, slots=True)
class MaskRule:
    """One `masking:` entry: on which topics and directions, what to find, and what to write instead.

    `headers` holds header keys lowercased (header keys match case-insensitively).
    `invalid` left None means reject when the rule applies on produce, mask-whole otherwise.
    """

    name: str
    topics: tuple[Pattern, ...]
    on: frozenset[Direction]
    fields: tuple[JsonPath, ...] = ()
    detectors: frozenset[Detector] = frozenset()
    headers: frozenset[str] = frozenset()
    action: Action = Action(ActionKind.REDACT)
    invalid: Invalid | None = None
    binary: Binary = Binary.LEAVE
    line: int = field(default=0, compare=False)  # where the rule starts in its file; 0 when built in code

    def __post_init__(self) -> None:
        if not self.topics:
            raise ValueError(f"masking rule {self.name!r} names no topic")
        if not self.on:
            raise ValueError(f"masking rule {self.name!r} applies to neither produce nor fetch")
        if not (self.fields or self.detectors or self.headers):
            raise ValueError(f"masking rule {self.name!r} finds nothing: give fields, detectors or headers")
        if self.action.kind == ActionKind.REMOVE and self.detectors:
            raise ValueError(f"masking rule {self.name!r}: remove deletes JSON fields or headers, and detectors "
                             f"find text inside values")
        if self.action.kind == ActionKind.REMOVE and any(p.is_root for p in self.fields):
            raise ValueError(f"masking rule {self.name!r}: remove cannot delete the whole value ('$')")
        if self.invalid is None:
            object.__setattr__(self, "invalid", Invalid.REJECT if Direction.PRODUCE in self.on else Invalid.MASK_WHOLE)
        elif self.invalid == Invalid.REJECT and Direction.PRODUCE not in self.on:
            raise ValueError(f"masking rule {self.name!r}: invalid: reject needs on: [produce]; a fetched record "
                             f"cannot be refused")

    def applies(self, topic: str, direction: Direction | str) -> bool:
        return direction in self.on and any(p.matches(topic) for p in self.topics)

    @property
    def hashes(self) -> bool:
        return self.action.kind == ActionKind.HASH


@dataclass(frozen=True, slots=True)
class MaskResult:
    """A record's value and headers after masking; the very objects given when `masked` is 0."""

    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    masked: int


class RecordMasker:
    """Masks records of one topic in one direction with the rules that apply there, in file order."""

    __slots__ = ("topic", "direction", "rules", "secret", "_values", "_headers", "_header_keys", "_skippable",
                 "_detectors", "_drop_binary")

    def __init__(self, topic: str, direction: Direction | str, rules: tuple[MaskRule, ...],
                 secret: bytes | None = None) -> None:
        self.topic = topic
        self.direction = Direction(direction)
        self.rules = rules
        self.secret = secret
        for rule in rules:
            if rule.hashes and not secret:
                raise MaskingError(f"masking rule {rule.name!r} hashes values but the masking policy has no "
                                   f"secret: bind it with MaskingPolicy.with_secret(load_or_create_secret(path))")
        produce = self.direction == Direction.PRODUCE
        self._values = tuple(
            ValueMasking(rule=r.name, action=BoundAction(r.action, secret), paths=r.fields, detectors=r.detectors,
                         reject_invalid=produce and r.invalid == Invalid.REJECT, drop_binary=r.binary == Binary.DROP)
            for r in rules if r.fields or r.detectors or r.binary == Binary.DROP)
        self._headers = tuple((r.headers, BoundAction(r.action, secret)) for r in rules if r.headers)
        self._header_keys = frozenset().union(*(r.headers for r in rules))
        self._detectors = frozenset().union(*(r.detectors for r in rules))
        self._drop_binary = any(r.binary == Binary.DROP for r in rules)
        # A whole batch can be skipped on a cheap look at its bytes unless some rule must parse every value.
        self._skippable = not any(r.fields for r in rules) and all(k.isascii() for k in self._header_keys)

    def with_secret(self, secret: bytes) -> RecordMasker:
        return self if secret == self.secret else RecordMasker(self.topic, self.direction, self.rules, secret)

    @property
    def wants_headers(self) -> bool:
        return bool(self._header_keys)

    def could_match(self, data: bytes) -> bool:
        """False only when no record whose bytes lie in `data` (a decompressed batch) can need masking."""
        if not self._skippable:
            return True
        if self._drop_binary and not data.isascii():
            return True
        if self._header_keys:
            lowered = data.lower()
            if any(k.encode() in lowered for k in self._header_keys):
                return True
        return bool(self._detectors) and could_match(data, self._detectors)

    def mask(self, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes | None]]) -> MaskResult:
        """Mask one record (its key is never changed). Raises MaskingRejected for `invalid: reject`."""
        masked = 0
        new_value = value
        if value is not None:
            for masking in self._values:
                try:
                    new_value, n = masking.mask(new_value)  # type: ignore[arg-type]
                except InvalidValue as e:
                    raise MaskingRejected(str(e), topic=self.topic, rule=masking.rule) from None
                masked += n
        new_headers = headers
        if headers and self._header_keys:
            new_headers, n = self._mask_headers(headers)
            masked += n
        if not masked:
            return MaskResult(value, headers, 0)
        return MaskResult(new_value, new_headers, masked)

    def _mask_headers(self, headers: list[tuple[str, bytes | None]]) -> tuple[list[tuple[str, bytes | None]], int]:
        keys = self._header_keys
        if not any(k.lower() in keys for k, _ in headers):
            return headers, 0
        out = list(headers)
        count = 0
        for names, action in self._headers:
            kept = []
            for k, v in out:
                if k.lower() in names:
                    new = action.header(v)
                    if new is REMOVE:
                        count += 1
                        continue
                    if new is not v:
                        count += 1
                    v = new  # type: ignore[assignment]
                kept.append((k, v))
            out = kept
        return (out, count) if count else (headers, 0)

    def __repr__(self) -> str:
        return f"RecordMasker({self.topic!r}, {self.direction}, rules={[r.name for r in self.rules]})"


@dataclass(frozen=True, slots=True, eq=False)
class MaskingPolicy:
    """The `masking:` section: rules in file order, and the secret `hash` uses (bound by the proxy)."""

    rules: tuple[MaskRule, ...] = ()
    secret: bytes | None = field(default=None, repr=False)
    source: str = "<policy>"
    _for_topic: object = field(init=False, repr=False)
    _for_audit: object = field(init=False, repr=False)
    _text: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{self.source}: masking rule names must be unique; repeated: {', '.join(duplicates)}")
        object.__setattr__(self, "_for_topic", functools.lru_cache(maxsize=MASKER_CACHE_SIZE)(self._build))
        object.__setattr__(self, "_for_audit", functools.lru_cache(maxsize=MASKER_CACHE_SIZE)(self._build_audit))
        object.__setattr__(self, "_text", functools.lru_cache(maxsize=1)(self._build_text))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def with_secret(self, secret: bytes) -> MaskingPolicy:
        """The same rules, hashing with `secret` (see appliance.masking.secret.load_or_create_secret)."""
        return MaskingPolicy(self.rules, secret, self.source)

    def rule_named(self, name: str) -> MaskRule | None:
        return next((r for r in self.rules if r.name == name), None)

    def for_topic(self, topic: str, direction: Direction | str) -> RecordMasker | None:
        """The masker for records of `topic` in `direction` ("produce" or "fetch"), or None when no rule applies."""
        return self._for_topic(topic, Direction(direction))  # type: ignore[operator]

    def for_audit(self, topic: str, applied: Direction | str | None):  # -> AuditMasker | None
        """The masker an audit excerpt of `topic` goes through: every rule covering the topic, in both
        directions (appliance.masking.excerpts); `applied`: the direction the data path already masked."""
        return self._for_audit(topic, None if applied is None else Direction(applied))  # type: ignore[operator]

    def mask_text(self, text: str) -> str:
        """Free text the audit and the status keep about a workload, its command line: a client may pass
        record values there (`kcat -P ... <<< card`, `python -c '...'`), so every masking rule's detectors
        scan it, whatever topics the rule covers, each with its rule's action. Unchanged without any."""
        maskings = self._text()  # type: ignore[operator]
        if not maskings or not text:
            return text
        data = text.encode("utf-8", "replace")
        for masking in maskings:
            data, _ = masking.mask(data)
        return data.decode("utf-8", "replace")

    def _build_text(self):
        from appliance.masking.excerpts import text_maskings  # it imports this module
        return text_maskings(self)

    def _build_audit(self, topic: str, applied: Direction | None):
        from appliance.masking.excerpts import audit_masker  # it imports this module
        return audit_masker(self, topic, applied)

    def _build(self, topic: str, direction: Direction) -> RecordMasker | None:
        rules = tuple(r for r in self.rules if r.applies(topic, direction))
        return RecordMasker(topic, direction, rules, self.secret) if rules else None
