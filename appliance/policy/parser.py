"""Reading a policy file: YAML in, a validated `Policy` out, or one error naming file, line and key.

The YAML is composed, not loaded, so every value keeps its position and every
error can say `FILE line N: key 'x' ...` and what would be valid. Names are
taken as written: `topics: [no, 123]` means the topics `no` and `123`, not
false and a number. Nothing is guessed: unknown keys, repeated keys and bare
names with glob characters are errors. The language is described in
docs/policy.md; its `masking:` section, read into `Policy.masking`, in
docs/masking.md; its `recording:` section, read into `Policy.recording`, in
docs/recording.md ("Depth").
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from appliance.identity.enrollment import NAME_PATTERN, NAME_RULE, is_identity_name
from appliance.policy.model import (
    RESERVED_RULE_NAMES,
    Approval,
    Effect,
    GrantScope,
    Operation,
    Pattern,
    PatternError,
    PatternKind,
    Policy,
    Rule,
)

FORMAT_VERSION = 1
TOP_LEVEL_KEYS = ("version", "immutable_topics", "deny_static_credentials", "rules", "masking", "recording")
RULE_KEYS = ("name", "effect", "identities", "groups", "operations", "topics", "consumer_groups",
             "transactional_ids", "cluster", "approval")
APPROVAL_KEYS = ("approvers", "approvals", "hold_s", "pending_s", "denied_for_s", "grant", "webhook")
GRANT_KEYS = ("ttl_s", "scope", "uses")
# Bounds of an approval's times, in seconds. The hold stays below what clients wait for an answer (Kafka's
# request.timeout.ms is 30 s by default; the proxy's own request_timeout_s bounds it too).
HOLD_S_RANGE = (1, 300)
PENDING_S_RANGE = (1, 7 * 86400)
GRANT_TTL_S_RANGE = (1, 30 * 86400)
DENIED_FOR_S_RANGE = (0, 7 * 86400)
GRANT_USES_RANGE = (1, 1000)
RESOURCE_KEYS = ("topics", "consumer_groups", "transactional_ids", "cluster")
MASK_RULE_KEYS = ("name", "topics", "on", "fields", "detectors", "headers", "action", "invalid", "binary")
MASK_ACTIONS = ("redact", "hash", "remove", "keep_last")
RECORDING_RULE_KEYS = ("name", "identities", "topics", "depth", "value_bytes", "records_per_request")

# Kafka's own limits on topic names (kafka.common.internals.Topic).
_TOPIC_CHARACTERS = re.compile(r"^[A-Za-z0-9._-]+$")
_TOPIC_GLOB_CHARACTERS = re.compile(r"^[A-Za-z0-9._\-*?\[\]!]+$")
_TOPIC_MAX_LENGTH = 249

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, line and key, and what would be valid."""


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at `path`."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the policy file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: the policy file is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_policy(text, source=str(path))


