"""Policy: who may do what to which Kafka resources, decided in pure code.

`model` holds the data (operations, resource types, patterns, rules, the
policy) and the decision: default deny, an explicit deny beats any allow,
otherwise the first matching allow rule in file order, and immutable topics
refuse delete, alter and delete-records to everyone before any rule is read.
`parser` turns a YAML file into a `Policy`, or into one error naming the file,
line and key. Neither reads a clock or touches a socket; `decide` is on the
proxy's hot path and caches its answers per policy. The language is
documented in docs/policy.md.
"""

from appliance.policy.model import (
    Decision,
    Effect,
    Operation,
    Pattern,
    PatternError,
    Policy,
    Principal,
    ResourceType,
    Rule,
)
from appliance.policy.parser import PolicyError, load_policy, parse_policy

__all__ = [
    "Decision", "Effect", "Operation", "Pattern", "PatternError", "Policy", "PolicyError", "Principal",
    "ResourceType", "Rule", "load_policy", "parse_policy",
]
