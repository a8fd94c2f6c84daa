"""The policy's `recording:` section: how deeply each identity's sessions on each topic are recorded.

Pure data, parsed with the rest of the policy (docs/policy.md, "Recording";
docs/recording.md, "Depth"). A rule names identities and topics with the
patterns access rules use, and a depth:

- `operations`: every request is recorded with its decision, topics and
  counts, and no record content (the default, and what happens when no rule
  matches);
- `excerpts`: the same, plus an excerpt of the first `records_per_request`
  records of each covered topic in a Produce request or a Fetch response:
  key, headers and the first `value_bytes` bytes of the value, after every
  masking rule that covers the topic (appliance.masking.excerpts).

The first rule (in file order) whose identity and topic patterns match
decides, so a rule with depth operations can carve an exception out of a
broader excerpts rule placed after it. `for_topic` answers on the proxy's
path and is cached per policy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import StrEnum

from appliance.policy.model import Pattern

VALUE_BYTES_DEFAULT = 256
VALUE_BYTES_RANGE = (1, 4096)
RECORDS_PER_REQUEST_DEFAULT = 10
RECORDS_PER_REQUEST_RANGE = (1, 100)
_CACHE = 4096


class Depth(StrEnum):
    OPERATIONS = "operations"
    EXCERPTS = "excerpts"


@dataclass(frozen=True, slots=True)
class RecordingRule:
    """One `recording:` entry: whose sessions, on which topics, at which depth, with which bounds."""

    name: str
    identities: tuple[Pattern, ...]
    topics: tuple[Pattern, ...]
    depth: Depth = Depth.OPERATIONS
    value_bytes: int = VALUE_BYTES_DEFAULT
    records_per_request: int = RECORDS_PER_REQUEST_DEFAULT
    line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not self.identities or not self.topics:
            raise ValueError(f"recording rule {self.name!r} needs at least one identity and one topic pattern")
        low, high = VALUE_BYTES_RANGE
        if not low <= self.value_bytes <= high:
            raise ValueError(f"recording rule {self.name!r}: value_bytes must be {low}..{high}")
        low, high = RECORDS_PER_REQUEST_RANGE
        if not low <= self.records_per_request <= high:
            raise ValueError(f"recording rule {self.name!r}: records_per_request must be {low}..{high}")

    def covers_identity(self, identity: str) -> bool:
        return any(p.matches(identity) for p in self.identities)

    def covers(self, identity: str, topic: str) -> bool:
        return self.covers_identity(identity) and any(p.matches(topic) for p in self.topics)


@dataclass(frozen=True, slots=True, eq=False)
class RecordingPolicy:
    """The `recording:` section, rules in file order; empty: every session at depth operations."""

    rules: tuple[RecordingRule, ...] = ()
    source: str = "<policy>"
    _for_topic: object = field(init=False, repr=False)
    _excerpting: object = field(init=False, repr=False)
    _excerpts: bool = field(init=False, repr=False)  # some rule records at depth excerpts

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{self.source}: recording rule names must be unique; repeated: {', '.join(duplicates)}")
        object.__setattr__(self, "_for_topic", functools.lru_cache(maxsize=_CACHE)(self._first))
        object.__setattr__(self, "_excerpting", functools.lru_cache(maxsize=_CACHE)(self._any_excerpts))
        object.__setattr__(self, "_excerpts", any(r.depth == Depth.EXCERPTS for r in self.rules))

    def __bool__(self) -> bool:
        """Whether any rule records excerpts: when none does, nothing about recording runs per request."""
        return self._excerpts

    def rule_named(self, name: str) -> RecordingRule | None:
        return next((r for r in self.rules if r.name == name), None)

    def for_topic(self, identity: str, topic: str) -> RecordingRule | None:
        """The rule that records `identity`'s records on `topic` as excerpts, or None (depth operations)."""
        return self._for_topic(identity, topic)  # type: ignore[operator]

    def excerpts_some_topic(self, identity: str) -> bool:
        """Whether some rule could record excerpts for `identity` (on some topic): a Fetch response of theirs
        must then be read, whatever its size, to see which topics it carries."""
        return self._excerpting(identity)  # type: ignore[operator]

    def _first(self, identity: str, topic: str) -> RecordingRule | None:
        for rule in self.rules:
            if rule.covers(identity, topic):
                return rule if rule.depth == Depth.EXCERPTS else None
        return None

    def _any_excerpts(self, identity: str) -> bool:
        return any(r.depth == Depth.EXCERPTS and r.covers_identity(identity) for r in self.rules)
