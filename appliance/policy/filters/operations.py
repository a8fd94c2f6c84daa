"""`authorized_operations` fields, computed from the workload's policy instead of the proxy's super user.

Kafka reports them as a bit field: bit N set when the principal may do the
AclOperation whose code is N (org.apache.kafka.common.acl.AclOperation: READ 3,
WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9,
DESCRIBE_CONFIGS 10, ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12), over the operations
each resource type supports. Each AclOperation is mapped to the policy
operation the proxy itself enforces for the APIs that need it, so what the
field says is what the proxy would allow.
"""

from __future__ import annotations

from appliance.policy.model import Operation as Op, Policy, Principal, ResourceType as R

READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, CLUSTER_ACTION = 3, 4, 5, 6, 7, 8, 9
DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE = 10, 11, 12
# What a broker writes when the client did not ask for authorized operations.
NOT_REQUESTED = -2147483648

_BY_RESOURCE: dict[R, tuple[tuple[int, Op | None], ...]] = {
    R.TOPIC: ((READ, Op.CONSUME), (WRITE, Op.PRODUCE), (CREATE, Op.CREATE), (DELETE, Op.DELETE),
              (ALTER, Op.ALTER), (DESCRIBE, Op.DESCRIBE), (DESCRIBE_CONFIGS, Op.DESCRIBE),
              (ALTER_CONFIGS, Op.ALTER)),
    R.GROUP: ((READ, Op.GROUP), (DESCRIBE, Op.DESCRIBE), (DELETE, Op.DELETE), (DESCRIBE_CONFIGS, Op.DESCRIBE),
              (ALTER_CONFIGS, Op.ALTER)),
    # CLUSTER_ACTION is broker-to-broker: never a workload's. IDEMPOTENT_WRITE: see below.
    R.CLUSTER: ((CREATE, Op.CREATE), (ALTER, Op.ADMIN), (DESCRIBE, Op.DESCRIBE), (DESCRIBE_CONFIGS, Op.DESCRIBE),
                (ALTER_CONFIGS, Op.ADMIN), (CLUSTER_ACTION, None)),
}


def authorized_operations(policy: Policy, principal: Principal, resource: R, name: str | None) -> int:
    """The bit field for one resource under `policy`."""
    bits = 0
    for code, operation in _BY_RESOURCE[resource]:
        if operation is not None and policy.decide(principal, operation, resource, name).allowed:
            bits |= 1 << code
    if resource == R.CLUSTER and policy.allows_any(principal, Op.PRODUCE, R.TOPIC).allowed:
        bits |= 1 << IDEMPOTENT_WRITE  # as InitProducerId without a transactional id is decided
    return bits
