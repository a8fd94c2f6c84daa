"""Which permission each Kafka API needs: the one table the proxy enforces and docs/policy.md publishes.

An API is either open to every enrolled workload (`OPEN`), or needs:
- `Whole` checks: a resource the request names once (a group, a transactional
  id) or the cluster; a refusal answers the whole request with an error;
- an `Each` check: a collection of entries each naming a resource (topics in a
  Produce, groups in a DeleteGroups); refused entries are cut from the request
  and answered with an error in an otherwise normal response.
An API key missing from the table is refused with an error response, never
forwarded. `max_version` caps versions whose requests the table cannot read
(topic ids instead of names, broker-only shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from appliance.kafka import apis
from appliance.policy.model import Operation as Op, ResourceType as R

# Config resource types in Describe/Alter/IncrementalAlterConfigs (Kafka's ConfigResource.Type).
_CONFIG_TOPIC = 2
_CONFIG_GROUP = 32

DENIED_ERROR = {
    R.TOPIC: ErrorCode.topic_authorization_failed,
    R.GROUP: ErrorCode.group_authorization_failed,
    R.TRANSACTIONAL_ID: ErrorCode.transactional_id_authorization_failed,
    R.CLUSTER: ErrorCode.cluster_authorization_failed,
}
IMMUTABLE_ERROR = ErrorCode.policy_violation


@dataclass(frozen=True, slots=True)
class Whole:
    """One resource for the whole request: the value of `field` (None: the cluster)."""

    resource: R
    operation: Op
    field: str | None = None
    optional: bool = False  # a null value skips the check (e.g. no transactional id)
    # key_type values (FindCoordinator) that change the resource: {value: (resource, operation)}
    kinds: tuple[tuple[int, R, Op], ...] = ()
    kind_field: str | None = None


@dataclass(frozen=True, slots=True)
class Each:
    """Entries of request collection `field`, each naming a resource in `name` (None: the entry is the name)."""

    resource: R
    operation: Op
    field: str
    name: str | None
    response_field: str
    # Per-entry resource type (Describe/AlterConfigs): entry field, {value: (resource, operation)}, fallback.
    kind_field: str | None = None
    kinds: tuple[tuple[int, R, Op], ...] = ()
    top_kind_field: str | None = None  # kind from a top-level field (FindCoordinator v4+)


@dataclass(frozen=True, slots=True)
class Permission:
    api_key: int
    whole: tuple[Whole, ...] = ()
    each: Each | None = None
    open: bool = False
    idempotent_produce: bool = False  # InitProducerId without a transactional id
    max_version: int | None = None
    since_version: int = 0  # this row applies from this request version up (rows listed newest last)
    note: str = ""

    @property
    def name(self) -> str:
        return apis.api_name(self.api_key)


def _cluster(api_key: int, op: Op = Op.ADMIN, note: str = "", **kw) -> Permission:
    return Permission(api_key, whole=(Whole(R.CLUSTER, op),), note=note, **kw)


_FIND_KINDS = ((0, R.GROUP, Op.GROUP), (1, R.TRANSACTIONAL_ID, Op.TRANSACTIONS))
_DESCRIBE_CONFIG_KINDS = ((_CONFIG_TOPIC, R.TOPIC, Op.DESCRIBE), (_CONFIG_GROUP, R.GROUP, Op.DESCRIBE))
_ALTER_CONFIG_KINDS = ((_CONFIG_TOPIC, R.TOPIC, Op.ALTER), (_CONFIG_GROUP, R.GROUP, Op.ALTER))

TABLE: tuple[Permission, ...] = (
    Permission(0, whole=(Whole(R.TRANSACTIONAL_ID, Op.TRANSACTIONS, "transactional_id", optional=True),),
               each=Each(R.TOPIC, Op.PRODUCE, "topic_data", "name", "responses")),
    Permission(1, each=Each(R.TOPIC, Op.CONSUME, "topics", "topic", "responses"),
               note="decided again on every topic the response carries, under the policy in force then "
                    "(fetch sessions list no partitions); a revoked topic is dropped from the fetch session"),
    Permission(2, each=Each(R.TOPIC, Op.CONSUME, "topics", "name", "topics")),
    Permission(3, each=Each(R.TOPIC, Op.DESCRIBE, "topics", "name", "topics"),
               note="a request for every topic (v0: empty list; v1+: null) answers only the topics the workload "
                    "may describe; auto-creation needs create; authorized operations are the workload's"),
    Permission(8, whole=(Whole(R.GROUP, Op.GROUP, "group_id"),),
               each=Each(R.TOPIC, Op.CONSUME, "topics", "name", "topics"), max_version=9),
    Permission(9, whole=(Whole(R.GROUP, Op.GROUP, "group_id"),),
               each=Each(R.TOPIC, Op.CONSUME, "topics", "name", "topics"), max_version=9,
               note="topics are decided on the answer: refused by name, left out of \"all of the group's\""),
    Permission(9, each=Each(R.GROUP, Op.GROUP, "groups", "group_id", "groups"), since_version=8, max_version=9,
               note="v8+: each group is checked; its topics need consume, decided on the answer"),
    Permission(10, whole=(Whole(R.GROUP, Op.GROUP, "key", kind_field="key_type", kinds=_FIND_KINDS),)),
    Permission(10, each=Each(R.GROUP, Op.GROUP, "coordinator_keys", None, "coordinators", top_kind_field="key_type",
                             kinds=_FIND_KINDS), since_version=4),
    Permission(11, whole=(Whole(R.GROUP, Op.GROUP, "group_id"),)),
    Permission(12, whole=(Whole(R.GROUP, Op.GROUP, "group_id"),)),
    Permission(13, whole=(Whole(R.GROUP, Op.GROUP, "group_id"),)),
    Permission(14, whole=(Whole(R.GROUP, Op.GROUP, "group_id"),)),
    Permission(15, each=Each(R.GROUP, Op.DESCRIBE, "groups", None, "groups")),
    Permission(16, open=True, note="answers only the groups the workload may describe (every group with "
                                   "describe on the cluster), as Kafka does"),
    Permission(18, open=True, note="answered with versions capped to what the proxy parses"),
    Permission(19, each=Each(R.TOPIC, Op.CREATE, "topics", "name", "topics")),
    Permission(20, each=Each(R.TOPIC, Op.DELETE, "topic_names", None, "responses")),
    Permission(20, each=Each(R.TOPIC, Op.DELETE, "topics", "name", "responses"), since_version=6),
    Permission(21, each=Each(R.TOPIC, Op.DELETE_RECORDS, "topics", "name", "topics")),
    Permission(22, whole=(Whole(R.TRANSACTIONAL_ID, Op.TRANSACTIONS, "transactional_id", optional=True),),
               idempotent_produce=True,
               note="without a transactional id: allowed to a workload that may produce to some topic"),
    Permission(24, whole=(Whole(R.TRANSACTIONAL_ID, Op.TRANSACTIONS, "v3_and_below_transactional_id"),),
               each=Each(R.TOPIC, Op.PRODUCE, "v3_and_below_topics", "name", "results_by_topic_v3_and_below"),
               max_version=3, note="v4+ is broker-to-broker"),
    Permission(25, whole=(Whole(R.TRANSACTIONAL_ID, Op.TRANSACTIONS, "transactional_id"),
                          Whole(R.GROUP, Op.GROUP, "group_id"))),
    Permission(26, whole=(Whole(R.TRANSACTIONAL_ID, Op.TRANSACTIONS, "transactional_id"),)),
    Permission(28, whole=(Whole(R.TRANSACTIONAL_ID, Op.TRANSACTIONS, "transactional_id"),
                          Whole(R.GROUP, Op.GROUP, "group_id")),
               each=Each(R.TOPIC, Op.CONSUME, "topics", "name", "topics")),
    _cluster(29, note="DescribeAcls"),
    _cluster(30, note="CreateAcls"),
    _cluster(31, note="DeleteAcls"),
    Permission(32, each=Each(R.CLUSTER, Op.DESCRIBE, "resources", "resource_name", "results",
                             kind_field="resource_type", kinds=_DESCRIBE_CONFIG_KINDS),
               note="topic and group configs per resource; broker configs need describe on the cluster"),
    Permission(33, each=Each(R.CLUSTER, Op.ADMIN, "resources", "resource_name", "responses",
                             kind_field="resource_type", kinds=_ALTER_CONFIG_KINDS),
               note="topic and group configs need alter; broker configs need admin"),
    _cluster(34, note="AlterReplicaLogDirs"),
    _cluster(35, Op.DESCRIBE, note="DescribeLogDirs"),
    Permission(37, each=Each(R.TOPIC, Op.ALTER, "topics", "name", "results")),
    _cluster(38), _cluster(39), _cluster(40), _cluster(41, Op.DESCRIBE),
    Permission(42, each=Each(R.GROUP, Op.DELETE, "groups_names", None, "results")),
    _cluster(43, note="ElectLeaders"),
    Permission(44, each=Each(R.CLUSTER, Op.ADMIN, "resources", "resource_name", "responses",
                             kind_field="resource_type", kinds=_ALTER_CONFIG_KINDS),
               note="topic and group configs need alter; broker configs need admin"),
    _cluster(45, note="AlterPartitionReassignments"),
    _cluster(46, note="ListPartitionReassignments"),
    Permission(47, whole=(Whole(R.GROUP, Op.DELETE, "group_id"),)),
    _cluster(48, note="DescribeClientQuotas"),
    _cluster(49, note="AlterClientQuotas"),
    _cluster(50, note="DescribeUserScramCredentials"),
    _cluster(51, note="AlterUserScramCredentials"),
    Permission(60, open=True, note="as in Kafka; cluster_authorized_operations is the workload's, 0 without "
                                   "describe on the cluster"),
    Permission(61, each=Each(R.TOPIC, Op.DESCRIBE, "topics", "name", "topics")),
    Permission(65, each=Each(R.TRANSACTIONAL_ID, Op.DESCRIBE, "transactional_ids", None, "transaction_states")),
    Permission(66, open=True, note="answers only the transactional ids the workload may describe, as Kafka does"),
    Permission(68, whole=(Whole(R.GROUP, Op.GROUP, "group_id"),),
               note="KIP-848; subscribed topic names need describe; the assignment keeps only topics the "
                    "workload may describe"),
    Permission(69, each=Each(R.GROUP, Op.DESCRIBE, "group_ids", None, "groups")),
    Permission(71, open=True, note="client telemetry"),
    Permission(72, open=True, note="client telemetry"),
    Permission(75, each=Each(R.TOPIC, Op.DESCRIBE, "topics", "name", "topics"),
               note="an empty list (every topic) answers only the topics the workload may describe"),
)


def _index() -> dict[int, tuple[Permission, ...]]:
    rows: dict[int, list[Permission]] = {}
    for p in TABLE:
        rows.setdefault(p.api_key, []).append(p)
    return {k: tuple(sorted(v, key=lambda p: p.since_version, reverse=True)) for k, v in rows.items()}


_BY_KEY = _index()


def permission_for(api_key: int, version: int) -> Permission | None:
    """The row governing this request, or None when the API is not in the table (refused)."""
    for row in _BY_KEY.get(api_key, ()):
        if version >= row.since_version:
            return row
    return None


def max_offered_version(api_key: int) -> int | None:
    """A cap the table puts on an API's versions, or None; APIs not in the table are not offered."""
    caps = [p.max_version for p in _BY_KEY.get(api_key, ()) if p.max_version is not None]
    return min(caps) if caps else None