def parse_policy(text: str, *, source: str) -> Policy:
    """Validate policy YAML; `source` names it in errors (usually the file's path)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source} line {mark.line + 1}" if mark else source
        raise PolicyError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise PolicyError(f"{source}: not valid YAML: {e}") from None
    return _Reader(source).policy(root)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = SafeConstructor()

    # --- errors ------------------------------------------------------------------

    def error(self, node: Node, key: str, message: str, rule: str | None = None) -> PolicyError:
        context = f" of {rule}" if rule else ""
        return PolicyError(f"{self.source} line {node.start_mark.line + 1}: key {key!r}{context} {message}")

    # --- generic shapes ----------------------------------------------------------

    def mapping(self, node: Node, allowed: tuple[str, ...], *, what: str, rule: str | None = None,
                ) -> dict[str, tuple[Node, Node]]:
        """Keys to (key node, value node); unknown and repeated keys are errors."""
        seen: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else "<not a name>"
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(key_node, key, f"is not {what}{hint}; valid keys are: {', '.join(allowed)}", rule)
            if key in seen:
                raise self.error(key_node, key, f"appears twice (first at line {seen[key][0].start_mark.line + 1}); "
                                                f"give each key once", rule)
            seen[key] = (key_node, value_node)
        return seen

    def text(self, node: Node, key: str, *, what: str, rule: str | None = None, item: int | None = None) -> str:
        """A scalar as written: `no` and `123` are names here, not a boolean and a number."""
        at = f"item {item} " if item is not None else ""
        if not isinstance(node, ScalarNode):
            shape = "a list" if isinstance(node, SequenceNode) else "a mapping"
            raise self.error(node, key, f"{at}must be {what}, not {shape}", rule)
        if node.value == "":
            raise self.error(node, key, f"{at}is empty; expected {what}", rule)
        return node.value

    def items(self, node: Node, key: str, *, example: str, rule: str | None = None) -> list[Node]:
        """A list's items; a key left empty (`topics:`) is an empty list."""
        if isinstance(node, ScalarNode) and node.tag == _NULL_TAG and node.value == "":
            return []
        if not isinstance(node, SequenceNode):
            raise self.error(node, key, f"must be a list, e.g. {key}: {example}", rule)
        return list(node.value)

    def flag(self, node: Node, key: str, rule: str | None = None) -> bool:
        if isinstance(node, ScalarNode) and node.tag == _BOOL_TAG:
            return bool(self.constructor.construct_object(node))
        shown = node.value if isinstance(node, ScalarNode) else "a list or mapping"
        raise self.error(node, key, f"must be true or false, not {shown!r}", rule)

    # --- the document ------------------------------------------------------------

    def policy(self, root: Node | None) -> Policy:
        if root is None:
            raise PolicyError(f"{self.source}: the policy is empty; it needs at least 'version: {FORMAT_VERSION}' "
                              f"and 'rules:' to allow anything")
        if not isinstance(root, MappingNode):
            raise PolicyError(f"{self.source} line {root.start_mark.line + 1}: the top level must be a mapping with "
                              f"the keys {', '.join(TOP_LEVEL_KEYS)}")
        keys = self.mapping(root, TOP_LEVEL_KEYS, what="a policy setting")
        if "version" not in keys:
            raise PolicyError(f"{self.source} line {root.start_mark.line + 1}: key 'version' is missing; "
                              f"start the file with 'version: {FORMAT_VERSION}'")
        version = keys["version"][1]
        if not (isinstance(version, ScalarNode) and version.tag == _INT_TAG
                and self.constructor.construct_object(version) == FORMAT_VERSION):
            shown = version.value if isinstance(version, ScalarNode) else "a list or mapping"
            raise self.error(version, "version", f"must be {FORMAT_VERSION} (the only format so far), not {shown!r}")
        immutable: tuple[Pattern, ...] = ()
        if "immutable_topics" in keys:
            node = keys["immutable_topics"][1]
            immutable = tuple(self.pattern(item, "immutable_topics", i, topic=True)
                              for i, item in enumerate(self.items(node, "immutable_topics",
                                                                  example="[audit-log, 'prefix:ledger.']"), 1))
        static_denied: tuple[Pattern, ...] = ()
        if "deny_static_credentials" in keys:
            static_denied = self.names({"deny_static_credentials": keys["deny_static_credentials"]},
                                       "deny_static_credentials", "the policy", what="identity", allow_star=True)
        rules: list[Rule] = []
        if "rules" in keys:
            lines: dict[str, int] = {}
            for i, item in enumerate(self.items(keys["rules"][1], "rules",
                                                example="[{name: ..., identities: [...], ...}]"), 1):
                rules.append(self.rule(item, i, lines))
        masking = self.masking(keys["masking"][1]) if "masking" in keys else None
        extra = {} if masking is None else {"masking": masking}
        if "recording" in keys:
            extra["recording"] = self.recording(keys["recording"][1])
        return Policy(rules=tuple(rules), immutable_topics=immutable, source=self.source,
                      static_credentials_denied=static_denied, **extra)

    def named_entry(self, node: Node, index: int, *, kind: str, section: str, allowed: tuple[str, ...],
                    lines: dict[str, int]) -> tuple[dict[str, tuple[Node, Node]], Node, str, int]:
        """One named item of `section` (a rule, a masking rule): its keys, name node, name and line.

        The name must be there and unique; `lines` maps each name seen so far to its line.
        """
        label = f"{kind} {index}"
        if not isinstance(node, MappingNode):
            raise self.error(node, section, f"item {index} must be a mapping with the keys {', '.join(allowed)}")
        line = node.start_mark.line + 1
        for key_node, value_node in node.value:  # name the item in errors about keys before its name
            if getattr(key_node, "value", None) == "name" and isinstance(value_node, ScalarNode) and value_node.value:
                label = f"{kind} {value_node.value!r}"
        keys = self.mapping(node, allowed, what=f"a {kind} setting", rule=label)
        if "name" not in keys:
            raise PolicyError(f"{self.source} line {line}: key 'name' is missing from {label}; "
                              f"every {kind} needs a unique name")
        name_node = keys["name"][1]
        name = self.text(name_node, "name", what=f"the {kind}'s name", rule=f"{kind} {index}")
        if name in lines:
            raise self.error(name_node, "name", f"{name!r} is already the name of the {kind} at line "
                                                f"{lines[name]}; {kind} names must be unique", rule=f"{kind} {index}")
        lines[name] = line
        return keys, name_node, name, line

    def rule(self, node: Node, index: int, lines: dict[str, int]) -> Rule:
        keys, name_node, name, line = self.named_entry(node, index, kind="rule", section="rules", allowed=RULE_KEYS,
                                                       lines=lines)
        if name in RESERVED_RULE_NAMES:
            raise self.error(name_node, "name", f"{name!r} is reserved for decisions no rule made; "
                                                f"choose another name", rule=f"rule {index}")
        label = f"rule {name!r}"

        effect = Effect.ALLOW
        if "effect" in keys:
            node_ = keys["effect"][1]
            value = self.text(node_, "effect", what="allow, deny or approve", rule=label)
            if value not in tuple(Effect):
                raise self.error(node_, "effect", f"must be allow, deny or approve, not {value!r}", rule=label)
            effect = Effect(value)
        approval = None
        if effect == Effect.APPROVE:
            if "approval" not in keys:
                raise PolicyError(f"{self.source} line {line}: {label} has effect approve but no key 'approval': "
                                  f"say who approves, e.g. approval: {{approvers: [kafka-admins]}}")
            approval = self.approval(keys["approval"][1], label)
        elif "approval" in keys:
            raise self.error(keys["approval"][0], "approval", f"is only for rules with effect approve; this rule's "
                                                              f"effect is {effect}", label)

        identities = self.names(keys, "identities", label, what="identity", allow_star=True)
        groups = self.names(keys, "groups", label, what="group", allow_star=False)
        operations = frozenset(self.operations(keys, label))
        topics = self.patterns(keys, "topics", label, topic=True)
        consumer_groups = self.patterns(keys, "consumer_groups", label)
        transactional_ids = self.patterns(keys, "transactional_ids", label)
        cluster = self.flag(keys["cluster"][1], "cluster", label) if "cluster" in keys else False

        if not identities and not groups:
            raise PolicyError(f"{self.source} line {line}: {label} names no one: give key 'identities' (names or '*') "
                              f"and/or key 'groups' with at least one entry")
        if not operations:
            raise PolicyError(f"{self.source} line {line}: {label} grants no operation: give key 'operations' with "
                              f"at least one of {', '.join(Operation)}")
        if not (topics or consumer_groups or transactional_ids or cluster):
            raise PolicyError(f"{self.source} line {line}: {label} names no resource: give at least one of the keys "
                              f"topics, consumer_groups, transactional_ids (non-empty) or 'cluster: true'")
        return Rule(name=name, effect=effect, identities=identities, groups=groups, operations=operations,
                    topics=topics, consumer_groups=consumer_groups, transactional_ids=transactional_ids,
                    cluster=cluster, line=line, approval=approval)

    def approval(self, node: Node, rule: str) -> Approval:
        """An approve rule's `approval:` mapping (docs/approvals.md)."""
        if not isinstance(node, MappingNode):
            raise self.error(node, "approval", "must be a mapping, e.g. approval: {approvers: [kafka-admins], "
                                               "approvals: 1, hold_s: 20, grant: {ttl_s: 3600}}", rule)
        keys = self.mapping(node, APPROVAL_KEYS, what="an approval setting", rule=rule)
        if "approvers" not in keys:
            raise self.error(node, "approval", "has no key 'approvers': name the groups whose people may approve, "
                                               "e.g. approvers: [kafka-admins]", rule)
        approvers = self.names(keys, "approvers", rule, what="group", allow_star=False)
        if not approvers:
            raise self.error(keys["approvers"][1], "approvers", "is empty: name at least one group", rule)
        if any(p.kind != PatternKind.EXACT for p in approvers):
            raise self.error(keys["approvers"][1], "approvers", "must name groups exactly (no 'prefix:' or 'glob:'): "
                                                                "who may approve is spelled out", rule)
        approvals = self.whole_number(keys, "approvals", rule, 1, (1, 10))
        hold_s = self.seconds(keys, "hold_s", rule, 20.0, HOLD_S_RANGE)
        pending_s = self.seconds(keys, "pending_s", rule, 3600.0, PENDING_S_RANGE)
        if pending_s < hold_s:
            raise self.error(keys["pending_s"][1], "pending_s", f"({pending_s:g}) is shorter than hold_s "
                                                                f"({hold_s:g}): a request stays pending at least "
                                                                f"as long as it is held", rule)
        denied_for_s = self.seconds(keys, "denied_for_s", rule, 600.0, DENIED_FOR_S_RANGE)
        ttl_s, scope, uses = 3600.0, GrantScope.REQUESTED, None
        if "grant" in keys:
            grant_node = keys["grant"][1]
            if not isinstance(grant_node, MappingNode):
                raise self.error(grant_node, "grant", "must be a mapping, e.g. grant: {ttl_s: 3600, scope: "
                                                      "requested}", rule)
            grant = self.mapping(grant_node, GRANT_KEYS, what="a grant setting", rule=rule)
            ttl_s = self.seconds(grant, "ttl_s", rule, ttl_s, GRANT_TTL_S_RANGE)
            if "scope" in grant:
                scope = GrantScope(self.choice(grant["scope"][1], "scope", rule, tuple(GrantScope)))
            if "uses" in grant:
                uses = self.whole_number(grant, "uses", rule, 1, GRANT_USES_RANGE)
        webhook = None
        if "webhook" in keys:
            webhook = self.text(keys["webhook"][1], "webhook", what="an http(s) URL", rule=rule)
            if not re.match(r"^https?://[^\s/]+(/\S*)?$", webhook):
                raise self.error(keys["webhook"][1], "webhook", f"must be an http:// or https:// URL, not "
                                                                f"{webhook!r}", rule)
        return Approval(approver_groups=tuple(str(p) for p in approvers), approvals=approvals, hold_s=hold_s,
                        pending_s=pending_s, denied_for_s=denied_for_s, grant_ttl_s=ttl_s, grant_scope=scope,
                        grant_uses=uses, webhook=webhook)

    def number(self, keys: dict[str, tuple[Node, Node]], key: str, rule: str, default: float,
               bounds: tuple[float, float], *, whole: bool) -> float:
        if key not in keys:
            return default
        node = keys[key][1]
        low, high = bounds
        kind = "a whole number" if whole else "a number of seconds"
        value = None
        if isinstance(node, ScalarNode) and node.tag in (_INT_TAG, "tag:yaml.org,2002:float"):
            value = self.constructor.construct_object(node)
        if value is None or (whole and not isinstance(value, int)) or not low <= value <= high:
            shown = node.value if isinstance(node, ScalarNode) else "a list or mapping"
            raise self.error(node, key, f"must be {kind} from {low:g} to {high:g}, not {shown!r}", rule)
        return value

    def whole_number(self, keys, key: str, rule: str, default: int, bounds: tuple[int, int]) -> int:
        return int(self.number(keys, key, rule, default, bounds, whole=True))

    def seconds(self, keys, key: str, rule: str, default: float, bounds: tuple[float, float]) -> float:
        return float(self.number(keys, key, rule, default, bounds, whole=False))

    # --- recording (docs/recording.md, Depth) ----------------------------------------

    def recording(self, node: Node):  # -> RecordingPolicy
        from appliance.policy.recording import RecordingPolicy
        lines: dict[str, int] = {}
        items = self.items(node, "recording", example="[{name: audit-payments, identities: [billing], "
                                                      "topics: ['prefix:payments.'], depth: excerpts}]")
        return RecordingPolicy(tuple(self.recording_rule(item, i, lines) for i, item in enumerate(items, 1)),
                               source=self.source)

    def recording_rule(self, node: Node, index: int, lines: dict[str, int]):  # -> RecordingRule
        from appliance.policy.recording import (RECORDS_PER_REQUEST_DEFAULT, RECORDS_PER_REQUEST_RANGE,
                                                VALUE_BYTES_DEFAULT, VALUE_BYTES_RANGE, Depth, RecordingRule)

        keys, _, name, line = self.named_entry(node, index, kind="recording rule", section="recording",
                                               allowed=RECORDING_RULE_KEYS, lines=lines)
        label = f"recording rule {name!r}"
        identities = self.names(keys, "identities", label, what="identity", allow_star=True)
        if not identities:
            raise PolicyError(f"{self.source} line {line}: {label} names no one: give key 'identities' with at "
                              f"least one identity name or pattern, or '*' for every identity")
        topics = self.patterns(keys, "topics", label, topic=True)
        if not topics:
            raise PolicyError(f"{self.source} line {line}: {label} names no topic: give key 'topics' with at least "
                              f"one topic pattern, e.g. topics: ['prefix:payments.'], or '*'")
        depth = Depth.OPERATIONS
        if "depth" in keys:
            depth = Depth(self.choice(keys["depth"][1], "depth", label, tuple(Depth)))
        value_bytes = self.whole_number(keys, "value_bytes", label, VALUE_BYTES_DEFAULT, VALUE_BYTES_RANGE)
        per_request = self.whole_number(keys, "records_per_request", label, RECORDS_PER_REQUEST_DEFAULT,
                                        RECORDS_PER_REQUEST_RANGE)
        if depth == Depth.OPERATIONS:
            for key in ("value_bytes", "records_per_request"):
                if key in keys:
                    raise self.error(keys[key][0], key, "is only for depth excerpts; this rule records operations "
                                                        "only, which stores no record content", label)
        return RecordingRule(name=name, identities=identities, topics=topics, depth=depth, value_bytes=value_bytes,
                             records_per_request=per_request, line=line)

    # --- masking (docs/masking.md) --------------------------------------------------

    def masking(self, node: Node):  # -> MaskingPolicy
        # Imported here: appliance.masking.rules imports the policy model, which this package's import runs.
        from appliance.masking.rules import MaskingPolicy
        lines: dict[str, int] = {}
        items = self.items(node, "masking", example="[{name: cards, topics: [payments], on: [produce], "
                                                    "detectors: [card]}]")
        return MaskingPolicy(tuple(self.mask_rule(item, i, lines) for i, item in enumerate(items, 1)),
                             source=self.source)

    def mask_rule(self, node: Node, index: int, lines: dict[str, int]):  # -> MaskRule
        from appliance.masking.actions import ActionKind
        from appliance.masking.detectors import Detector
        from appliance.masking.paths import JsonPath, PathError
        from appliance.masking.rules import Binary, Direction, Invalid, MaskRule

        keys, _, name, line = self.named_entry(node, index, kind="masking rule", section="masking",
                                               allowed=MASK_RULE_KEYS, lines=lines)
        label = f"masking rule {name!r}"

        topics = self.patterns(keys, "topics", label, topic=True)
        if not topics:
            raise PolicyError(f"{self.source} line {line}: {label} names no topic: give key 'topics' with at least "
                              f"one topic pattern, e.g. topics: [payments, 'prefix:payments.']")
        on = frozenset(self.choices(keys, "on", label, tuple(Direction), example="[produce]"))
        if not on:
            raise PolicyError(f"{self.source} line {line}: {label} says neither when to mask: give key 'on' with "
                              f"produce (the broker stores masked values) and/or fetch (consumers without "
                              f"unmask read masked values)")
        fields = []
        if "fields" in keys:
            for i, item in enumerate(self.items(keys["fields"][1], "fields", example="['$.card.number']",
                                                rule=label), 1):
                text = self.text(item, "fields", what="a JSON path such as '$.card.number'", rule=label, item=i)
                try:
                    fields.append((JsonPath.parse(text), item))
                except PathError as e:
                    raise self.error(item, "fields", f"item {i} {e}", label) from None
        detectors = frozenset(self.choices(keys, "detectors", label, tuple(Detector), example="[card, email]"))
        headers = []
        if "headers" in keys:
            for i, item in enumerate(self.items(keys["headers"][1], "headers", example="[authorization]",
                                                rule=label), 1):
                headers.append(self.text(item, "headers", what="a header key", rule=label, item=i).lower())
        if not (fields or detectors or headers):
            raise PolicyError(f"{self.source} line {line}: {label} finds nothing to mask: give at least one of the "
                              f"keys fields (JSON paths), detectors ({', '.join(Detector)}) or headers (header "
                              f"keys), non-empty")

        action = self.mask_action(keys, label)
        if action.kind == ActionKind.REMOVE:
            if detectors:
                raise self.error(keys["action"][1], "action", "is remove, which deletes JSON fields and headers, "
                                                              "but the rule has detectors, which find text inside "
                                                              "values: use redact, hash or {keep_last: N}, or move "
                                                              "the detectors to a rule of their own", label)
            root = next((node_ for path, node_ in fields if path.is_root), None)
            if root is not None:
                raise self.error(root, "fields", "is '$', the whole value, which remove cannot delete: name the "
                                                 "fields to remove, or use redact or hash", label)
        invalid = None
        if "invalid" in keys:
            invalid_node = keys["invalid"][1]
            invalid = Invalid(self.choice(invalid_node, "invalid", label, tuple(Invalid)))
            if invalid == Invalid.REJECT and Direction.PRODUCE not in on:
                raise self.error(invalid_node, "invalid", "is reject, but the rule applies only on fetch, where a "
                                                          "stored record cannot be refused: write "
                                                          "invalid: mask-whole", label)
        binary = Binary.LEAVE
        if "binary" in keys:
            binary = Binary(self.choice(keys["binary"][1], "binary", label, tuple(Binary)))
        return MaskRule(name=name, topics=topics, on=on, fields=tuple(p for p, _ in fields), detectors=detectors,
                        headers=frozenset(headers), action=action, invalid=invalid, binary=binary, line=line)

    def mask_action(self, keys: dict[str, tuple[Node, Node]], rule: str):  # -> Action
        from appliance.masking.actions import Action, ActionKind
        if "action" not in keys:
            return Action.redact()
        node = keys["action"][1]
        if isinstance(node, MappingNode):
            inner = self.mapping(node, ("keep_last",), what="an action with a setting (only keep_last has one)",
                                 rule=rule)
            if not inner:
                raise self.error(node, "action", "is an empty mapping; write e.g. action: {keep_last: 4}", rule)
            count = inner["keep_last"][1]
            if not (isinstance(count, ScalarNode) and count.tag == _INT_TAG
                    and self.constructor.construct_object(count) >= 0):
                shown = count.value if isinstance(count, ScalarNode) else "a list or mapping"
                raise self.error(count, "keep_last", f"must be how many characters to keep, a whole number of 0 "
                                                     f"or more, not {shown!r}", rule)
            return Action.keep_last(self.constructor.construct_object(count))
        value = self.choice(node, "action", rule, MASK_ACTIONS,
                            what="redact, hash, remove or {keep_last: N}")
        if value == ActionKind.KEEP_LAST:
            raise self.error(node, "action", "keep_last needs the number of characters to keep: write "
                                             "action: {keep_last: 4}", rule)
        return Action(ActionKind(value))

    def choice(self, node: Node, key: str, rule: str, valid: tuple[str, ...], *, what: str | None = None,
               item: int | None = None) -> str:
        """One of `valid`, with a did-you-mean hint."""
        valid = tuple(str(v) for v in valid)
        what = what or " or ".join(valid)
        value = self.text(node, key, what=what, rule=rule, item=item)
        if value not in valid:
            close = difflib.get_close_matches(value, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            at = f"item {item} " if item is not None else ""
            raise self.error(node, key, f"{at}must be {what}, not {value!r}{hint}", rule)
        return value

    def choices(self, keys: dict[str, tuple[Node, Node]], key: str, rule: str, valid: tuple[str, ...], *,
                example: str) -> list[str]:
        if key not in keys:
            return []
        return [self.choice(item, key, rule, valid, what=f"one of {', '.join(valid)}", item=i)
                for i, item in enumerate(self.items(keys[key][1], key, example=example, rule=rule), 1)]

    # --- rule parts --------------------------------------------------------------

    def names(self, keys: dict[str, tuple[Node, Node]], key: str, rule: str, *, what: str,
              allow_star: bool) -> tuple[Pattern, ...]:
        """Identity or group patterns: a name (exact), 'prefix:NAME', 'glob:PATTERN', or '*' (identities)."""
        if key not in keys:
            return ()
        result = []
        for i, item in enumerate(self.items(keys[key][1], key, example="[orders, 'prefix:ci-']", rule=rule), 1):
            value = self.text(item, key, what=f"{'an' if what[0] in 'aeiou' else 'a'} {what} name or pattern",
                              rule=rule, item=i)
            if value == "*" and not allow_star:
                raise self.error(item, key, f"item {i} is '*', which is not a group; to cover everyone write "
                                            f"identities: ['*']", rule)
            try:
                pattern = Pattern.parse(value)
            except PatternError as e:
                raise self.error(item, key, f"item {i} {e}", rule) from None
            if not _names_possible(pattern, what):
                star = ", or '*' for every identity" if allow_star else ""
                spiffe = ", and identities may be SPIFFE IDs (spiffe://trust-domain/path)" if what == "identity" else ""
                raise self.error(item, key, f"item {i} {value!r} is not a valid {what} name or pattern (so it could "
                                            f"never match): names use {NAME_RULE}{spiffe}; write 'prefix:NAME' or 'glob:PATTERN' for "
                                            f"more than one{star}", rule)
            result.append(pattern)
        return tuple(result)

    def operations(self, keys: dict[str, tuple[Node, Node]], rule: str) -> list[Operation]:
        if "operations" not in keys:
            return []
        result = []
        valid = tuple(o.value for o in Operation)
        for i, item in enumerate(self.items(keys["operations"][1], "operations", example="[produce, describe]",
                                            rule=rule), 1):
            value = self.text(item, "operations", what="an operation", rule=rule, item=i)
            if value not in valid:
                close = difflib.get_close_matches(value, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(item, "operations", f"item {i} {value!r} is not an operation{hint}; valid "
                                                     f"operations are: {', '.join(valid)}", rule)
            result.append(Operation(value))
        return result

    def patterns(self, keys: dict[str, tuple[Node, Node]], key: str, rule: str, *,
                 topic: bool = False) -> tuple[Pattern, ...]:
        if key not in keys:
            return ()
        example = "[orders, 'prefix:orders.']" if topic else "[billing, 'glob:billing-*']"
        return tuple(self.pattern(item, key, i, topic=topic, rule=rule)
                     for i, item in enumerate(self.items(keys[key][1], key, example=example, rule=rule), 1))

    def pattern(self, node: Node, key: str, item: int, *, topic: bool, rule: str | None = None) -> Pattern:
        text = self.text(node, key, what="a name, 'prefix:NAME', 'glob:PATTERN' or '*'", rule=rule, item=item)
        try:
            pattern = Pattern.parse(text)
        except PatternError as e:
            raise self.error(node, key, f"item {item} {e}", rule) from None
        if topic:
            problem = _topic_problem(pattern)
            if problem:
                raise self.error(node, key, f"item {item} {text!r} {problem}", rule)
        return pattern


# What a prefix of a SPIFFE ID can be: the scheme, the trust domain, then segments (the last may be cut short).
_SPIFFE_PREFIX = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]*)*$")
_NAME_GLOB = re.compile(r"^[A-Za-z0-9._@:*?\[\]!-]+$")
_SPIFFE_GLOB = re.compile(r"^spiffe://[a-z0-9._*?\[\]!-]+(/[A-Za-z0-9._*?\[\]!-]*)*$")


def _names_possible(pattern: Pattern, what: str) -> bool:
    """Whether some valid identity or group name could match (a typo'd pattern would silently match none).
    Identities may be SPIFFE IDs; groups are plain names."""
    spiffe = what == "identity"
    if pattern.kind == PatternKind.EXACT:
        return is_identity_name(pattern.value) if spiffe else NAME_PATTERN.match(pattern.value) is not None
    if pattern.kind == PatternKind.PREFIX:
        return (NAME_PATTERN.match(pattern.value) is not None
                or spiffe and _SPIFFE_PREFIX.match(pattern.value) is not None)
    if pattern.kind == PatternKind.GLOB:
        return (_NAME_GLOB.match(pattern.value) is not None
                or spiffe and _SPIFFE_GLOB.match(pattern.value) is not None)
    return True


def _topic_problem(pattern: Pattern) -> str | None:
    """Why no Kafka topic could ever match this pattern, or None."""
    if pattern.kind == PatternKind.ANY:
        return None
    legal = _TOPIC_GLOB_CHARACTERS if pattern.kind == PatternKind.GLOB else _TOPIC_CHARACTERS
    if not legal.match(pattern.value):
        if pattern.kind == PatternKind.EXACT and ":" in pattern.value:
            return ("is not a topic name (topics cannot contain ':'); patterns are written 'prefix:NAME', "
                    "'glob:PATTERN' or '*'")
        return "cannot match any topic: Kafka topic names use only letters, digits, '.', '_' and '-'"
    if pattern.kind != PatternKind.GLOB and len(pattern.value) > _TOPIC_MAX_LENGTH:
        return f"cannot match any topic: Kafka topic names are at most {_TOPIC_MAX_LENGTH} characters"
    if pattern.kind == PatternKind.EXACT and pattern.value in (".", ".."):
        return "cannot match any topic: Kafka does not allow the topic names '.' and '..'"
    return None