def covered(api_key: int) -> bool:
    return api_key in _BY_KEY or api_key in (apis.SASL_HANDSHAKE, apis.SASL_AUTHENTICATE)


def markdown_table() -> str:
    """The table as published in docs/policy.md (a test keeps the two equal)."""
    lines = ["| API (key) | versions | needs | refused as |", "|---|---|---|---|"]
    for p in sorted(TABLE, key=lambda p: (p.api_key, p.since_version)):
        needs = []
        for w in p.whole:
            if w.kinds:
                needs.append(" or ".join(f"{op} on {res} `{w.field}`" for _, res, op in w.kinds))
            else:
                needs.append(f"{w.operation} on the cluster" if w.resource == R.CLUSTER else
                             f"{w.operation} on {w.resource} `{w.field}`" + (" (if set)" if w.optional else ""))
        if p.each is not None:
            e = p.each
            if e.kinds:
                options = ", ".join(f"{op} on each {res}" for _, res, op in e.kinds)
                fallback = f"{e.operation} on the cluster" if e.resource == R.CLUSTER else f"{e.operation} on each {e.resource}"
                needs.append(f"per `{e.field}` entry: {options}; otherwise {fallback}")
            else:
                needs.append(f"{e.operation} on each {e.resource} in `{e.field}`")
        if p.open:
            needs.append("nothing (every enrolled workload)")
        if p.idempotent_produce:
            needs.append("produce on some topic when no transactional id is given")
        errors = sorted({DENIED_ERROR[w.resource].name.upper() for w in p.whole}
                        | ({DENIED_ERROR[p.each.resource].name.upper()} if p.each else set())
                        | ({DENIED_ERROR[r].name.upper() for _, r, _ in p.each.kinds} if p.each else set()))
        high = p.max_version if p.max_version is not None else (apis.parseable(p.api_key).max if apis.parseable(p.api_key) else "?")
        versions = f"{p.since_version}+" if p.max_version is None and p.since_version else f"{p.since_version}–{high}"
        note = f" ({p.note})" if p.note else ""
        lines.append(f"| {p.name} ({p.api_key}) | {versions} | {'; '.join(needs)}{note} | {', '.join(errors) or '—'} |")
    return "\n".join(lines)


def offered(api_key: int) -> apis.VersionRange | None:
    """The versions of an API the proxy offers clients: parseable, in the table, and under its cap."""
    known = apis.parseable(api_key)
    if known is None or not covered(api_key):
        return None
    cap = max_offered_version(api_key)
    high = known.max if cap is None else min(known.max, cap)
    return apis.VersionRange(known.min, high) if known.min <= high else None
